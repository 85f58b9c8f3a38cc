"""End-to-end false alarms of the validity test: a corpus of the engine's own null studies.

A threshold calibrated on simulated streams is only as good as the streams; what matters is
what the engine really feeds the test (16 pairs chosen by its submission policy, dev from its
dev-only GP, floored external scores). This module measures that directly:

- :func:`make_corpus` runs the engine on simulated **null** instances (external keeps
  following dev) with the switch disabled (``policy.switch: false``), at the study file's budget
  (64 candidates, 16 submissions), and keeps each study in an Optuna storage.
- :func:`false_alarms` replays any detector setting over every stored study
  (:func:`searchlab.analysis.reanalyze`, on the dev each pair entered the test with) and counts
  the studies in which any domain would have alarmed at any check.

Why a replay is exact: with the switch disabled the engine's proposals and submissions never
depend on the test, and with it enabled they do not depend on it before the first alarm (the
submission policy reads the dev-only GP, not the statistic; the test's dev is fixed when a pair
enters). So the first alarm of the replay on a null study is the first alarm the engine would
have raised on it, for any setting. The false-alarm rate is then a binomial proportion over
independent studies, reported with its exact (Clopper-Pearson) interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["NULL_INSTANCES", "false_alarms", "make_corpus"]

#: Null instances: back-end options of the simulated surface (searchlab.simulation).
NULL_INSTANCES: dict[str, dict[str, Any]] = {
    # External follows dev along every direction (the hack direction at half the dev rate).
    "null": {"variant": "null", "weak_domains": ["equations"]},
    # Two weak domains, both still valid.
    "null-two-weak": {"variant": "null", "weak_domains": ["equations", "gravity"]},
}

_PREFIX = "null-corpus"


def _study_name(instance: str, seed: int) -> str:
    return f"{_PREFIX}-{instance}-{seed}"


def make_corpus(
    storage_url: str,
    *,
    instances: Sequence[str] = tuple(NULL_INSTANCES),
    seeds: Sequence[int] = range(10),
    rounds: tuple[int, int] = (8, 8),
    external: tuple[int, int] = (2, 16),
    threshold: float = 20.0,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Runs (or finishes) one null study per instance and seed into ``storage_url``.

    A study already finished there is kept as it is; an unfinished one is resumed, so the
    corpus can be built over several runs and split over processes by seed.

    Args:
        storage_url: Optuna storage URL.
        instances: Names from :data:`NULL_INSTANCES`.
        seeds: Study seeds (the surface instance and every draw follow the seed).
        rounds: ``(candidates per round, rounds)``; the study file's budget by default.
        external: ``(submissions per round, total)``.
        threshold: The threshold the studies record their own (ignored) alarms at; the replay
            takes any other.
        progress: Called with one line per finished study.

    Returns:
        The names of the studies in the corpus that this call saw finished.
    """
    from searchlab.backends import backend_for
    from searchlab.config import validate_study
    from searchlab.engine import Engine
    from searchlab.simulation import DOMAINS, canonical_space
    from searchlab.store import Storage

    storage = Storage(storage_url, create=True)
    existing = set(storage.names())
    names = []
    for instance in instances:
        if instance not in NULL_INSTANCES:
            raise ValueError(f"unknown null instance {instance!r}: {sorted(NULL_INSTANCES)}")
        for seed in seeds:
            name = _study_name(instance, seed)
            config = validate_study(
                {
                    "name": name,
                    "seed": int(seed),
                    "domains": [{"name": d} for d in DOMAINS],
                    "space": canonical_space(list(DOMAINS)),
                    "backend": {"name": "simulated", "options": NULL_INSTANCES[instance]},
                    "rounds": {"candidates": rounds[0], "count": rounds[1]},
                    "external": {
                        "per_round": external[0],
                        "total": external[1],
                        "resolution": 0.01,
                    },
                    "policy": {"warmup_rounds": 1, "threshold": threshold, "switch": False},
                },
                source=f"null corpus {instance} seed {seed}",
            )
            record = storage.load(name) if name in existing else storage.create(config)
            if not record.get("finished"):
                Engine(record=record, config=config, backend=backend_for(config)).run()
            names.append(name)
            if progress is not None:
                progress(f"{name}: finished")
    return names


def false_alarms(
    storage_url: str, *, names: Sequence[str] | None = None, **overrides: Any
) -> dict[str, Any]:
    """The fraction of the corpus's null studies in which a setting alarms anywhere.

    Args:
        storage_url: The corpus's storage.
        names: Studies to replay (default: every corpus study in the storage).
        **overrides: Detector settings, as for :func:`searchlab.analysis.reanalyze`
            (``threshold``, ``tracking``, ``alpha``, ...).

    Returns:
        A JSON-safe dict: ``studies``, ``with_alarm``, ``rate``, ``ci95`` (exact), ``by_domain``
        (studies with an alarm in each domain), ``by_instance``, ``settings`` (those replayed)
        and ``alarms`` (``study: [domain@candidate, ...]`` for the studies that alarmed).
    """
    from statsmodels.stats.proportion import proportion_confint

    from searchlab.analysis import reanalyze
    from searchlab.store import Storage

    storage = Storage(storage_url)
    if names is None:
        names = [n for n in storage.names() if n.startswith(_PREFIX + "-")]
    studies = 0
    alarmed: dict[str, list[str]] = {}
    by_domain: dict[str, int] = {}
    by_instance: dict[str, list[int]] = {}
    settings: dict[str, Any] = {}
    for name in names:
        record = storage.load(name)
        if not record.get("finished"):
            continue
        result = reanalyze(record, **overrides)
        settings = result["settings"]
        studies += 1
        fired = []
        for d, v in result["domains"].items():
            first = v["reanalysis"]["first_switch"]
            if first is not None:
                fired.append(f"{d}@{first['candidate']}")
                by_domain[d] = by_domain.get(d, 0) + 1
        instance = name[len(_PREFIX) + 1 :].rsplit("-", 1)[0]
        counts = by_instance.setdefault(instance, [0, 0])
        counts[0] += 1
        counts[1] += bool(fired)
        if fired:
            alarmed[name] = fired
    k = len(alarmed)
    lo, hi = proportion_confint(k, studies, alpha=0.05, method="beta") if studies else (0, 1)
    return {
        "studies": studies,
        "with_alarm": k,
        "rate": k / studies if studies else None,
        "ci95": [float(lo), float(hi)],
        "by_domain": by_domain,
        "by_instance": {i: {"studies": c[0], "with_alarm": c[1]} for i, c in by_instance.items()},
        "settings": settings,
        "alarms": alarmed,
    }
