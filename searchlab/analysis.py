"""Tidy tables of a stored study, their export, and re-analysis of its validity decisions.

:func:`tables` turns one stored study into pandas DataFrames (one row per candidate, per
decision, per external submission, per domain at each validity check); :func:`export` writes them
as CSV, JSON or Parquet. :func:`reanalyze` re-runs the validity test (:class:`ValidityTest` and
:class:`DomainMonitor`) over the stored (dev, external) pairs with other detector settings and
says, per domain, when it would have switched against when the study did.

Only reads storage: nothing here writes to a study.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from searchlab.errors import SearchlabError

if TYPE_CHECKING:
    import pandas as pd

    from searchlab.store import StudyRecord

__all__ = [
    "AnalysisError",
    "OutputError",
    "check_output_dir",
    "export",
    "open_output",
    "reanalyze",
    "refuse_symlinks",
    "study_settings",
    "tables",
]

FORMATS = ("csv", "json", "parquet")
PROXY = "proxy"  # the mode names of searchlab.acquisition (not imported: it pulls torch)
DECOUPLED = "decoupled"


class OutputError(SearchlabError):
    """An output folder cannot be created or written."""


class AnalysisError(SearchlabError):
    """A re-analysis cannot run on this study (no fixed knots yet, bad settings)."""


# -- the study as tables -----------------------------------------------------------------------


def _domains(record: StudyRecord) -> list[str]:
    return [d["name"] for d in record.config_data.get("domains", [])]


def _weights(record: StudyRecord) -> dict[str, float]:
    domains = record.config_data.get("domains", [])
    given = [d.get("weight") for d in domains]
    if all(w is not None for w in given) and domains:
        return {d["name"]: float(d["weight"]) for d in domains}
    return {d["name"]: 1.0 / len(domains) for d in domains}


def _cell(value: Any) -> Any:
    """A value fit for a flat table cell: scalars stay, lists and dicts become JSON text."""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _flatten(entry: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become dotted columns; lists become JSON text."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = _cell(value)
    return out


def submissions(record: StudyRecord) -> list[dict[str, Any]]:
    """External submissions in submission order, each with its candidate number."""
    subs = [{"candidate": int(n), **v} for n, v in record.items("external").items()]
    return sorted(subs, key=lambda s: (s.get("submission", math.inf), s["candidate"]))


def tables(record: StudyRecord) -> dict[str, pd.DataFrame]:
    """The stored study as tidy tables.

    Returns:
        ``candidates``: one row per candidate (trial): ``number``, ``round``, ``state``,
        ``error``, ``proposal_method``, ``recipe.<param>``, ``dev.<domain>`` (COMPLETE only),
        ``mean_dev`` (weighted by the objective weights), ``submission`` (its index when it was
        submitted), ``external_state``, ``external.<domain>`` (where measured) and
        ``mode.<domain>`` (the domain's mode when the candidate was proposed).
        ``decisions``: the audit log, one row per decision, nested fields flattened to dotted
        columns (``evidence.statistic``), lists as JSON text.
        ``submissions``: one row per external submission: ``submission``, ``candidate``,
        ``round``, ``state``, ``reason``, ``error`` and ``external.<domain>``.
        ``checks``: one row per domain at each validity check: ``seq`` (of the audit record),
        ``round``, ``candidate`` (whose external score triggered it), ``pair`` (pairs so far),
        ``domain``, ``mode`` (after the check), ``statistic``, ``threshold``, ``fired``,
        ``n_pairs`` (pairs the test used), ``slope_high``, ``slope_low``, ``knot``.
    """
    import pandas as pd

    domains = _domains(record)
    weights = _weights(record)
    subs = submissions(record)
    by_candidate = {s["candidate"]: s for s in subs}
    rows = []
    for c in record.candidates():
        row: dict[str, Any] = {
            "number": c.number,
            "round": c.round,
            "state": c.state,
            "error": c.error,
            "proposal_method": c.proposal.get("method"),
        }
        row.update({f"recipe.{k}": _cell(v) for k, v in c.recipe.items()})
        for d in domains:
            row[f"dev.{d}"] = c.dev.get(d, math.nan)
        row["mean_dev"] = sum(weights[d] * c.dev[d] for d in domains) if c.dev else math.nan
        sub = by_candidate.get(c.number, {})
        row["submission"] = sub.get("submission")
        row["external_state"] = sub.get("state")
        scores = sub.get("scores") or {}
        for d in domains:
            value = scores.get(d)
            row[f"external.{d}"] = math.nan if value is None else float(value)
        modes = c.proposal.get("modes") or {}
        for d in domains:
            row[f"mode.{d}"] = modes.get(d)
        rows.append(row)
    candidates = pd.DataFrame(rows)
    if not rows:
        candidates = pd.DataFrame(columns=["number", "round", "state"])
    log = record.audit_log()
    decisions = pd.DataFrame([_flatten(e) for e in log])
    if decisions.empty:
        decisions = pd.DataFrame(columns=["seq", "kind", "round"])
    else:
        first = [c for c in ("seq", "kind", "round", "candidate", "domain") if c in decisions]
        decisions = decisions[first + [c for c in decisions.columns if c not in first]]
    sub_rows = []
    for s in subs:
        row = {
            "submission": s.get("submission"),
            "candidate": s["candidate"],
            "round": s.get("round"),
            "state": s.get("state"),
            "reason": s.get("reason"),
            "error": s.get("error"),
        }
        scores = s.get("scores") or {}
        for d in domains:
            value = scores.get(d)
            row[f"external.{d}"] = math.nan if value is None else float(value)
        sub_rows.append(row)
    submissions_df = pd.DataFrame(sub_rows)
    if not sub_rows:
        submissions_df = pd.DataFrame(columns=["submission", "candidate", "round", "state"])
    check_rows = []
    pair = 0
    order = [s["candidate"] for s in subs if s.get("state") == "done"]
    for e in log:
        if e.get("kind") != "validity_check":
            continue
        cand = e.get("candidate")
        pair = order.index(cand) + 1 if cand in order else pair + 1
        for d, v in (e.get("domains") or {}).items():
            check_rows.append(
                {
                    "seq": e.get("seq"),
                    "round": e.get("round"),
                    "candidate": cand,
                    "pair": pair,
                    "domain": d,
                    "mode": v.get("mode"),
                    "statistic": v.get("statistic"),
                    "threshold": v.get("threshold"),
                    "fired": v.get("fired"),
                    "n_pairs": v.get("n_pairs"),
                    "slope_high": v.get("slope_high"),
                    "slope_low": v.get("slope_low"),
                    "knot": v.get("knot"),
                }
            )
    checks = pd.DataFrame(check_rows)
    if not check_rows:
        checks = pd.DataFrame(
            columns=["seq", "round", "candidate", "pair", "domain", "mode", "statistic"]
        )
    out = {
        "candidates": candidates,
        "decisions": decisions,
        "submissions": submissions_df,
        "checks": checks,
    }
    # Integer columns with gaps stay integers (nullable), not floats: 3, not 3.0.
    return {k: v.convert_dtypes() for k, v in out.items()}


# -- output folders and export -----------------------------------------------------------------


def check_output_dir(path: str | os.PathLike[str]) -> Path:
    """Creates ``path`` if needed and checks that a file can be written in it.

    Raises:
        OutputError: If it cannot be created or written (one line, before anything is written).
    """
    out = Path(path)
    try:
        if out.is_symlink():
            # Whatever it points to is not the folder that was named.
            raise OutputError(f"output folder {str(out)!r} is a symbolic link: refusing to use it")
        if out.exists() and not out.is_dir():
            raise OutputError(f"output folder {str(out)!r} is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".searchlab-write-test-"):
            pass
    except OutputError:
        raise
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputError(f"output folder {str(out)!r} cannot be written: {reason}") from None
    return out


def refuse_symlinks(paths: Iterable[Path]) -> None:
    """Checks, before anything is written, that no file about to be written is a symlink.

    Raises:
        OutputError: Naming the first such path.
    """
    for path in paths:
        if os.path.islink(path):
            raise OutputError(
                f"output file {str(path)!r} is a symbolic link: refusing to write through it"
            )


def open_output(path: Path, *, binary: bool = False) -> IO[Any]:
    """Opens ``path`` for writing (created or truncated) without following a symlink.

    ``O_NOFOLLOW`` closes the gap between :func:`refuse_symlinks` and the write; where the
    platform lacks it, the symlink check is repeated instead.

    Raises:
        OutputError: If ``path`` is a symbolic link or cannot be opened.
    """
    refuse_symlinks([path])
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if os.path.islink(path):  # ELOOP from O_NOFOLLOW: it became a link meanwhile
            refuse_symlinks([path])
        raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    if binary:
        return os.fdopen(fd, "wb")
    return os.fdopen(fd, "w", encoding="utf-8", newline="")


def export(record: StudyRecord, fmt: str, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Writes :func:`tables` to ``out_dir`` as ``<table>.<fmt>``.

    Args:
        record: The stored study.
        fmt: ``"csv"``, ``"json"`` (an array of records per table) or ``"parquet"`` (needs
            pyarrow).
        out_dir: The folder (created if missing).

    Returns:
        The files written.

    Raises:
        OutputError: Unknown format, pyarrow missing for Parquet, or an unwritable folder.
    """
    if fmt not in FORMATS:
        raise OutputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise OutputError(
                "--format parquet needs pyarrow: pip install pyarrow (or use csv or json)"
            ) from None
    out = check_output_dir(out_dir)
    frames = tables(record)
    refuse_symlinks(out / f"{name}.{fmt}" for name in frames)  # before any file is written
    written = []
    for name, df in frames.items():
        path = out / f"{name}.{fmt}"
        try:
            with open_output(path, binary=fmt == "parquet") as f:
                if fmt == "csv":
                    df.to_csv(f, index=False)
                elif fmt == "json":
                    f.write(df.to_json(orient="records", indent=2) + "\n")
                else:
                    df.to_parquet(f, index=False)
        except OSError as exc:
            raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
        written.append(path)
    return written


# -- re-analysis ------------------------------------------------------------------------------


def study_settings(record: StudyRecord) -> dict[str, Any]:
    """The detector settings the study ran with (as :meth:`DetectorSettings.to_dict`)."""
    from searchlab.validity import DetectorSettings, HingeForm

    policy = record.config_data.get("policy", {}) or {}
    hysteresis = policy.get("hysteresis", {}) or {}
    base = DetectorSettings()
    extra = {}
    if policy.get("threshold") is not None and _has_threshold_override():
        extra["threshold_override"] = float(policy["threshold"])
    return DetectorSettings(
        alpha=float(policy.get("alpha", base.alpha)),
        n_domains=max(len(_domains(record)), 1),
        knot_quantiles=tuple(float(q) for q in policy.get("knot_quantiles", ())),
        knot_offsets=tuple(float(c) for c in policy.get("knot_offsets", base.knot_offsets)),
        return_alpha=float(hysteresis.get("return_alpha", base.return_alpha)),
        min_dwell=int(hysteresis.get("min_dwell", base.min_dwell)),
        # A study stored before policy.tracking existed ran the "slope above >= 0" test.
        tracking=float(policy.get("tracking", 0.0)),
        # ... and the quadratic hinge, the default before policy.hinge_form existed.
        hinge_form=policy.get("hinge_form", HingeForm.QUAD),
        prior_scale=float(policy.get("prior_scale", base.prior_scale)),
        **extra,
    ).to_dict()


def _has_threshold_override() -> bool:
    import dataclasses

    from searchlab.validity import DetectorSettings

    return any(f.name == "threshold_override" for f in dataclasses.fields(DetectorSettings))


def _study_events(log: list[dict[str, Any]], order: list[int]) -> dict[str, list[dict[str, Any]]]:
    """Mode switches (and alarms ignored by ``policy.switch: false``) per domain, from the audit."""
    events: dict[str, list[dict[str, Any]]] = {}
    for e in log:
        kind = e.get("kind")
        if kind not in ("mode_switch", "alarm_ignored"):
            continue
        cand = e.get("candidate")
        evidence = e.get("evidence") or {}
        events.setdefault(e["domain"], []).append(
            {
                "candidate": cand,
                "pair": order.index(cand) + 1 if cand in order else None,
                "round": e.get("round"),
                "to_mode": e.get("to_mode", DECOUPLED),
                "statistic": evidence.get("statistic"),
                "threshold": evidence.get("threshold"),
                "ignored": kind == "alarm_ignored",
            }
        )
    return events


def _per_check_dev(
    log: list[dict[str, Any]], order: list[int], domains: list[str]
) -> list[dict[str, list[float]]] | None:
    """The de-noised dev the study's own checks used, if every check stored it.

    A ``validity_check`` audit record may carry, per domain, ``dev``: the de-noised dev of the
    paired candidates in submission order at that check. Returns one dict per pair (the check
    made when that pair arrived), or None when any is missing.
    """
    checks = [e for e in log if e.get("kind") == "validity_check"]
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
    first = next((e for e in events if e["to_mode"] == DECOUPLED), None)
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
    from searchlab.validity import DetectorSettings

    domains = _domains(record)
    base = study_settings(record)
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
        settings = DetectorSettings.from_dict({**base, **changed})
        original = DetectorSettings.from_dict(base)
    except (ValueError, TypeError) as exc:
        raise AnalysisError(f"bad detector settings: {exc}") from None
    warm = record.get("validity.warmup_dev")
    if not warm:
        raise AnalysisError(
            f"study {record.name!r} has no fixed knots (its warm-up has not finished): "
            "nothing to re-analyse yet"
        )
    complete = {c.number: c for c in record.candidates() if c.state == "COMPLETE"}
    done = [s for s in submissions(record) if s.get("state") == "done"]
    done = [s for s in done if s["candidate"] in complete]
    order = [s["candidate"] for s in done]
    log = record.audit_log()
    stored = _per_check_dev(log, order, domains)
    if stored is not None:
        dev_source = "stored de-noised dev of each of the study's checks (as the study used)"
    else:
        dev_source = (
            "observed dev of each submitted candidate (the study stored no per-check de-noised "
            "dev; its own checks used the GP posterior mean, so the replay can differ)"
        )
    study_events = _study_events(log, order)
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
        study_first = next((e for e in events if e["to_mode"] == DECOUPLED), None)
        out_domains[d] = {
            "study": {"first_switch": study_first, "events": events},
            "replay": {k: v for k, v in replay.items() if k != "path"},
            "reanalysis": new,
            "threshold": settings.threshold,
            "change": _compare(replay["first_switch"], new["first_switch"]),
            "change_vs_study": _compare(study_first, new["first_switch"]),
        }
    return _finite(
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


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.floating | np.integer):
        return _finite(value.item())
    return value


def describe_switch(event: dict[str, Any] | None) -> str:
    """``37 (pair 9)`` (candidate 37, the 9th pair) or ``none``."""
    if event is None:
        return "none"
    return f"{event['candidate']} (pair {event['pair']})"
