"""Benchmarks that print figures: the cost of one proposal next to Optuna's ``GPSampler``.

``overhead`` builds one history per size on the simulated surface (six domains by default,
quasi-random recipes, dev on every candidate, external on a quarter of them), then times, on
that same history and in the same process:

- searchlab, cold: fitting every domain's two-task GP from scratch and proposing one candidate;
- searchlab, warm: the same after a previous fit (what a study does from round to round: the
  hyperparameters are warm-started, docs/FACTS.md);
- Optuna ``GPSampler`` maximising mean dev: one ``ask`` on a study holding the same candidates.

Each figure is the median over ``repeats`` repetitions. Ratios compare numbers from the same run.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from searchlab.errors import SearchlabError
from searchlab.objective import ObjectiveType
from searchlab.simulation import DOMAINS, ResponseSurface, SurfaceConfig, canonical_space
from searchlab.store import CandidateState, Mode


def _history(n: int, seed: int) -> dict[str, Any]:
    """``n`` quasi-random candidates with dev everywhere and external on every fourth."""
    from searchlab.config import validate_study
    from searchlab.space import SearchSpace

    config = validate_study(
        {
            "name": "bench",
            "domains": [{"name": d} for d in DOMAINS],
            "space": canonical_space(DOMAINS),
            "backend": {"name": "simulated"},
            "rounds": {"candidates": n, "count": 2},
            "external": {"per_round": 1, "total": n},
            "policy": {"switch": False},  # only the space is used
        },
        source="bench",
    )
    space = SearchSpace(config.space)
    surface = ResponseSurface(config=SurfaceConfig(), instance_seed=seed)
    recipes = space.quasi_random(n, seed=seed)
    dev = [surface.observe_dev(r, run_seed=i) for i, r in enumerate(recipes)]
    ext_rows = list(range(0, n, 4))
    ext = [
        surface.observe_external(recipes[i], run_seed=i, submission=j)["public"]
        for j, i in enumerate(ext_rows)
    ]
    return {
        "space": space,
        "recipes": recipes,
        "x": np.array([space.encode(r) for r in recipes]),
        "dev": {d: np.array([row[d][0] for row in dev]) for d in DOMAINS},
        "ext_rows": ext_rows,
        "ext": {d: np.array([row[d] for row in ext]) for d in DOMAINS},
    }


def _searchlab_seconds(
    h: dict[str, Any], *, warm: bool, seed: int, objective: ObjectiveType = ObjectiveType.WEIGHTED
) -> float:
    from searchlab.acquisition import propose_batch
    from searchlab.batched import fit_domains
    from searchlab.surrogate import DomainSurrogate

    space = h["space"]
    surrogates = [
        DomainSurrogate(
            dim=space.dim, simplex_groups=space.simplex_groups(), resolution=0.01, seed=seed
        )
        for _ in DOMAINS
    ]
    x, rows = h["x"], h["ext_rows"]

    def fit_all() -> None:
        fit_domains(
            surrogates, x, [h["dev"][d] for d in DOMAINS], x[rows], [h["ext"][d] for d in DOMAINS]
        )

    if warm:
        fit_all()  # the previous round's fit, not timed
    start = time.perf_counter()
    fit_all()
    propose_batch(
        surrogates=surrogates,
        weights=[1 / len(DOMAINS)] * len(DOMAINS),
        modes=[Mode.PROXY] * (len(DOMAINS) - 1) + [Mode.DECOUPLED],
        dev_penalty=0.5,
        x_baseline=x,
        x_pending=None,
        q=1,
        discrete_dims=space.discrete_dims(),
        seed=seed,
        objective=objective,
    )
    return time.perf_counter() - start


def _optuna_gp_seconds(
    h: dict[str, Any], *, seed: int, objective: ObjectiveType = ObjectiveType.WEIGHTED
) -> float:
    """One ``GPSampler.ask``: on mean dev, or (Pareto) on every domain's dev as an objective."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = h["space"].distributions()
    pareto = objective == ObjectiveType.PARETO
    study = optuna.create_study(
        directions=["maximize"] * (len(DOMAINS) if pareto else 1),
        sampler=optuna.samplers.GPSampler(seed=seed),
    )
    for i, recipe in enumerate(h["recipes"]):
        values = [float(h["dev"][d][i]) for d in DOMAINS]
        study.add_trial(
            optuna.trial.create_trial(
                params=recipe,
                distributions=distributions,
                values=values if pareto else [float(np.mean(values))],
            )
        )
    start = time.perf_counter()
    trial = study.ask(distributions)
    elapsed = time.perf_counter() - start
    study.tell(trial, [0.0] * len(study.directions))
    return elapsed


#: History sizes :func:`overhead` times by default.
OVERHEAD_SIZES: tuple[int, ...] = (25, 50, 100)


def overhead(
    *,
    candidates: tuple[int, ...] = OVERHEAD_SIZES,
    repeats: int = 3,
    seed: int = 0,
    objective: ObjectiveType = ObjectiveType.WEIGHTED,
) -> list[dict[str, Any]]:
    """Median seconds per proposal for searchlab and Optuna ``GPSampler`` on the same history.

    Args:
        candidates: History sizes.
        repeats: Repetitions per size (the median is reported).
        seed: Seeds the history and the samplers.
        objective: ``weighted`` (qLogNEI against GPSampler on mean dev) or ``pareto``
            (qLogNParEGO against GPSampler with one objective per domain).

    Returns:
        One row per size: ``candidates``, ``searchlab_s`` (warm, what a study pays),
        ``searchlab_cold_s``, ``optuna_gp_s``, ``ratio`` (warm / GPSampler), ``repeats``. Where
        GPSampler runs out of memory, ``optuna_gp_s`` and ``ratio`` are None and
        ``optuna_gp_error`` says so.
    """
    import warnings

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in candidates:
            h = _history(n, seed)
            kw = {"objective": objective}
            warm = [_searchlab_seconds(h, warm=True, seed=seed + r, **kw) for r in range(repeats)]
            cold = [_searchlab_seconds(h, warm=False, seed=seed + r, **kw) for r in range(repeats)]
            row: dict[str, Any] = {
                "candidates": n,
                "searchlab_s": statistics.median(warm),
                "searchlab_cold_s": statistics.median(cold),
                "optuna_gp_s": None,
                "ratio": None,
                "repeats": repeats,
            }
            try:
                gp = [_optuna_gp_seconds(h, seed=seed + r, **kw) for r in range(repeats)]
            except (MemoryError, RuntimeError) as exc:
                # Optuna's multi-objective GPSampler builds a box decomposition whose size grows
                # steeply with the objectives: at six it can ask for tens of GB. A peer that
                # cannot propose is a figure of the benchmark, not a crash of it.
                if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
                    raise
                detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
                row["optuna_gp_error"] = f"out of memory: {detail}"
            else:
                row["optuna_gp_s"] = statistics.median(gp)
                row["ratio"] = row["searchlab_s"] / max(row["optuna_gp_s"], 1e-9)
            rows.append(row)
    return rows


# -- search quality -------------------------------------------------------------------------------

#: Simulated instances: back-end options (those of the detector issue's corpus, with equations
#: as the weak domain unless the options say otherwise).
INSTANCES: dict[str, dict[str, Any]] = {
    "goodhart": {"options": {"b_g": 1.5}},
    "plateau": {"options": {"variant": "plateau", "b_g": 1.5}},
    "several-weak": {"options": {"b_g": 1.5, "weak_domains": ["equations", "gravity"]}},
    "late-hack": {"options": {"b_g": 1.5, "hack_unlock_at": 24}},
    "decline-mixed": {"options": {"b_g": 0.5}},
    "null": {"options": {"variant": "null"}},
}
METHODS = (
    "searchlab",
    "dev-only",
    "oracle",
    "mtgp-external",
    "optuna-tpe",
    "optuna-gp",
    "random",
    "external-only",
)
ENGINE_METHODS = ("searchlab", "dev-only", "oracle")
#: The validity test's threshold of the benchmark's studies: studies/goodhart-sim.yaml's
#: ``policy.threshold``, calibrated on the engine's null studies (docs/RESULTS.md).
THRESHOLD = 5.0


def _study_data(
    instance: str, seed: int, *, quick: bool, rounds: int = 8, threshold: float = THRESHOLD
) -> dict[str, Any]:
    spec = INSTANCES[instance]
    options = {"weak_domains": ["equations"], **spec["options"]}
    if quick:
        # Checks that the harness works, not the goals: two domains (three where two are weak).
        domains = ["cipher", *options["weak_domains"]]
        size, external = {"candidates": 4, "count": 3}, {"per_round": 2, "total": 6}
    else:
        # The study file's budget by default (8 rounds: 64 candidates, 16 submissions); the
        # paper's is 4 rounds (32 and 8).
        domains = list(DOMAINS)
        size, external = {"candidates": 8, "count": rounds}, {"per_round": 2, "total": 2 * rounds}
    if instance == "late-hack" and quick:
        options["hack_unlock_at"] = 8
    return {
        "name": f"bench-{instance}-{seed}",
        "seed": seed,
        "domains": [{"name": d} for d in domains],
        "space": canonical_space(domains),
        "backend": {"name": "simulated", "options": options},
        "rounds": size,
        "external": {**external, "resolution": 0.01},
        "policy": {"warmup_rounds": 1, "threshold": threshold},
    }


def true_regret(
    backend: Any, domains: list[str], weights: dict[str, float], artefact: Any
) -> float:
    """The optimum minus the weighted true (noise-free) external of ``artefact``."""
    truth = backend.true_external(artefact)
    return float(backend.optimum() - sum(weights[d] * truth[d] for d in domains))


def past_peak(surface: Any, candidates: Sequence[Any]) -> set[str]:
    """The weak domains in which a completed candidate has gone past the hack distance where
    external peaks: the true onset the oracle switches at (never on a null instance)."""
    peak = surface.hack_peak()
    past: set[str] = set()
    for c in candidates:
        if c.state == CandidateState.COMPLETE:
            dist = surface.hack_distance(c.recipe, candidate=c.number)
            past.update(d for d, v in dist.items() if v > peak)
    return past


def _run_engine(
    config: Any, backend: Any, *, oracle: bool, storage: str = "sqlite:///:memory:"
) -> tuple[float, list[str]]:
    """Regret of the engine's recommendation, and its alarms as ``domain@candidate/roundR``
    (``R`` counted from 1: the round whose submission raised it; an alarm in the last round
    changes nothing but the record). The study is kept in ``storage`` (memory by default)."""
    from searchlab.engine import Engine
    from searchlab.readmodel import alarms
    from searchlab.store import Storage

    record = Storage(storage, create=True).create(config)
    engine = Engine(record=record, config=config, backend=backend)
    if oracle:
        past: set[str] = set()
        checked: set[int] = set()  # candidates already looked at: modes is read every step

        def modes() -> list[str]:
            new = [
                c
                for c in record.candidates()
                if c.state == CandidateState.COMPLETE and c.number not in checked
            ]
            checked.update(c.number for c in new)
            past.update(past_peak(backend.surface, new))
            return [
                Mode.DECOUPLED if d in past else engine.monitors[d].mode for d in engine.domains
            ]

        engine.__class__ = type("OracleEngine", (Engine,), {"modes": property(lambda _: modes())})
    result = engine.run()
    number = result["recommendation"]["candidate"]
    done = {c.number: c for c in record.candidates()}
    fired = [
        f"{a['domain']}@{a['candidate']}/round{a['round'] + 1}" for a in alarms(record.audit_log())
    ]
    return true_regret(backend, config.domain_names, config.weights, done[number].artefact), fired


def _best_modelled(
    space: Any, submitted: list[tuple[dict[str, Any], float, Any]], seed: int
) -> Any:
    """The artefact of the submitted candidate with the best posterior mean external.

    A GP on the observed (floored, noisy) external scores alone, so a peer is judged by a model
    as searchlab is, not by its best observation (the winner's curse). It is the single-task mode
    of the domain GP, fed the observed external as its only task.
    """
    from searchlab.surrogate import DomainSurrogate

    x = np.array([space.encode(params) for params, _, _ in submitted])
    y = np.array([value for _, value, _ in submitted])
    if len(submitted) < 2:
        return submitted[int(np.argmax(y))][2]
    model = DomainSurrogate(dim=space.dim, simplex_groups=space.simplex_groups(), seed=seed)
    model.fit(x, y, np.zeros((0, space.dim)), np.zeros(0))
    return submitted[int(np.argmax(model.predict(x)["dev_mean"]))][2]


def _run_peer(method: str, config: Any, backend: Any) -> tuple[float, float]:
    """A peer as a user would run it: its own proposals, the external budget spent each round on
    the best candidates by mean dev (external-only: on its own proposals).

    Returns:
        The regret of its recommendation (the best posterior mean external among its submitted
        candidates, :func:`_best_modelled`) and, beside it, of its best observed external.
    """
    import optuna

    from searchlab.space import SearchSpace

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace(config.space)
    dists = space.distributions()
    domains, weights = config.domain_names, config.weights
    sampler: optuna.samplers.BaseSampler = {
        "optuna-tpe": lambda: optuna.samplers.TPESampler(seed=config.seed),
        "optuna-gp": lambda: optuna.samplers.GPSampler(seed=config.seed),
        "external-only": lambda: optuna.samplers.GPSampler(seed=config.seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=config.seed),
    }[method]()
    study = optuna.create_study(direction="maximize", sampler=sampler)
    k, per_round = config.rounds.candidates, config.external.per_round
    budget, submission, number = config.external.total, 0, 0
    submitted: list[tuple[dict[str, Any], float, Any]] = []
    for _ in range(config.rounds.count):
        trials = [study.ask(dists) for _ in range(k)]
        scored = []
        for t in trials:
            artefact = backend.train(dict(t.params), candidate=number, seed=config.seed + number)
            number += 1
            dev = backend.evaluate(artefact)
            mean_dev = sum(weights[d] * dev[d][0] for d in domains)
            scored.append((mean_dev, t, artefact))
        chosen = (
            scored[:per_round]
            if method == "external-only"
            else sorted(scored, key=lambda s: -s[0])[:per_round]
        )
        ext_of: dict[int, float] = {}
        for _, t, artefact in chosen[: max(0, budget - submission)]:
            ext = backend.submit_external(artefact, submission=submission)
            submission += 1
            value = sum(weights[d] * ext[d] for d in domains)
            ext_of[t.number] = value
            submitted.append((space.canonical(dict(t.params)), value, artefact))
        for mean_dev, t, _ in scored:
            if method == "external-only":
                # A GP on the scarce external scores alone: unscored candidates teach it nothing.
                if t.number in ext_of:
                    study.tell(t, ext_of[t.number])
                else:
                    study.tell(t, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(t, mean_dev)
    if not submitted:  # no budget at all: fall back to the best dev (what else?)
        fallback = max(scored, key=lambda s: s[0])[2]
        return _regrets(config, backend, fallback, fallback)
    observed = max(submitted, key=lambda s: s[1])[2]
    return _regrets(config, backend, _best_modelled(space, submitted, seed=config.seed), observed)


def _regrets(config: Any, backend: Any, modelled: Any, observed: Any) -> tuple[float, float]:
    """Regrets of a peer's two recommendations: by its model, by its best observation."""
    return (
        true_regret(backend, config.domain_names, config.weights, modelled),
        true_regret(backend, config.domain_names, config.weights, observed),
    )


def _run_mtgp(config: Any, backend: Any) -> tuple[float, float]:
    """The peer a Bayesian-optimisation expert would pick: a two-task GP on mean dev (the
    auxiliary task, as Ax's ``MultiTypeExperiment`` treats a proxy metric) and mean external,
    always maximising the modelled external (qLogNEI on the external task), the budget spent on
    the unsubmitted candidates with the best modelled external. It is BoTorch's ``MultiTaskGP``
    with the unconstrained task kernel of :mod:`searchlab.surrogate`, on the means over domains.

    Returns:
        As :func:`_run_peer`: regret of the best modelled and of the best observed submission.
    """
    from searchlab.acquisition import propose_batch
    from searchlab.space import SearchSpace
    from searchlab.surrogate import DomainSurrogate

    space = SearchSpace(config.space)
    k, per_round = config.rounds.candidates, config.external.per_round
    model = DomainSurrogate(
        dim=space.dim,
        simplex_groups=space.simplex_groups(),
        resolution=config.external.resolution,
        seed=config.seed,
    )
    recipes: list[dict[str, Any]] = []
    artefacts: list[Any] = []
    mean_dev: list[float] = []
    external: dict[int, float] = {}  # candidate -> mean external, in submission order

    def fit() -> np.ndarray:
        x = np.array([space.encode(r) for r in recipes])
        model.fit(x, np.array(mean_dev), x[list(external)], np.array(list(external.values())))
        return x

    for r in range(config.rounds.count):
        if r < config.policy.warmup_rounds:
            batch = space.quasi_random(k, seed=config.seed * 1000 + r)
        else:
            x = fit()
            proposal = propose_batch(
                surrogates=[model],
                weights=[1.0],
                modes=[Mode.DECOUPLED],
                dev_penalty=0.0,  # external only: dev enters through the model
                x_baseline=x,
                x_pending=None,
                q=k,
                discrete_dims=space.discrete_dims(),
                seed=config.seed * 1000 + r,
            )
            batch = [space.decode(row) for row in proposal.x]
        for recipe in batch:
            artefact, dev = _train_one(config, backend, recipe, number=len(recipes))
            recipes.append(recipe)
            artefacts.append(artefact)
            mean_dev.append(dev)
        left = min(per_round, config.external.total - len(external))
        if left > 0:
            fit()
            for n in _best_open(model, space, recipes, external, left):
                ext = backend.submit_external(artefacts[n], submission=len(external))
                external[n] = sum(config.weights[d] * ext[d] for d in config.domain_names)
    fit()
    if not external:  # no budget at all: the best modelled dev
        (best,) = _best_open(model, space, recipes, {}, 1)
        return _regrets(config, backend, artefacts[best], artefacts[best])
    observed = max(external, key=external.__getitem__)
    # The submitted candidate with the best modelled external (the same rule as the engine's).
    p = model.predict(np.array([space.encode(recipes[n]) for n in external]))
    modelled = list(external)[int(np.argmax(p["ext_mean"] if model.two_task else p["dev_mean"]))]
    return _regrets(config, backend, artefacts[modelled], artefacts[observed])


def _train_one(
    config: Any, backend: Any, recipe: dict[str, Any], *, number: int
) -> tuple[Any, float]:
    """Trains and evaluates candidate ``number``: its artefact and weighted mean dev."""
    artefact = backend.train(recipe, candidate=number, seed=config.seed + number)
    dev = backend.evaluate(artefact)
    return artefact, sum(config.weights[d] * dev[d][0] for d in config.domain_names)


def _best_open(
    model: Any, space: Any, recipes: list[dict[str, Any]], external: dict[int, float], k: int
) -> list[int]:
    """The ``k`` unsubmitted candidates with the best modelled external (modelled dev before
    the model has two external scores)."""
    p = model.predict(np.array([space.encode(rc) for rc in recipes]))
    value = p["ext_mean"] if model.two_task else p["dev_mean"]
    return [int(n) for n in np.argsort(-value) if int(n) not in external][:k]


def kept_study(keep: Path, instance: str, seed: int, method: str) -> Path:
    """Where ``search(keep=...)`` stores an engine method's study (SQLite, study name
    ``bench-{instance}-{seed}``)."""
    return keep / f"{instance}-{seed}-{method}.db"


def _run_method(
    method: str, config: Any, *, storage: str = "sqlite:///:memory:"
) -> tuple[float, list[str] | None, float]:
    """One method on one seed's study: its regret, and the engine's switches
    (``domain@candidate/roundR``; None for a peer) or a peer's best-observed regret (NaN for the
    engine's methods). An engine method's study is kept in ``storage``."""
    from searchlab.backends import backend_for

    backend = backend_for(config)  # config.seed is this seed
    if method in ENGINE_METHODS:
        cfg = config
        if method == "dev-only":
            policy = config.policy.model_copy(update={"switch": False})
            cfg = config.model_copy(update={"policy": policy})
        regret, fired = _run_engine(cfg, backend, oracle=method == "oracle", storage=storage)
        return regret, fired, math.nan
    run = _run_mtgp if method == "mtgp-external" else partial(_run_peer, method)
    regret, best_observed = run(config, backend)
    return regret, None, best_observed


def search(
    *,
    instances: tuple[str, ...] = tuple(INSTANCES),
    methods: tuple[str, ...] = METHODS,
    seeds: int = 10,
    first_seed: int = 0,
    quick: bool = False,
    rounds: int = 8,
    threshold: float = THRESHOLD,
    keep: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Runs methods side by side on the same simulated instances (common random numbers).

    Every method gets, per instance and seed, the same surface instance, candidates per round,
    rounds and external budget. The figure is the true (noise-free) external regret of each
    method's final recommendation.

    Args:
        instances: Names from :data:`INSTANCES`.
        methods: Names from :data:`METHODS`.
        seeds: Seeds per instance.
        first_seed: The first seed (seeds ``first_seed .. first_seed + seeds - 1``), so that
            seeds can be split over processes and the rows merged.
        quick: A small preset (2-3 domains, 3 rounds of 4, 6 submissions) that checks the
            harness, not the goals.
        rounds: Rounds of 8 candidates in the full preset, 2 submissions each (8: the study
            file's 64 candidates; 4: the paper's 32).
        threshold: The validity test's per-domain threshold (``policy.threshold``; the study
            file's 5 by default).
        keep: A folder in which each engine method's study is stored (one SQLite file per
            instance, seed and method, :func:`kept_study`), so that a trace can be read
            afterwards (``study audit``, ``study report``); studies are kept in memory otherwise.
            A file that is already there is refused before anything runs.
        progress: Called with one line per (instance, seed, method) as each finishes.

    Returns:
        One row per (instance, method): ``instance``, ``method``, ``median_regret``, ``iqr``,
        ``seeds``, ``regrets`` (per seed), ``alarms`` (per seed, the engine methods'
        switches as ``domain@candidate/roundR``; empty for peers) and ``regrets_best_observed`` (per
        seed, a peer's regret had it recommended its best observed external; empty for the
        engine's methods).
    """
    import warnings

    from searchlab.config import validate_study

    def storage(instance: str, seed: int, method: str) -> str:
        if keep is None or method not in ENGINE_METHODS:
            return "sqlite:///:memory:"
        return f"sqlite:///{kept_study(keep, instance, seed, method)}"

    if keep is not None:
        if keep.exists() and not keep.is_dir():
            raise SearchlabError(f"--keep: {keep} is not a folder")
        taken = [
            kept_study(keep, i, s, m)
            for i in instances
            for s in range(first_seed, first_seed + seeds)
            for m in methods
            if m in ENGINE_METHODS and kept_study(keep, i, s, m).exists()
        ]
        if taken:
            raise SearchlabError(f"--keep: {taken[0]} is already there; keep studies elsewhere")
        keep.mkdir(parents=True, exist_ok=True)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for instance in instances:
            per_method: dict[str, list[float]] = {m: [] for m in methods}
            # Per seed, the engine's switches (domain@candidate/roundR): late, early or none.
            fired_by: dict[str, list[list[str]]] = {m: [] for m in methods}
            # Per seed, a peer's regret had it recommended its best observed external.
            observed_by: dict[str, list[float]] = {m: [] for m in methods}
            for seed in range(first_seed, first_seed + seeds):
                config = validate_study(
                    _study_data(instance, seed, quick=quick, rounds=rounds, threshold=threshold),
                    source=f"bench {instance}",
                )
                for method in methods:
                    regret, fired, best_observed = _run_method(
                        method, config, storage=storage(instance, seed, method)
                    )
                    if fired is not None:
                        fired_by[method].append(fired)
                        note = f" alarms {','.join(fired) or 'none'}"
                    else:
                        observed_by[method].append(best_observed)
                        note = f" (best observed: {best_observed:.5f})"
                    per_method[method].append(regret)
                    if progress is not None:
                        progress(f"{instance} seed {seed} {method}: regret {regret:.5f}{note}")
            for method, values in per_method.items():
                q1, q3 = np.percentile(values, [25, 75])
                rows.append(
                    {
                        "instance": instance,
                        "method": method,
                        "median_regret": float(np.median(values)),
                        "iqr": float(q3 - q1),
                        "seeds": len(values),
                        "regrets": [float(v) for v in values],
                        "alarms": fired_by[method],
                        "regrets_best_observed": [float(v) for v in observed_by[method]],
                    }
                )
    return rows
