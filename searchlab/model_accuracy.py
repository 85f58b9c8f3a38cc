"""How well each surrogate form predicts external where it was not shown: stored studies replayed.

For a stored study on the simulated back end (which knows every recipe's true external score),
:func:`surrogate_accuracy` replays the study round by round, as the engine saw it: after round
``r`` each form of :class:`searchlab.surrogate.DomainSurrogate` is fitted (warm-started from its
fit after round ``r - 1``; the engine fits more often, so its warm starts differ) on the dev of
every candidate so far and on the external scores submitted so far, and predicts the true
external of every candidate that was **not** submitted.
Per form and phase it reports

    RMSE = sqrt(mean_i (mu_i - y_i)^2),    coverage = mean_i 1{|mu_i - y_i| <= 1.645 sd_i},

over those candidates ``i`` (``mu``, ``sd``: posterior mean and sd of the latent external;
``y``: the noise-free true external), 90 % being the nominal coverage. The phase of a round is
``after`` once the domain has alarmed (a switch, or an alarm a ``policy.switch: false`` study
recorded and ignored) and ``before`` until then. Only the weak domains are scored, where the two
forms should differ; the first round with two external points starts the replay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from searchlab.readmodel import StudyView, read
from searchlab.store import Mode
from searchlab.surrogate import SurrogateForm

__all__ = ["surrogate_accuracy", "surrogate_for"]

#: Two-sided 90 % normal quantile.
_Z90 = 1.6448536269514722


def _first_alarms(view: StudyView) -> dict[str, int]:
    """Per domain, the candidate whose submission first made it alarm (switched or ignored)."""
    first: dict[str, int] = {}
    for e in view.events:
        if e["to_mode"] == Mode.DECOUPLED:
            first.setdefault(e["domain"], e["candidate"])
    return first


def _study_rows(record: Any, forms: Sequence[SurrogateForm]) -> list[dict[str, Any]]:
    from searchlab.backends import backend_for
    from searchlab.space import SearchSpace

    view = read(record)
    config = view.config
    backend = backend_for(config)
    weak = [d for d in backend.surface.config.weak_domains if d in config.domain_names]
    space = SearchSpace(config.space)
    done = list(view.complete.values())
    truth = {
        c.number: backend.true_external({"recipe": c.recipe, "candidate": c.number}) for c in done
    }
    externals = {s["candidate"]: s for s in view.pairs}
    alarmed_at = _first_alarms(view)
    rows = []
    models = {(form, d): surrogate_for(config, space, d, form) for form in forms for d in weak}
    for r in range(config.rounds.count):
        seen = [c for c in done if c.round <= r]
        shown = sorted(
            (n for n, e in externals.items() if e["round"] <= r),
            key=lambda n: externals[n]["submission"],
        )
        index = {c.number: i for i, c in enumerate(seen)}
        shown = [n for n in shown if n in index]
        if len(shown) < 2:
            continue
        x = np.array([space.encode(c.recipe) for c in seen])
        held = [i for i, c in enumerate(seen) if c.number not in shown]
        for d in weak:
            alarmed = d in alarmed_at and alarmed_at[d] in shown
            y = np.array([truth[seen[i].number][d] for i in held])
            for form in forms:
                s = models[(form, d)]
                s.fit(
                    x,
                    np.array([c.dev[d] for c in seen]),
                    x[[index[n] for n in shown]],
                    np.array([externals[n]["scores"][d] for n in shown]),
                )
                rows.append(
                    {
                        "study": record.name,
                        "round": r,
                        "domain": d,
                        "form": str(form),
                        "phase": "after" if alarmed else "before",
                        "pairs": len(shown),
                        **_scores(s.predict(x[held]), y),
                        "fit_status": s.fit_status,
                    }
                )
    return rows


def _scores(p: dict[str, np.ndarray], y: np.ndarray) -> dict[str, list[Any]]:
    """Squared errors and 90 % coverage of the posterior of external at the held-out points."""
    return {
        "sq_error": ((p["ext_mean"] - y) ** 2).tolist(),
        "covered": (np.abs(p["ext_mean"] - y) <= _Z90 * p["ext_sd"]).tolist(),
    }


def surrogate_for(config: Any, space: Any, domain: str, form: SurrogateForm) -> Any:
    """A domain's surrogate of the given form, seeded as the engine seeds it."""
    from searchlab.surrogate import DomainSurrogate

    return DomainSurrogate(
        dim=space.dim,
        simplex_groups=space.simplex_groups(),
        resolution=config.external.resolution,
        seed=config.seed * 100 + config.domain_names.index(domain),
        form=form,
    )


def surrogate_accuracy(
    storage_url: str,
    *,
    names: Sequence[str] | None = None,
    forms: Sequence[SurrogateForm] = tuple(SurrogateForm),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """RMSE and 90 % coverage of predicted external at unsubmitted candidates, per form and phase.

    Args:
        storage_url: A storage holding finished studies on the simulated back end.
        names: Studies to replay (default: every study there on the simulated back end).
        forms: Surrogate forms to compare, each fitted on the same cuts.
        progress: Called with one line per replayed study.

    Returns:
        ``table``: one row per form and phase (``before``, ``after``, ``all``) with ``rmse``,
        ``coverage90``, ``points`` and ``studies``; ``per_study``: the same per study (all
        phases); ``fit_failures``: fits that did not end ``converged`` or ``stopped``.
    """
    from searchlab.store import Storage

    storage = Storage(storage_url)
    rows: list[dict[str, Any]] = []
    for name in names or storage.names():
        record = storage.load(name)
        if record.config_data["backend"]["name"] != "simulated":
            if progress is not None:
                progress(f"{name}: skipped (not on the simulated back end: no truth)")
            continue
        rows += _study_rows(record, forms)
        if progress is not None:
            progress(f"{name}: replayed")

    def summary(selected: list[dict[str, Any]]) -> dict[str, Any]:
        err = np.concatenate([r["sq_error"] for r in selected]) if selected else np.zeros(0)
        cov = np.concatenate([r["covered"] for r in selected]) if selected else np.zeros(0)
        return {
            "rmse": float(np.sqrt(err.mean())) if len(err) else None,
            "coverage90": float(cov.mean()) if len(cov) else None,
            "points": len(err),
            "studies": len({r["study"] for r in selected}),
        }

    table = []
    for form in forms:
        for phase in ("before", "after", "all"):
            chosen = [r for r in rows if r["form"] == str(form) and phase in ("all", r["phase"])]
            table.append({"form": str(form), "phase": phase, **summary(chosen)})
    per_study = [
        {"study": study, "form": str(form), **summary(chosen)}
        for study in sorted({r["study"] for r in rows})
        for form in forms
        if (chosen := [r for r in rows if r["study"] == study and r["form"] == str(form)])
    ]
    failures = [
        {k: r[k] for k in ("study", "round", "domain", "form", "fit_status")}
        for r in rows
        if r["fit_status"] not in ("converged", "stopped")
    ]
    return {"table": table, "per_study": per_study, "fit_failures": failures}
