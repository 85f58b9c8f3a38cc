"""The validity monitor on any score log: no search, no back end, no study.

A loop that searchlab does not own (an agent editing a recipe, a cluster launcher, months of
past runs) has a log of candidates in the order they happened, each with per-domain dev scores
and some with external scores. :func:`read_log` reads one (CSV, JSON lines or parquet: columns
``dev.<domain>`` and ``external.<domain>``, optionally ``candidate``), :func:`read_optuna` a
study written by plain Optuna (scores in its trials' user attributes); :func:`monitor_log` runs
each domain's validity test (:class:`~searchlab.validity.ValidityTest` and
:class:`~searchlab.validity.DomainMonitor`) as the engine does: knots fixed from the first
``warmup`` candidates' dev, then one check per candidate with a new external score, on all the
(dev, external) pairs so far, switching to decoupled when the test fires and back when the
return test does.

A limit, stated: the test wants each pair's dev fixed when it enters and not chosen by its own
value. A log gives the observed dev, and a loop that submits its best-dev candidates picks them
by that dev (winner's curse: their dev is biased up, which looks like external lagging dev).
The engine avoids it with a dev-only GP over recipes; a log has no recipes to model, so the
verdict on a log whose submissions were chosen by dev is more alarm-prone than the study
threshold's calibration says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from searchlab.runlog import LogError, read_rows, score
from searchlab.store import Mode
from searchlab.validity import DetectorSettings, DomainMonitor, ValidityTest

__all__ = ["LogError", "ScoreLog", "monitor_log", "read_log"]


@dataclass(frozen=True)
class ScoreLog:
    """Candidates in the order they happened.

    Attributes:
        source: Where the log came from (for messages).
        domains: The domains, in the order their columns first appear.
        candidates: Each candidate's id (the ``candidate`` column, else its 1-based row).
        dev: Per domain, the dev score of every candidate, shape ``(n,)``.
        external: Per domain, the external score where measured, NaN elsewhere, shape ``(n,)``.
    """

    source: str
    domains: list[str]
    candidates: list[str]
    dev: dict[str, np.ndarray]
    external: dict[str, np.ndarray]


def read_log(path: str | Path, *, domains: list[str] | None = None) -> ScoreLog:
    """Reads a score log: ``.csv``, or ``.jsonl`` / ``.ndjson`` (one JSON object a line).

    Every candidate needs a finite ``dev.<domain>`` in [0, 1] for each domain; an empty
    ``external.<domain>`` means "not measured".

    Args:
        path: The file.
        domains: The domains to monitor (default: every ``dev.<domain>`` column).

    Raises:
        LogError: One line naming the file, the row and the column.
    """
    path = Path(path)
    return _score_log(read_rows(path), str(path), domains)


def read_optuna(
    url: str,
    study: str,
    *,
    dev_key: str = "dev.{domain}",
    external_key: str = "external.{domain}",
    domains: list[str] | None = None,
) -> ScoreLog:
    """Reads a score log from a study written by plain Optuna: its COMPLETE trials in number
    order, the scores in user attributes named by the key patterns.

    Args:
        url: The Optuna storage URL.
        study: The study name.
        dev_key: The user attribute of a domain's dev score; ``{domain}`` stands for the domain.
        external_key: The same for the external score (absent where not measured).
        domains: The domains to monitor (default: every domain some trial has a dev key for).

    Raises:
        LogError: A pattern without ``{domain}``, no such study, a trial missing a domain's
            dev key, a bad score (naming the trial and the key).
        StorageError: If the storage cannot be reached.
    """
    import re

    for key in (dev_key, external_key):
        if key.count("{domain}") != 1:
            raise LogError(f"key pattern {key!r} needs exactly one {{domain}}")
    from searchlab.store import Storage

    trials = Storage(url).load_optuna(study).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    before, after = dev_key.split("{domain}")
    pattern = re.compile(re.escape(before) + "(.+)" + re.escape(after) + "$")
    found = sorted({m.group(1) for t in complete for k in t.user_attrs if (m := pattern.match(k))})
    if not found:
        seen = sorted({k for t in complete for k in t.user_attrs})[:10]
        raise LogError(
            f"study {study!r}: no user attribute of its {len(complete)} COMPLETE trials matches "
            f"{dev_key!r} (they have: {seen})"
        )
    rows = []
    for t in complete:
        row: dict[str, Any] = {"candidate": str(t.number)}
        for d in found:
            row[f"dev.{d}"] = t.user_attrs.get(dev_key.replace("{domain}", d))
            row[f"external.{d}"] = t.user_attrs.get(external_key.replace("{domain}", d))
        rows.append(row)
    # Messages name the trial and the attribute the user wrote, not the internal column.
    return _score_log(
        rows, f"study {study!r}", domains, row_name="trial", keys=(dev_key, external_key)
    )


def _score_log(
    rows: list[dict[str, Any]],
    source: str,
    domains: list[str] | None,
    *,
    row_name: str = "row",
    keys: tuple[str, str] = ("dev.{domain}", "external.{domain}"),
) -> ScoreLog:
    """A :class:`ScoreLog` from rows with ``dev.<domain>`` / ``external.<domain>`` cells."""
    dev_key, ext_key = keys
    path = source
    if not rows:
        raise LogError(f"{path}: no candidates in the log")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    found = [c.removeprefix("dev.") for c in columns if c.startswith("dev.")]
    kind = "column" if row_name == "row" else "user attribute"
    if not found:
        what = dev_key.replace("{domain}", "<domain>")
        raise LogError(f"{path}: no {what} {kind} (columns: {columns[:10]})")
    chosen = list(domains or found)
    unknown = [d for d in chosen if d not in found]
    if unknown:
        key = dev_key.replace("{domain}", unknown[0])
        raise LogError(f"{path}: no {kind} {key} (domains in the log: {found})")
    dev = {d: np.empty(len(rows)) for d in chosen}
    ext = {d: np.full(len(rows), math.nan) for d in chosen}
    ids = []
    for i, row in enumerate(rows):
        ids.append(str(row.get("candidate") or i + 1))
        where = f"{path}: {row_name} {ids[-1] if row_name == 'trial' else i + 1}"
        for d in chosen:
            dk, ek = dev_key.replace("{domain}", d), ext_key.replace("{domain}", d)
            dev[d][i] = score(row.get(f"dev.{d}"), f"{where}, {dk}", required=True)
            ext[d][i] = score(row.get(f"external.{d}"), f"{where}, {ek}", required=False)
    return ScoreLog(source=path, domains=chosen, candidates=ids, dev=dev, external=ext)


def monitor_log(
    log: ScoreLog, *, settings: DetectorSettings | None = None, warmup: int = 8
) -> dict[str, Any]:
    """Runs every domain's validity monitor over the log.

    Args:
        log: The candidates, in order.
        settings: The test's settings (default: :class:`DetectorSettings` for the log's
            domains, threshold ``n_domains / alpha``).
        warmup: Knots are fixed from the first ``warmup`` candidates' dev; checks start after.

    Returns:
        A JSON-safe dict: ``source``, ``candidates``, ``warmup``, ``settings`` and ``domains``:
        per domain, ``verdict`` (``decoupled``: the test fired and the domain did not return;
        ``valid``: it was tested and did not fire; ``untested``: fewer than the test's minimum
        pairs), ``pairs``, ``switches`` (each ``candidate``, ``pair``, ``to_mode``,
        ``statistic``, ``threshold``), ``max_statistic`` and ``last`` (the evidence of the last
        check: statistic, threshold, rates above and below the knot, knot).

    Raises:
        LogError: Fewer candidates than the warm-up, or a warm-up whose dev does not vary.
    """
    n = len(log.candidates)
    if not 2 <= warmup < n:
        raise LogError(f"{log.source}: warm-up {warmup} needs at least {warmup + 1} candidates")
    settings = settings or DetectorSettings(n_domains=len(log.domains))
    return {
        "source": log.source,
        "candidates": n,
        "warmup": warmup,
        "settings": settings.to_dict(),
        "domains": {d: _monitor_domain(log, d, settings, warmup) for d in log.domains},
    }


def _monitor_domain(
    log: ScoreLog, domain: str, settings: DetectorSettings, warmup: int
) -> dict[str, Any]:
    dev, ext = log.dev[domain], log.external[domain]
    test = ValidityTest(settings=settings)
    try:
        test.fix_knots(dev[:warmup])
    except ValueError as exc:
        raise LogError(f"{log.source}: domain {domain}: {exc}") from None
    monitor = DomainMonitor(domain=domain)
    paired = np.isfinite(ext)
    switches: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    top: float | None = None  # the alarm test's largest statistic
    for i in range(warmup, len(dev)):
        if not paired[i]:
            continue
        rows = paired[: i + 1]
        result, event = monitor.check(test, dev[: i + 1][rows], ext[: i + 1][rows])
        last = result.to_dict()
        if monitor.history[-1]["test"] == "alarm" and last["statistic"] is not None:
            top = max(top or 0.0, last["statistic"])
        if event is not None:
            switches.append(
                {
                    "candidate": log.candidates[i],
                    "pair": int(rows.sum()),
                    "to_mode": str(event),
                    "statistic": last["statistic"],
                    "threshold": last["threshold"],
                }
            )
    pairs = int(paired.sum())
    if monitor.mode == Mode.DECOUPLED:
        verdict = "decoupled"
    else:
        verdict = "valid" if pairs >= settings.min_pairs and last else "untested"
    return {
        "verdict": verdict,
        "pairs": pairs,
        "switches": switches,
        "max_statistic": top,
        "last": last,
    }
