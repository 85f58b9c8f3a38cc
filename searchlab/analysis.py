"""Re-analysis of a stored study's validity decisions under other detector settings.

:func:`reanalyze` re-runs the validity test (:class:`~searchlab.validity.ValidityTest` and
:class:`~searchlab.validity.DomainMonitor`) over the stored (dev, external) pairs with other
detector settings and says, per domain, when it would have switched against when the study did.

Only reads storage: nothing here writes to a study.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from searchlab.errors import SearchlabError
from searchlab.readmodel import StudyView, finite, read
from searchlab.store import AuditKind, Mode

if TYPE_CHECKING:
    from searchlab.store import StudyRecord

__all__ = ["AnalysisError", "describe_switch", "reanalyze"]


class AnalysisError(SearchlabError):
    """A re-analysis cannot run on this study (no fixed knots yet, bad settings)."""


def _per_check_dev(
    log: list[dict[str, Any]], order: list[int], domains: list[str]
) -> list[dict[str, list[float]]] | None:
    """The de-noised dev the study's own checks used, if every check stored it.

    A ``validity_check`` audit record may carry, per domain, ``dev``: the de-noised dev of the
    paired candidates in submission order at that check. Returns one dict per pair (the check
    made when that pair arrived), or None when any is missing.
    """
    checks = [e for e in log if e.get("kind") == AuditKind.VALIDITY_CHECK]
    by_pair: dict[int, dict[str, list[float]]] = {}
    for e in checks:
        cand = e.get("candidate")
        if cand not in order:
            return None
        n = order.index(cand) + 1
        per_domain = {}
        for d in domains:
            values = (e.get("domains") or {}).get(d, {}).get("dev")
            if not isinstance(values, list) or len(values) != n:
                return None
            per_domain[d] = [math.nan if v is None else float(v) for v in values]
        by_pair[n] = per_domain
    if not order or any(n not in by_pair for n in range(1, len(order) + 1)):
        return None
    return [by_pair[n] for n in range(1, len(order) + 1)]


def _replay(
    settings: Any,
    knots_dev: np.ndarray,
    dev_at: list[np.ndarray],
    external: np.ndarray,
    order: list[int],
    domain: str,
) -> dict[str, Any]:
    from searchlab.validity import DomainMonitor, ValidityTest

    test = ValidityTest(settings=settings)
    test.fix_knots(knots_dev)
    monitor = DomainMonitor(domain=domain)
    events = []
    path = []
    for i in range(len(order)):
        n = i + 1
        result, event = monitor.check(test, dev_at[i][:n], external[:n])
        path.append(
            {
                "pair": n,
                "candidate": order[i],
                "test": monitor.history[-1]["test"],  # "alarm" in proxy mode, else "return"
                "statistic": result.to_dict()["statistic"],
                "threshold": result.threshold,
                "mode": monitor.mode,
            }
        )
        if event is not None:
            events.append(
                {
                    "candidate": order[i],
                    "pair": n,
                    "to_mode": event,
                    "statistic": result.to_dict()["statistic"],
                    "threshold": result.threshold,
                }
            )
    first = next((e for e in events if e["to_mode"] == Mode.DECOUPLED), None)
    stats = [p["statistic"] for p in path if p["statistic"] is not None and p["test"] == "alarm"]
    return {
        "first_switch": first,
        "events": events,
        "max_statistic": max(stats) if stats else None,
        "final_mode": monitor.mode,
        "path": path,
    }


def _compare(before: dict[str, Any] | None, new: dict[str, Any] | None) -> str:
    if before is None and new is None:
        return "same (no switch)"
    if before is None:
        return "switches (before: none)"
    if new is None:
        return "no switch (before: a switch)"
    delta = new["pair"] - before["pair"]
    if delta == 0:
        return "same"
    word = "later" if delta > 0 else "earlier"
    return f"{word} by {abs(delta)} pair{'s' if abs(delta) != 1 else ''}"


def reanalyze(record: StudyRecord, **overrides: Any) -> dict[str, Any]:
    """Re-runs every domain's validity test over the stored pairs with other settings.

    The pairs are the candidates with an external score (state ``done``), in submission order,
    checked after each arrival as the engine does. Dev is the de-noised dev each of the study's
    own checks used when its audit stored it (``validity_check`` records with a per-domain
    ``dev`` list), else the observed dev of each submitted candidate: ``dev_source`` says
    which. Knots come from the stored warm-up de-noised dev (``validity.warmup_dev``), placed by
    the new settings. The engine's later proposals and submissions depended on its modes; the
    re-analysis keeps the pairs the study actually collected.

    Args:
        record: The stored study.
        **overrides: :class:`DetectorSettings` fields to change (``alpha``, ``knot_offsets``,
            ``knot_quantiles``, ``prior_scale``, ``hinge_form``, ``min_pairs``, ``min_above``,
            ``return_alpha``, ``min_dwell``, and ``threshold``, the per-domain threshold of a
            calibrated study (``policy.threshold``)); None values are ignored. A new ``alpha``
            without a ``threshold`` uses the anytime-valid threshold ``n_domains / alpha``.

    Returns:
        A JSON-safe dict: ``study``, ``dev_source``, ``pairs``, ``settings``,
        ``study_settings``, ``changed`` (the overridden settings) and ``domains`` (per domain:
        ``study`` (the switches recorded in the audit), ``replay`` (the study's settings re-run on
        the same dev, a check of the dev source), ``reanalysis`` (the new settings) and
        ``change`` against the replay (same dev, same pairs: the effect of the settings alone)
        and ``change_vs_study``).

    Raises:
        AnalysisError: Bad settings, or no knots fixed yet (the warm-up never finished).
    """
    view = read(record)
    domains = view.domains
    original, settings, changed = _settings(view, overrides)
    warm = view.warmup_dev
    if not warm:
        raise AnalysisError(
            f"study {record.name!r} has no fixed knots (its warm-up has not finished): "
            "nothing to re-analyse yet"
        )
    complete = view.complete
    done = view.pairs
    order = view.pair_order
    stored = _per_check_dev(view.log, order, domains)
    if stored is not None:
        dev_source = "stored de-noised dev of each of the study's checks (as the study used)"
    else:
        dev_source = (
            "observed dev of each submitted candidate (the study stored no per-check de-noised "
            "dev; its own checks used the GP posterior mean, so the replay can differ)"
        )
    study_events = {
        d: [{k: v for k, v in e.items() if k != "domain"} for e in events]
        for d, events in view.events_by_domain().items()
    }
    out_domains: dict[str, Any] = {}
    for d in domains:
        external = np.array([float(s["scores"][d]) for s in done])
        if stored is not None:
            dev_at = [np.asarray(stored[i][d], dtype=float) for i in range(len(order))]
        else:
            observed = np.array([complete[n].dev[d] for n in order], dtype=float)
            dev_at = [observed] * len(order)
        knots_dev = np.asarray(warm[d], dtype=float)
        replay = _replay(original, knots_dev, dev_at, external, order, d)
        new = _replay(settings, knots_dev, dev_at, external, order, d)
        events = study_events.get(d, [])
        study_first = next((e for e in events if e["to_mode"] == Mode.DECOUPLED), None)
        out_domains[d] = {
            "study": {"first_switch": study_first, "events": events},
            "replay": {k: v for k, v in replay.items() if k != "path"},
            "reanalysis": new,
            "threshold": settings.threshold,
            "change": _compare(replay["first_switch"], new["first_switch"]),
            "change_vs_study": _compare(study_first, new["first_switch"]),
        }
    return finite(
        {
            "study": record.name,
            "dev_source": "stored" if stored is not None else "observed",
            "dev_source_note": dev_source,
            "pairs": len(order),
            "settings": settings.to_dict(),
            "study_settings": original.to_dict(),
            "changed": changed,
            "domains": out_domains,
        }
    )


def _settings(view: StudyView, overrides: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """The study's detector settings, the re-analysis's, and what changed between them.

    Raises:
        AnalysisError: An unknown or impossible setting.
    """
    from searchlab.validity import DetectorSettings

    base = view.settings.to_dict()
    changed = {k: v for k, v in overrides.items() if v is not None}
    if "threshold" in changed:  # the study file's name for it
        changed["threshold_override"] = changed.pop("threshold")
    if (
        "alpha" in changed
        and "threshold_override" not in changed
        and base.get("threshold_override") is not None
    ):
        # A new false-alarm level means the anytime-valid threshold n_domains / alpha, not the
        # study's calibrated threshold (which alpha does not move).
        changed["threshold_override"] = None
    unknown = set(changed) - set(base)
    if unknown:
        raise AnalysisError(f"unknown detector settings: {sorted(unknown)}")
    for key in ("knot_offsets", "knot_quantiles"):
        if key in changed:
            changed[key] = [float(v) for v in changed[key]]
    try:
        return (
            DetectorSettings.from_dict(base),
            DetectorSettings.from_dict({**base, **changed}),
            changed,
        )
    except (ValueError, TypeError) as exc:
        raise AnalysisError(f"bad detector settings: {exc}") from None


def describe_switch(event: dict[str, Any] | None) -> str:
    """``37 (pair 9)`` (candidate 37, the 9th pair) or ``none``."""
    if event is None:
        return "none"
    return f"{event['candidate']} (pair {event['pair']})"
