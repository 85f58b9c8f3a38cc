"""A scripted research agent that drives a study through the CLI's JSON commands only.

A-Evolve's rule: take the best candidate so far (by mean dev, the only score it sees every
cycle), change one knob, try it. Each round the agent enqueues its mutations, asks for the rest
of the round (searchlab's proposals), "trains" every candidate with its own copy of the
simulated back end (its stand-in for training), tells the dev scores, then asks where the
external budget goes and submits those. Used by tests/test_agent_loop.py.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

Cli = Callable[..., Any]  # cli(*args, stdin=None) -> the command's JSON output


def mutate(recipe: dict[str, Any], space: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One knob of ``recipe`` changed (a mixture weight moves and the rest renormalise)."""
    out = dict(recipe)
    name = rng.choice(sorted(space))
    p = space[name]
    if p["type"] == "mixture":
        key = f"{name}.{rng.choice(p['domains'])}"
        out[key] = min(1.0, max(0.0, out[key] + rng.choice([-0.15, 0.15])))
        keys = [f"{name}.{d}" for d in p["domains"]]
        total = sum(out[k] for k in keys)
        for k in keys:
            out[k] = out[k] / total
        out[keys[-1]] = 1.0 - sum(out[k] for k in keys[:-1])  # sums to 1 exactly
    elif p["type"] == "categorical":
        out[name] = rng.choice(p["choices"])
    elif p["type"] == "int":
        out[name] = min(p["high"], max(p["low"], out[name] + rng.choice([-1, 1])))
    else:
        step = 0.2 * (p["high"] - p["low"])
        out[name] = min(p["high"], max(p["low"], out[name] + rng.choice([-step, step])))
    return out


def run_agent(
    cli: Cli, name: str, config: dict[str, Any], backend: Any, *, ideas: int, seed: int
) -> dict[str, Any]:
    """Drives study ``name`` to its end; returns what the agent did (its own log)."""
    from searchlab.config import validate_study
    from searchlab.execution import candidate_seed

    rng = random.Random(seed)
    study_config = validate_study(config, source="agent")
    artefacts: dict[int, Any] = {}
    mean_dev: dict[int, float] = {}
    recipes: dict[int, dict[str, Any]] = {}
    log: dict[str, list[Any]] = {"enqueued": [], "asked": [], "told_external": []}
    while True:
        if mean_dev:  # the agent's ideas: one knob away from its best candidate
            best = max(mean_dev, key=mean_dev.__getitem__)
            for _ in range(ideas):
                idea = mutate(recipes[best], config["space"], rng)
                out = cli(
                    "study",
                    "enqueue",
                    name,
                    "--recipe",
                    "-",
                    "--source",
                    "agent",
                    stdin=json.dumps(idea),
                )
                log["enqueued"].append(out["candidate"])
        while True:
            out = cli("study", "ask", name, "--count", "4")
            if out["finished"]:
                return log
            if not out["candidates"]:
                break
            for c in out["candidates"]:
                number = c["number"]
                log["asked"].append(number)
                art = backend.train(
                    c["recipe"], candidate=number, seed=candidate_seed(study_config, number)
                )
                artefacts[number], recipes[number] = art, c["recipe"]
                dev = {d: list(v) for d, v in backend.evaluate(art).items()}  # [accuracy, items]
                mean_dev[number] = sum(v[0] for v in dev.values()) / len(dev)
                cli("study", "tell", name, str(number), "--dev", "-", stdin=json.dumps(dev))
        plan = cli("study", "plan", name)
        for s in plan["submissions"]:
            scores = backend.submit_external(artefacts[s["number"]], submission=s["submission"])
            cli(
                "study",
                "tell-external",
                name,
                str(s["number"]),
                "--external",
                "-",
                stdin=json.dumps(scores),
            )
            log["told_external"].append(s["number"])
        if plan["round"] is None or cli("study", "status", name)["finished"]:
            return log
