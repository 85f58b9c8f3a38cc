"""Benchmarks that print figures: the cost of one proposal next to Optuna's ``GPSampler``.

``overhead`` builds one history per size on the simulated surface (six domains by default,
quasi-random recipes, dev on every candidate, external on a quarter of them), then times, on
that same history and in the same process:

- searchlab, cold: fitting every domain's two-task GP from scratch and proposing one candidate;
- searchlab, warm: the same after a previous fit (what a study does from round to round: the
  hyperparameters are warm-started, NOTES.md);
- Optuna ``GPSampler`` maximising mean dev: one ``ask`` on a study holding the same candidates.

Each figure is the median over ``repeats`` repetitions. Ratios compare numbers from the same run.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from searchlab.simulation import DOMAINS, ResponseSurface, SurfaceConfig, canonical_space


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


def _searchlab_seconds(h: dict[str, Any], *, warm: bool, seed: int) -> float:
    from searchlab.acquisition import propose_batch
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
        for s, d in zip(surrogates, DOMAINS, strict=True):
            s.fit(x, h["dev"][d], x[rows], h["ext"][d])

    if warm:
        fit_all()  # the previous round's fit, not timed
    start = time.perf_counter()
    fit_all()
    propose_batch(
        surrogates=surrogates,
        weights=[1 / len(DOMAINS)] * len(DOMAINS),
        modes=["proxy"] * (len(DOMAINS) - 1) + ["decoupled"],
        dev_penalty=0.5,
        x_baseline=x,
        x_pending=None,
        q=1,
        discrete_dims=space.discrete_dims(),
        seed=seed,
    )
    return time.perf_counter() - start


def _optuna_gp_seconds(h: dict[str, Any], *, seed: int) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = h["space"].distributions()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.GPSampler(seed=seed))
    for i, recipe in enumerate(h["recipes"]):
        value = float(np.mean([h["dev"][d][i] for d in DOMAINS]))
        study.add_trial(
            optuna.trial.create_trial(params=recipe, distributions=distributions, value=value)
        )
    start = time.perf_counter()
    trial = study.ask(distributions)
    elapsed = time.perf_counter() - start
    study.tell(trial, 0.0)
    return elapsed


def overhead(
    *, candidates: tuple[int, ...] = (25, 50, 100), repeats: int = 3, seed: int = 0
) -> list[dict[str, Any]]:
    """Median seconds per proposal for searchlab and Optuna ``GPSampler`` on the same history.

    Args:
        candidates: History sizes.
        repeats: Repetitions per size (the median is reported).
        seed: Seeds the history and the samplers.

    Returns:
        One row per size: ``candidates``, ``searchlab_s`` (warm, what a study pays),
        ``searchlab_cold_s``, ``optuna_gp_s``, ``ratio`` (warm / GPSampler), ``repeats``.
    """
    import warnings

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in candidates:
            h = _history(n, seed)
            warm = [_searchlab_seconds(h, warm=True, seed=seed + r) for r in range(repeats)]
            cold = [_searchlab_seconds(h, warm=False, seed=seed + r) for r in range(repeats)]
            gp = [_optuna_gp_seconds(h, seed=seed + r) for r in range(repeats)]
            row = {
                "candidates": n,
                "searchlab_s": statistics.median(warm),
                "searchlab_cold_s": statistics.median(cold),
                "optuna_gp_s": statistics.median(gp),
                "repeats": repeats,
            }
            row["ratio"] = row["searchlab_s"] / max(row["optuna_gp_s"], 1e-9)
            rows.append(row)
    return rows
