"""End-to-end false alarms and power of the validity test: corpora of the engine's own studies.

A threshold calibrated on simulated streams is only as good as the streams; what matters is
what the engine really feeds the test (16 pairs chosen by its submission policy, dev from its
dev-only GP, floored external scores). This module measures that directly:

- :func:`make_corpus` runs the engine on simulated instances with the switch disabled
  (``policy.switch: false``), at the study file's budget (64 candidates, 16 submissions), and
  keeps each study in an Optuna storage. **Null** instances (:data:`NULL_INSTANCES`: external
  keeps following dev at no less than the tracking fraction) measure false alarms;
  **alternative** instances (:data:`ALTERNATIVE_INSTANCES`: a weak domain decouples) measure
  power and delay.
- :func:`merge_corpus` joins corpora built over processes with one storage each.
- :func:`false_alarms` replays any detector setting over every stored null study
  (:func:`searchlab.analysis.reanalyze`, on the dev each pair entered the test with) and counts
  the studies in which any domain would have alarmed at any check.
- :func:`power` replays a setting over the alternative studies: per weak domain, the share of
  studies with an alarm before the last round and the delay after the onset.
- :func:`compare_peers` runs the detectors of :mod:`searchlab.peers` on the same pair streams,
  each at the threshold that gives no more null studies with an alarm than the validity test.
- :func:`evidence_ceiling` asks whether a miss is the test's or the data's: the evidence of
  decoupling the engine's pairs held, against the most that the same number of pairs chosen
  from the study's own candidates could have held (what a better submission policy could buy).

Why a replay is exact: with the switch disabled the engine's proposals and submissions never
depend on the test, and with it enabled they do not depend on it before the first alarm (the
submission policy reads the dev-only GP, not the statistic; the test's dev is fixed when a pair
enters). So the first alarm of the replay is the first alarm the engine would have raised, for
any setting. Rates are binomial proportions over independent studies, reported with exact
(Clopper-Pearson) intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

__all__ = [
    "ALTERNATIVE_INSTANCES",
    "NULL_INSTANCES",
    "compare_peers",
    "evidence_ceiling",
    "false_alarms",
    "make_corpus",
    "merge_corpus",
    "power",
]

#: Null instances: back-end options of the simulated surface (searchlab.simulation).
NULL_INSTANCES: dict[str, dict[str, Any]] = {
    # External follows dev along every direction (the hack direction at half the dev rate).
    "null": {"variant": "null", "weak_domains": ["equations"]},
    # Diminishing returns that never vanish: the slope falls to a / (1 + b D), above half its
    # initial value for the hack distances D < 2 the search reaches, so above kappa = 0.25.
    "null-concave": {"variant": "concave", "b_g": 0.5, "weak_domains": ["equations"]},
    # A training-seed effect shared by dev and external three times the default.
    "null-seed": {"variant": "null", "seed_effect_sd": 0.25, "weak_domains": ["equations"]},
    # Two weak domains, both still valid.
    "null-two-weak": {"variant": "null", "weak_domains": ["equations", "gravity"]},
}

#: Alternative instances: back-end options and the candidate index from which the weak
#: domains' hack is reachable (``onset``).
ALTERNATIVE_INSTANCES: dict[str, dict[str, Any]] = {
    # The study file's instance: external peaks at hack distance 0.2, then falls steeply.
    "goodhart": {"options": {"b_g": 1.5, "weak_domains": ["equations"]}, "onset": 0},
    # The paper's case: external rises to the same peak and then stays flat.
    "plateau": {
        "options": {"variant": "plateau", "b_g": 1.5, "weak_domains": ["equations"]},
        "onset": 0,
    },
    # The hack becomes reachable only from candidate 24 (round 3).
    "late-hack": {
        "options": {"b_g": 1.5, "hack_unlock_at": 24, "weak_domains": ["equations"]},
        "onset": 24,
    },
    "several-weak": {"options": {"b_g": 1.5, "weak_domains": ["equations", "gravity"]}, "onset": 0},
    # A milder fall (peak at 0.6) that the search mixes with genuine gains.
    "decline-mixed": {"options": {"b_g": 0.5, "weak_domains": ["equations"]}, "onset": 0},
}

_NULL_PREFIX = "null-corpus"
_ALT_PREFIX = "power-corpus"


def _study_name(instance: str, seed: int, candidates: int = 64) -> str:
    """The corpus name; a budget other than 64 candidates is tagged ``<instance>.<n>c``."""
    prefix = _NULL_PREFIX if instance in NULL_INSTANCES else _ALT_PREFIX
    budget = "" if candidates == 64 else f".{candidates}c"
    return f"{prefix}-{instance}{budget}-{seed}"


def _instance_of(name: str) -> str:
    """The instance and budget tag of a corpus study (``goodhart`` or ``goodhart.32c``)."""
    return name.split("-corpus-", 1)[1].rsplit("-", 1)[0]


def _base_instance(tagged: str) -> str:
    return tagged.split(".", 1)[0]


def _options(instance: str) -> dict[str, Any]:
    if instance in NULL_INSTANCES:
        return NULL_INSTANCES[instance]
    if instance in ALTERNATIVE_INSTANCES:
        return ALTERNATIVE_INSTANCES[instance]["options"]
    known = sorted([*NULL_INSTANCES, *ALTERNATIVE_INSTANCES])
    raise ValueError(f"unknown corpus instance {instance!r}: {known}")


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
    """Runs (or finishes) one study per instance and seed into ``storage_url``.

    A study already finished there is kept as it is; an unfinished one is resumed, so the
    corpus can be built over several runs and split over processes by seed: disjoint
    ``seeds`` per process, on one storage (SQLite serialises the writes, waiting for the lock)
    or on one storage each, merged afterwards with ``optuna.copy_study`` (every searchlab value
    is a study or trial attribute, so a copy replays the same). Seeds are the outer loop, so an
    interrupted build leaves every instance with about as many studies.

    Args:
        storage_url: Optuna storage URL.
        instances: Names from :data:`NULL_INSTANCES` or :data:`ALTERNATIVE_INSTANCES`.
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

    for instance in instances:
        _options(instance)  # unknown names fail before anything runs
    storage = Storage(storage_url, create=True)
    existing = set(storage.names())
    names = []
    for seed in seeds:
        for instance in instances:
            name = _study_name(instance, seed, rounds[0] * rounds[1])
            config = validate_study(
                {
                    "name": name,
                    "seed": int(seed),
                    "domains": [{"name": d} for d in DOMAINS],
                    "space": canonical_space(list(DOMAINS)),
                    "backend": {"name": "simulated", "options": _options(instance)},
                    "rounds": {"candidates": rounds[0], "count": rounds[1]},
                    "external": {
                        "per_round": external[0],
                        "total": external[1],
                        "resolution": 0.01,
                    },
                    "policy": {"warmup_rounds": 1, "threshold": threshold, "switch": False},
                },
                source=f"corpus {instance} seed {seed}",
            )
            record = storage.load(name) if name in existing else storage.create(config)
            if not record.finished:
                Engine(record=record, config=config, backend=backend_for(config)).run()
            names.append(name)
            if progress is not None:
                progress(f"{name}: finished")
    return names


def merge_corpus(
    storage_url: str, sources: Sequence[str], *, progress: Callable[[str], None] | None = None
) -> list[str]:
    """Copies the finished studies of ``sources`` that ``storage_url`` lacks into it.

    The way to join a corpus built over processes with one storage each. An unfinished study is
    left where it is (resume it there). A name already in ``storage_url`` is kept when it holds
    as many trials as its source; otherwise it is a copy an interrupted merge left half done
    (Optuna copies a study in several transactions), and it is copied again.

    Returns:
        The names copied.
    """
    import optuna

    from searchlab.store import Storage

    # Optuna's own storage objects: the engine options and error handling of searchlab's.
    target = Storage(storage_url, create=True).optuna_storage
    copied = []
    for url in sources:
        source = Storage(url)
        for name in source.names():
            record = source.load(name)
            if not record.finished:
                continue
            want = len(record.candidates())
            try:
                have = optuna.load_study(study_name=name, storage=target)
            except KeyError:
                have = None
            if have is not None:
                if len(have.get_trials(deepcopy=False)) == want:
                    continue
                optuna.delete_study(study_name=name, storage=target)
            # Every searchlab value is a study or trial attribute: the copy replays the same.
            optuna.copy_study(
                from_study_name=name, from_storage=source.optuna_storage, to_storage=target
            )
            copied.append(name)
            if progress is not None:
                progress(f"{name}: copied")
    return copied


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
        (studies with an alarm in each domain), ``by_instance``, ``settings`` (those replayed),
        ``alarms`` (``study: [domain@candidate, ...]`` for the studies that alarmed) and
        ``largest_silent``: the largest statistic of the alarm test in the studies that did not
        alarm (``statistic``, ``study``, ``domain``; None without such a study). Every
        threshold above it and at most the one replayed alarms in exactly these studies, so
        one replay at a high threshold gives the false alarms of a whole range.
    """
    from statsmodels.stats.proportion import proportion_confint

    from searchlab.analysis import reanalyze
    from searchlab.store import Storage

    storage = Storage(storage_url)
    if names is None:
        names = [n for n in storage.names() if n.startswith(_NULL_PREFIX + "-")]
    studies = 0
    alarmed: dict[str, list[str]] = {}
    by_domain: dict[str, int] = {}
    by_instance: dict[str, list[int]] = {}
    settings: dict[str, Any] = {}
    silent: dict[str, Any] | None = None
    for name in names:
        record = storage.load(name)
        if not record.finished:
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
        instance = _instance_of(name)
        counts = by_instance.setdefault(instance, [0, 0])
        counts[0] += 1
        counts[1] += bool(fired)
        if fired:
            alarmed[name] = fired
            continue
        for d, v in result["domains"].items():
            largest = v["reanalysis"]["max_statistic"] or 1.0  # of the alarm test; None: no check
            if silent is None or largest > silent["statistic"]:
                silent = {"statistic": float(largest), "study": name, "domain": d}
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
        "largest_silent": silent,
    }


def power(
    storage_url: str, *, names: Sequence[str] | None = None, **overrides: Any
) -> dict[str, Any]:
    """Per alternative instance and weak domain: alarms before the last round, and their delay.

    An alarm counts when the check that raised it came from a submission before the study's
    last round (what is left to change then is only the recommendation). Its delay is the number
    of candidates evaluated when it fired, minus the instance's onset.

    Args:
        storage_url: The corpus's storage.
        names: Studies to replay (default: every alternative corpus study in the storage).
        **overrides: Detector settings, as for :func:`false_alarms`.

    Returns:
        A JSON-safe dict: ``settings`` and ``instances``: per instance, ``studies``, and per weak
        domain ``detected`` (studies alarmed before the last round), ``rate``, ``ci95``,
        ``delays`` (one per detection) and ``median_delay``; plus ``healthy_alarms`` (studies
        with an alarm on a domain that is not weak).
    """
    from statistics import median

    from statsmodels.stats.proportion import proportion_confint

    from searchlab.analysis import reanalyze
    from searchlab.store import Storage

    storage = Storage(storage_url)
    if names is None:
        names = [n for n in storage.names() if n.startswith(_ALT_PREFIX + "-")]
    out: dict[str, dict[str, Any]] = {}
    settings: dict[str, Any] = {}
    for name in names:
        record = storage.load(name)
        if not record.finished:
            continue
        instance = _instance_of(name)
        spec = ALTERNATIVE_INSTANCES[_base_instance(instance)]
        rounds = record.config_data["rounds"]
        k, last = int(rounds["candidates"]), int(rounds["count"]) - 1
        result = reanalyze(record, **overrides)
        settings = result["settings"]
        submissions = record.submissions()
        row = out.setdefault(instance, {"studies": 0, "domains": {}, "healthy_alarms": 0})
        row["studies"] += 1
        healthy = False
        for d, v in result["domains"].items():
            first = v["reanalysis"]["first_switch"]
            r = None if first is None else submissions[first["candidate"]]["round"]
            if d not in spec["options"]["weak_domains"]:
                healthy = healthy or first is not None
                continue
            cell = row["domains"].setdefault(d, {"detected": 0, "delays": []})
            if r is not None and r < last:
                cell["detected"] += 1
                cell["delays"].append((r + 1) * k - spec["onset"])
        row["healthy_alarms"] += healthy
    for row in out.values():
        for cell in row["domains"].values():
            lo, hi = proportion_confint(cell["detected"], row["studies"], alpha=0.05, method="beta")
            cell["rate"] = cell["detected"] / row["studies"]
            cell["ci95"] = [float(lo), float(hi)]
            cell["median_delay"] = median(cell["delays"]) if cell["delays"] else None
    return {"settings": settings, "instances": out}


def _peer_power(
    detector: Callable[..., int | None], threshold: float, alts: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """One peer's power on the alternative studies, per instance and weak domain: ``detected``
    (a weak-domain alarm from a submission before the last round), ``studies``, ``delays``
    (candidates after the onset), ``rate`` and ``median_delay``."""
    from statistics import median

    table: dict[str, dict[str, Any]] = {}
    for study in alts:
        spec = ALTERNATIVE_INSTANCES[_base_instance(study["instance"])]
        for d in spec["options"]["weak_domains"]:
            s = study["streams"][d]
            cell = table.setdefault(
                f"{study['instance']}/{d}", {"detected": 0, "studies": 0, "delays": []}
            )
            cell["studies"] += 1
            pair = detector(s["x"], s["y"], s["warm"], threshold=threshold)
            if pair is not None and s["rounds"][pair - 1] < study["last"]:
                cell["detected"] += 1
                cell["delays"].append((s["rounds"][pair - 1] + 1) * study["k"] - spec["onset"])
    for cell in table.values():
        cell["rate"] = cell["detected"] / cell["studies"]
        cell["median_delay"] = median(cell["delays"]) if cell["delays"] else None
    return table


def _streams(view: Any) -> dict[str, dict[str, Any]]:
    """Per domain, the pairs of a study (its :class:`~searchlab.readmodel.StudyView`) as the
    validity test received them: ``x`` (the dev fixed at entry), ``y`` (external), ``rounds``
    (each pair's submission round) and ``warm`` (warm-up dev the knots were fixed from)."""
    import numpy as np

    done = [s for s in view.pairs if s.get("test_dev")]
    warm = view.warmup_dev or {}
    return {
        d: {
            "x": np.array([s["test_dev"][d] for s in done], dtype=float),
            "y": np.array([s["scores"][d] for s in done], dtype=float),
            "rounds": [int(s["round"]) for s in done],
            "warm": np.asarray(warm[d], dtype=float),
        }
        for d in warm
    }


def compare_peers(storage_url: str, **overrides: Any) -> dict[str, Any]:
    """The validity test and the peer detectors (:mod:`searchlab.peers`) on the same corpus.

    Each peer's threshold is the most sensitive value of its grid whose false alarms on the null
    corpus (studies with an alarm in any domain at any check) are no more than the validity
    test's at ``overrides``; power is then counted as in :func:`power` (a weak-domain alarm
    from a submission before the last round; delay in candidates after the onset).

    Args:
        storage_url: The corpus's storage (null and alternative studies).
        **overrides: Settings of the validity test, as for :func:`false_alarms`.

    Returns:
        A JSON-safe dict: ``validity_test`` (its ``false_alarms`` and ``power``) and ``peers``:
        per peer, ``threshold``, ``null_studies_with_alarm``, ``null_studies`` and ``power``
        (per instance and weak domain: ``detected``, ``studies``, ``rate``, ``median_delay``).
    """

    from searchlab.peers import PEERS
    from searchlab.readmodel import read
    from searchlab.store import Storage

    storage = Storage(storage_url)
    nulls, alts = [], []
    for name in storage.names():
        if not name.startswith((_NULL_PREFIX + "-", _ALT_PREFIX + "-")):
            continue
        record = storage.load(name)
        if not record.finished:
            continue
        rounds = record.config_data["rounds"]
        entry = {
            "instance": _instance_of(name),
            "streams": _streams(read(record)),
            "k": int(rounds["candidates"]),
            "last": int(rounds["count"]) - 1,
        }
        (nulls if name.startswith(_NULL_PREFIX) else alts).append(entry)
    ours = false_alarms(storage_url, **overrides)
    target = ours["with_alarm"]

    def null_count(detector: Callable[..., int | None], threshold: float) -> int:
        return sum(
            any(
                detector(s["x"], s["y"], s["warm"], threshold=threshold) is not None
                for s in study["streams"].values()
            )
            for study in nulls
        )

    peers: dict[str, Any] = {}
    for peer, (detector, grid) in PEERS.items():
        # The grids run from sensitive to strict; keep the first that matches the target.
        counts: dict[float, int] = {}
        chosen = grid[-1]
        for t in grid:
            counts[t] = null_count(detector, t)
            if counts[t] <= target:
                chosen = t
                break
        table = _peer_power(detector, chosen, alts)
        peers[peer] = {
            "threshold": float(chosen),
            "null_studies_with_alarm": counts[chosen],
            "null_studies": len(nulls),
            "power": table,
        }
    return {
        "validity_test": {"false_alarms": ours, "power": power(storage_url, **overrides)},
        "peers": peers,
    }


def evidence_ceiling(
    storage_url: str,
    *,
    names: Sequence[str] | None = None,
    restarts: int = 4,
    seed: int = 0,
    **overrides: Any,
) -> dict[str, Any]:
    r"""How much evidence of decoupling a study's pairs held, and the most its candidates allowed.

    For each finished alternative study and weak domain, with the test's settings (the study's,
    changed by ``overrides`` as in :func:`searchlab.analysis.reanalyze`): ``x_i`` is candidate
    ``i``'s noise-free dev over the warm-up dev sd (the test's unit), ``mu_i`` its noise-free
    external (the simulated surface's truth), and ``sigma`` the residual sd of the test's own
    hinge fits on the engine's pairs at the last check (median over the knots). For a set ``D``
    of paired candidates and a knot ``k`` the hinge fitted to ``(x_D, mu_D)`` gives the design's
    ``delta_{D,k}`` and ``v_{D,k} = [(W'W)^{-1}]_{delta delta}``, and

    .. math::

        \lambda(D, k) = -\delta_{D,k} / (\sigma \sqrt{v_{D,k}})

    is the t statistic of ``delta`` the last check would have on average (its noncentrality;
    positive means evidence of decoupling). Reported per weak domain: ``lambda`` of the engine's
    own pairs (best knot), and of the best set of as many pairs among the study's completed
    candidates (a local search over single swaps at every knot, from the engine's pairs and from
    ``restarts`` random starts: a lower bound on the best design, with hindsight on all
    candidates and their truth, which no submission policy has). ``power_*`` is the chance that
    a one-sided t-test at level ``alpha / n_domains``, run once at the last check, rejects
    (non-central t): a generous reference, since a test that checks after every pair and must
    bound its false alarms over all checks is less powerful than one that looks once.

    Only the simulated back end has the truth this needs; other studies are skipped. The
    ``local`` form (no ``kappa``) is not measured.

    Args:
        storage_url: The corpus's storage.
        names: Studies to measure (default: every alternative corpus study in the storage).
        restarts: Random starts of the swap search per knot.
        seed: Seed of those starts.
        **overrides: Detector settings, as for :func:`false_alarms`.

    Returns:
        A JSON-safe dict: ``settings`` and ``studies``: one row per study and weak domain with
        ``study``, ``instance``, ``domain``, ``pairs``, ``sigma``, ``lambda_pairs``,
        ``lambda_best``, ``power_pairs``, ``power_best`` and ``best_knot`` (dev units); the
        last five are None where no knot could be fitted to the engine's pairs (no ``sigma``).
    """
    import math

    import numpy as np
    from scipy import stats

    from searchlab.analysis import _settings
    from searchlab.backends import backend_for
    from searchlab.config import stored_config
    from searchlab.readmodel import read
    from searchlab.store import Storage
    from searchlab.validity import ValidityTest

    if overrides.get("hinge_form") == "local":
        raise ValueError("--hinge-form local: the evidence ceiling needs the linear or quad hinge")
    storage = Storage(storage_url)
    if names is None:
        names = [n for n in storage.names() if n.startswith(_ALT_PREFIX + "-")]
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    settings: Any = None
    for name in names:
        record = storage.load(name)
        if not record.finished:
            continue
        config = stored_config(record.config_data)
        surface = getattr(backend_for(config), "surface", None)
        if surface is None:
            continue
        view = read(record)
        _, settings, _ = _settings(view, overrides)
        if settings.hinge_form == "local":
            raise ValueError(f"study {name!r} tests with the local hinge: give --hinge-form")
        kappa = settings.tracking
        paired = [s["candidate"] for s in view.pairs if s.get("test_dev")]
        numbers = sorted(view.complete)
        index = {n: i for i, n in enumerate(numbers)}
        recipes = [view.complete[n].recipe for n in numbers]
        streams = _streams(view)
        for d in config.backend.options.get("weak_domains", []):
            test = ValidityTest(settings=settings)
            test.fix_knots(streams[d]["warm"])
            scale = float(test.scale or 1.0)
            knots = [k / scale for k in test.knots or ()]
            truth = [
                (surface.true_dev(r, candidate=n)[d], surface.true_external(r, candidate=n)[d])
                for n, r in zip(numbers, recipes, strict=True)
            ]
            x = np.array([t[0] for t in truth]) / scale
            mu = np.array([t[1] for t in truth])
            sigma = _residual_sd(streams[d]["x"] / scale, streams[d]["y"], knots, settings, kappa)
            row = {
                "study": name,
                "instance": _instance_of(name),
                "domain": d,
                "pairs": len(paired),
                "sigma": sigma if sigma > 0.0 else None,
            }
            rows.append(row)
            if not sigma > 0.0:
                row |= dict.fromkeys(
                    ("lambda_pairs", "lambda_best", "power_pairs", "power_best", "best_knot")
                )
                continue
            lam = partial(_noncentrality, x, mu, sigma=sigma, settings=settings, kappa=kappa)
            sub = np.array([[index[n] for n in paired]])
            own = max(float(lam(sub, k)[0]) for k in knots)
            best, best_knot = -math.inf, math.nan
            for k in knots:
                # The engine's own pairs are one start: the ceiling is never below them.
                starts = [sub[0]] + [
                    rng.choice(len(x), sub.shape[1], replace=False) for _ in range(restarts)
                ]
                for start in starts:
                    value = _swap_search(lam, k, len(x), start)
                    if value > best:
                        best, best_knot = value, k * scale
            nu = max(sub.shape[1] - (4 if settings.hinge_form == "quad" else 3), 1)
            crit = float(stats.t.ppf(1.0 - settings.alpha / settings.n_domains, nu))
            row |= {
                "lambda_pairs": own,
                "lambda_best": best,
                "power_pairs": float(stats.nct.sf(crit, nu, own)),
                "power_best": float(stats.nct.sf(crit, nu, best)),
                "best_knot": best_knot,
            }
    return {"settings": None if settings is None else settings.to_dict(), "studies": rows}


def _residual_sd(x: Any, y: Any, knots: Sequence[float], settings: Any, kappa: float) -> float:
    """Median over the knots of the residual sd of the test's hinge fit to the pairs ``(x,
    y)`` (``x`` standardised); nan when no knot can be fitted."""
    import math

    import numpy as np

    from searchlab.validity import _hinge_fit

    sds = []
    for k in knots:
        if int(np.count_nonzero(x > k)) < settings.min_above:
            continue
        fit = _hinge_fit(x, y, k, settings.hinge_form, kappa)
        if fit is not None:
            sds.append(math.sqrt(fit[3] / fit[4]))
    return float(np.median(sds)) if sds else math.nan


def _noncentrality(
    x: Any,
    mu: Any,
    chosen: Any,
    knot: float,
    *,
    sigma: float,
    settings: Any,
    kappa: float,
) -> Any:
    """``-delta / (sigma sqrt(v))`` of the hinge fitted to the noise-free ``(x, mu)`` of the
    ``chosen`` candidates at ``knot``, for each row of ``chosen`` (shape ``(B, m)``: ``B``
    designs of ``m`` candidates); 0 where a design has too few candidates above the knot."""
    import numpy as np

    from searchlab.validity import hinge_design

    xs, ms = x[chosen], mu[chosen]  # B x m
    w, m = hinge_design(xs, ms, knot, settings.hinge_form, kappa)  # B x m x p, B x m
    inv = np.linalg.pinv(np.swapaxes(w, -1, -2) @ w)  # B x p x p
    delta = (inv @ (np.swapaxes(w, -1, -2) @ m[..., None]))[:, -1, 0]
    v = inv[:, -1, -1]
    ok = (np.count_nonzero(xs > knot, axis=-1) >= settings.min_above) & (v > 0.0)
    return np.where(ok, -delta / (sigma * np.sqrt(np.where(ok, v, 1.0))), 0.0)


def _swap_search(value: Callable[[Any, float], Any], knot: float, n: int, start: Any) -> float:
    """Local search for the ``len(start)`` of ``n`` candidates with the largest ``value(chosen,
    knot)``: from ``start``, make the best single swap at each position while one improves it."""
    import numpy as np

    chosen = np.asarray(start)
    m = len(chosen)
    current = float(value(chosen[None, :], knot)[0])
    improved = True
    while improved:
        improved = False
        for pos in range(m):
            trials = np.repeat(chosen[None, :], n, axis=0)  # n x m: position pos <- each j
            trials[:, pos] = np.arange(n)
            values = np.where(np.isin(np.arange(n), chosen), -np.inf, value(trials, knot))
            j = int(np.argmax(values))
            if values[j] > current + 1e-9:
                chosen, current, improved = trials[j], float(values[j]), True
    return current
