"""After a switch, what loses external score: the objective, the model or the acquisition?

    python benchmarks/switch_diagnosis.py sqlite:///main-0.db [sqlite:///main-1.db ...] \
        [--study goodhart-sim] [--form icm|autoregressive] [--decoupled DOMAIN] [--json]

For each stored study on the simulated back end (which knows the truth), at its end:

1. **The objective.** The acquisition's objective with the study's final modes and dev penalty,

       g(x) = sum_d w_d c_d(x),   c_d = dev_d                           (proxy mode),
                                  c_d = ext_d - lambda (dev_d - ext_d)  (decoupled),

   (:mod:`searchlab.acquisition`), maximised over the **true** surface (hack unlocked)
   (:meth:`searchlab.simulation.ResponseSurface.maximise`). The external regret of that maximiser
   says what the objective would give with a perfect model and a perfect optimiser.
2. **The model.** Each domain's surrogate (the study's form, or ``--form``; seeded as the engine
   seeds it) refitted on everything the study saw: every candidate's dev, every submission's
   external. ``g``'s posterior mean (``model_g``) next to its true value (``true_g``) at: the
   external optimum; the best-dev candidate; that candidate with ``template_share`` 0 (the
   hack removed, its data kept); the candidate after the first switch that the model rates
   highest; and at each, every decoupled domain's posterior external (mean, sd) against its
   truth. Where the model rates that candidate above the optimum and the truth does not, the
   model is what misleads the acquisition; where the model rates the optimum higher, the
   acquisition failed to find (or to try) what its own model prefers.
3. **The proposals.** Median data share and template share of each weak domain over the
   candidates of the rounds after the one whose submission first alarmed, and at the optimum.

The end-state refit is not the model any round had (the engine fits each round, warm-started);
it is the best the model could say with all the study's data, so a model error here is not an
artefact of an early round.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import statistics
import sys
from typing import Any, NoReturn

import numpy as np


def _fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2 (bad input), as the CLI does."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def diagnose(
    url: str, study: str, form: str | None, assume: list[str] | None = None
) -> dict[str, Any]:
    """The three parts of the module docstring for one stored study.

    The decoupled domains are those decoupled at the study's end, else those whose alarm a
    ``policy.switch: false`` study recorded and ignored, or ``assume`` (from the first round
    after the warm-up), so a dev-only study can be asked what its model would have said after
    a switch. "After the switch" means the rounds after the one whose submission alarmed: the
    rest of that round was proposed in proxy mode.
    """
    from searchlab.acquisition import decoupled_coefficients, objective_matrix
    from searchlab.backends import SimulatedBackend, backend_for
    from searchlab.model_accuracy import surrogate_for
    from searchlab.readmodel import read
    from searchlab.space import SearchSpace
    from searchlab.store import Mode, Storage
    from searchlab.surrogate import SurrogateForm, quiet_numerics

    view = read(Storage(url).load(study))
    config = view.config
    backend = backend_for(config)
    if not isinstance(backend, SimulatedBackend):
        _fail(
            f"{url} {study}: back end {config.backend.name!r}; only the simulated one has a truth"
        )
    surface = backend.surface
    domains = config.domain_names
    weights = np.array([view.weights[d] for d in domains])
    penalty = config.policy.dev_penalty
    alarms = [e for e in view.events if e["to_mode"] == Mode.DECOUPLED]
    if assume:
        for d in assume:
            if d not in domains:
                _fail(f"{url} {study}: --decoupled {d!r} is not one of the study's domains")
        decoupled = list(dict.fromkeys(assume))
        first_switch, switch_round = None, config.policy.warmup_rounds - 1
    else:
        decoupled = [d for d in domains if view.modes[d] == Mode.DECOUPLED] or list(
            dict.fromkeys(e["domain"] for e in alarms if e["ignored"])
        )
        first = min(
            (e for e in alarms if e["domain"] in decoupled),
            key=lambda e: e["candidate"],
            default=None,
        )
        first_switch = None if first is None else first["candidate"]
        switch_round = None if first is None else first["round"]
    modes = [Mode.DECOUPLED if d in decoupled else Mode.PROXY for d in domains]
    weak = [d for d in surface.config.weak_domains if d in domains]
    opt_value, opt_recipe = surface.optimum()
    on_ext, on_dev = decoupled_coefficients(penalty)

    def true_scores(dev: np.ndarray, ext: np.ndarray | None) -> np.ndarray:
        # dev, ext: n x K true accuracies in the surface's domain order -> n values of g.
        assert ext is not None
        total = np.zeros(dev.shape[0])
        for k, d in enumerate(surface.domains):
            if d in decoupled:
                total += view.weights[d] * (on_ext * ext[:, k] + on_dev * dev[:, k])
            elif d in domains:
                total += view.weights[d] * dev[:, k]
        return total

    def true_g(recipe: dict[str, Any]) -> float:
        dev, ext = surface.true_dev(recipe), surface.true_external(recipe)
        row_d = np.array([[dev[d] for d in surface.domains]])  # 1 x K
        row_e = np.array([[ext[d] for d in surface.domains]])
        return float(true_scores(row_d, row_e)[0])

    _, g_recipe = surface.maximise(true_scores)
    out: dict[str, Any] = {
        "study": study,
        "storage": url,
        "decoupled": decoupled,
        "objective": {
            "regret_of_its_maximiser": round(opt_value - surface.objective(g_recipe), 4),
            "share": {d: round(g_recipe[f"mixture.{d}"], 3) for d in weak},
            "template_share": round(g_recipe["template_share"], 3),
        },
        "optimum": {
            "share": {d: round(opt_recipe[f"mixture.{d}"], 3) for d in weak},
            "template_share": round(opt_recipe["template_share"], 3),
        },
    }
    if not decoupled:
        out["model"] = None  # nothing was switched: the objective is the proxy's
        return out

    space = SearchSpace(config.space)
    done = list(view.complete.values())
    if not done:
        _fail(f"{url} {study}: no completed candidate to fit a model on")
    index = {c.number: i for i, c in enumerate(done)}
    pairs = {p["candidate"]: p for p in view.pairs if p["candidate"] in index}
    shown = sorted(pairs, key=lambda n: pairs[n]["submission"])
    x = np.array([space.encode(c.recipe) for c in done])
    surrogates = []
    with quiet_numerics():
        for d in domains:
            s = surrogate_for(
                config, space, d, SurrogateForm(form) if form else config.policy.surrogate
            )
            s.fit(
                x,
                np.array([c.dev[d] for c in done]),
                x[[index[n] for n in shown]],
                np.array([pairs[n]["scores"][d] for n in shown]),
            )
            surrogates.append(s)
    for d in decoupled:
        if not surrogates[domains.index(d)].two_task:
            # The acquisition would then score d by dev (objective_matrix), the truth by
            # external: the two columns would not be the same objective.
            _fail(f"{url} {study}: {d!r} has fewer than two external scores: no external model")
    matrix = objective_matrix(surrogates, modes, penalty)  # the acquisition's own columns

    def posterior(recipes: list[dict[str, Any]]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """``g``'s posterior mean at ``recipes``, and each domain's prediction there."""
        encoded = np.array([space.encode(r) for r in recipes])
        predicted = [s.predict(encoded) for s in surrogates]
        columns = []
        for s, p in zip(surrogates, predicted, strict=True):
            columns += [p["dev_mean"], p["ext_mean"]] if s.two_task else [p["dev_mean"]]
        return (np.stack(columns, axis=1) @ matrix) @ weights, predicted

    after = [c for c in done if c.round > switch_round]
    best_dev = max(done, key=lambda c: sum(view.weights[d] * c.dev[d] for d in domains))
    unhacked = {**best_dev.recipe, "template_share": 0.0}
    points = {"optimum": opt_recipe, "best_dev": best_dev.recipe, "best_dev_unhacked": unhacked}
    if after:
        rated, _ = posterior([c.recipe for c in after])
        points["after_switch_model_best"] = after[int(np.argmax(rated))].recipe
    values, predicted = posterior(list(points.values()))
    ext_of = {d: predicted[domains.index(d)] for d in decoupled}
    out["first_switch"] = first_switch
    out["switch_round"] = switch_round
    out["model"] = {
        name: {
            "model_g": round(float(v), 4),
            "true_g": round(true_g(r), 4),
            "share": {d: round(r[f"mixture.{d}"], 3) for d in weak},
            "template_share": round(r["template_share"], 3),
            # The decoupled domains' external: posterior mean and sd against the truth.
            "external": {
                d: {
                    "mean": round(float(p["ext_mean"][i]), 3),
                    "sd": round(float(p["ext_sd"][i]), 3),
                    "true": round(surface.true_external(r)[d], 3),
                }
                for d, p in ext_of.items()
            },
        }
        for i, ((name, r), v) in enumerate(zip(points.items(), values, strict=True))
    }
    out["after_switch"] = {
        "candidates": len(after),
        "median_share": {
            d: round(statistics.median(c.recipe[f"mixture.{d}"] for c in after), 3) for d in weak
        }
        if after
        else {},
        "median_template_share": round(
            statistics.median(c.recipe["template_share"] for c in after), 3
        )
        if after
        else None,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storage", nargs="+", help="Optuna storage URL of a stored study")
    parser.add_argument("--study", default="goodhart-sim", help="study name in each storage")
    parser.add_argument("--form", choices=["icm", "autoregressive"], default=None)
    parser.add_argument(
        "--decoupled", action="append", help="take this domain as decoupled (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    args = parser.parse_args()

    from searchlab.errors import SearchlabError

    for url in args.storage:
        try:
            row = diagnose(url, args.study, args.form, args.decoupled)
        except SearchlabError as exc:
            _fail(f"{url}: {exc}")
        if args.json:
            print(json.dumps(row), flush=True)
            continue
        o = row["objective"]
        print(
            f"{url} {args.study}: decoupled {row['decoupled'] or 'none'}; the objective's own "
            f"maximiser: regret {o['regret_of_its_maximiser']:.4f}, share {o['share']}, "
            f"template share {o['template_share']}"
        )
        for name, m in (row["model"] or {}).items():
            print(
                f"  {name:24s} model g {m['model_g']:.4f}  true g {m['true_g']:.4f}  "
                f"share {m['share']}  template share {m['template_share']}"
            )


if __name__ == "__main__":
    main()
