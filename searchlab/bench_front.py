"""The Pareto mode's benchmark: the true-external front each method reaches at equal budget.

Every method trains the same number of candidates (the study's rounds x candidates) on the
simulated back end of one instance and seed. Its figure is the hypervolume, above a reference
point, of the *true* per-domain external scores of all its completed candidates: the front
the search reached, read off the simulator's truth (no method sees it). The reference point is
the per-domain median of the true external over 256 quasi-random recipes of the same instance
(the same for every method): a candidate that is not better than a typical random recipe in
every domain adds nothing.

Methods:

- ``searchlab``: the engine with ``objective: {type: pareto}``, the study's submissions and
  switch as in the file;
- ``nsga2``, ``tpe``, ``gp``: Optuna's ``NSGAIISampler``, ``TPESampler`` and ``GPSampler`` on a
  study with one ``maximize`` direction per domain, told each candidate's per-domain dev (the
  peers see no external score: what a user would run without searchlab), asked a round's
  candidates at a time;
- ``random``: Optuna's ``RandomSampler``;
- ``searchlab-floors``: the Pareto mode with a baseline (equal mixture, learning rate 1e-4,
  3 epochs, rank 16, no template data) and one floor on the weak domain, "external at most 0.02
  below the baseline's": no regression where the proxy is hacked. Its rows say whether the
  recommendation meets the floor **in truth**, against the baseline's true external.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from searchlab.backends import backend_for as _backend
from searchlab.objective import hypervolume

__all__ = ["METHODS", "front_benchmark", "summarise"]

METHODS = ("searchlab", "nsga2", "tpe", "gp", "random", "searchlab-floors")
WEAK = "equations"  # the weak domain of every instance of the benchmark (searchlab.bench)
FLOOR_DELTA = 0.02


def _config(instance: str, seed: int, *, quick: bool, floors: bool = False) -> Any:
    from searchlab.bench import _study_data
    from searchlab.config import validate_study

    data = _study_data(instance, seed, quick=quick)
    data["name"] = f"front-{instance}-{seed}"
    data["objective"] = {"type": "pareto"}
    if floors:
        domains = [d["name"] for d in data["domains"]]
        data["objective"] |= {
            "baseline": _baseline(domains),
            "floors": [{"domain": WEAK, "below_baseline": FLOOR_DELTA}],
        }
    return validate_study(data, source="bench front")


def _baseline(domains: list[str]) -> dict[str, Any]:
    share = 1.0 / len(domains)
    mixture = {f"mixture.{d}": share for d in domains}
    mixture[f"mixture.{domains[-1]}"] = 1.0 - share * (len(domains) - 1)
    return {**mixture, "learning_rate": 1e-4, "epochs": 3, "lora_rank": 16,
            "template_share": 0.0, "lora_dropout": 0.1}  # fmt: skip


def _reference(config: Any, backend: Any) -> np.ndarray:
    """Per domain, the median true external of 256 quasi-random recipes (hack unlocked)."""
    from searchlab.space import SearchSpace

    recipes = SearchSpace(config.space).quasi_random(256, seed=config.seed + 7)
    truth = [backend.surface.true_external(r) for r in recipes]
    return np.median(np.array([[t[d] for d in config.domain_names] for t in truth]), axis=0)


def _searchlab(config: Any, backend: Any) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """The true external of every completed candidate, and what the floors came to."""
    from searchlab.engine import Engine
    from searchlab.store import CandidateState, Storage

    record = Storage("sqlite:///:memory:", create=True).create(config)
    result = Engine(record=record, config=config, backend=backend).run()
    done = {c.number: c for c in record.candidates() if c.state == CandidateState.COMPLETE}

    def truth(n: int) -> dict[str, float]:
        c = done[n]
        return backend.true_external(c.artefact or {"recipe": c.recipe, "candidate": n})

    extra: dict[str, Any] = {}
    if config.objective.floors:
        rec = result["recommendation"]
        base = min(done)  # the baseline is trained first
        need = truth(base)[WEAK] - FLOOR_DELTA
        extra = {
            "meets_floors_by_model": rec.get("meets_floors"),
            "floor_in_truth": need,
            "recommendation_true_weak": truth(rec["candidate"])[WEAK],
            "meets_floor_in_truth": truth(rec["candidate"])[WEAK] >= need,
        }
    return [truth(n) for n in done], extra


def _optuna(method: str, config: Any, backend: Any) -> list[dict[str, float]]:
    import optuna

    from searchlab.space import SearchSpace

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = {
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=config.seed),
        "tpe": lambda: optuna.samplers.TPESampler(seed=config.seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=config.seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=config.seed),
    }[method]()
    domains = config.domain_names
    study = optuna.create_study(directions=["maximize"] * len(domains), sampler=sampler)
    dists = SearchSpace(config.space).distributions()
    truth, number = [], 0
    for _ in range(config.rounds.count):
        trials = [study.ask(dists) for _ in range(config.rounds.candidates)]
        for t in trials:
            artefact = backend.train(dict(t.params), candidate=number, seed=config.seed + number)
            number += 1
            dev = backend.evaluate(artefact)
            study.tell(t, [dev[d][0] for d in domains])
            truth.append(backend.true_external(artefact))
    return truth


def front_benchmark(
    instances: Sequence[str],
    seeds: Sequence[int],
    *,
    methods: Sequence[str] = METHODS,
    quick: bool = False,
    progress: Callable[[str], None] = lambda line: None,
) -> list[dict[str, Any]]:
    """One row per instance, seed and method: ``hypervolume`` of the true external of its
    completed candidates above the instance's ``reference`` (module docstring).

    ``progress`` gets each row as one JSON line when it is done (a long run keeps what it has).
    """
    rows = []
    for instance in instances:
        for seed in seeds:
            config = _config(instance, seed, quick=quick)
            reference = _reference(config, _backend(config))
            for method in methods:
                extra: dict[str, Any] = {}
                if method.startswith("searchlab"):
                    own = _config(instance, seed, quick=quick, floors=method != "searchlab")
                    truth, extra = _searchlab(own, _backend(own))
                else:
                    truth = _optuna(method, config, _backend(config))
                values = np.array([[t[d] for d in config.domain_names] for t in truth])
                rows.append(
                    {
                        "instance": instance,
                        "seed": seed,
                        "method": method,
                        "candidates": len(truth),
                        "hypervolume": hypervolume(values, reference),
                        "reference": reference.tolist(),
                        **extra,
                    }
                )
                progress(json.dumps(rows[-1]))
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per instance and method: median and interquartile range of the hypervolume, the median
    over seeds of its ratio to the best Optuna sampler of the same seed, and (floors) the share
    of seeds whose recommendation meets the floor in truth."""
    out = []
    for instance in sorted({r["instance"] for r in rows}):
        mine = [r for r in rows if r["instance"] == instance]
        seeds = sorted({r["seed"] for r in mine})
        hv = {(r["seed"], r["method"]): r["hypervolume"] for r in mine}
        optuna_methods = [m for m in ("nsga2", "tpe", "gp") if any(k[1] == m for k in hv)]
        for method in [m for m in METHODS if any(k[1] == m for k in hv)]:
            values = [hv[(s, method)] for s in seeds if (s, method) in hv]
            q = np.quantile(values, [0.25, 0.5, 0.75]) if values else [np.nan] * 3
            ratios = [
                hv[(s, method)] / best
                for s in seeds
                if optuna_methods
                and (best := max(hv.get((s, m), 0.0) for m in optuna_methods)) > 0
                and (s, method) in hv
            ]
            met = [
                r["meets_floor_in_truth"]
                for r in mine
                if r["method"] == method and "meets_floor_in_truth" in r
            ]
            out.append(
                {
                    "instance": instance,
                    "method": method,
                    "seeds": len(values),
                    "median": float(q[1]),
                    "iqr": [float(q[0]), float(q[2])],
                    "ratio_to_best_optuna_median": statistics.median(ratios) if ratios else None,
                    # Share of seeds whose recommendation meets the floor in truth.
                    "floor_met_in_truth": sum(met) / len(met) if met else None,
                }
            )
    return out
