"""Would another probe rule have given the validity test more evidence?

    python benchmarks/probe_designs.py sqlite:///corpus.db [--hinge-form linear]

A counterfactual on stored alternative corpus studies (`searchlab validity corpus`), candidates
held as the engine proposed them: every submission but the probes is kept, and the probe slot of
each round after the warm-up goes instead to a candidate, among those trained by then and not
yet submitted, chosen by one of two rules:

- ``c-optimal``: the one that most reduces ``sum over domains and knots of log v`` (``v`` the
  variance factor of ``delta`` in the test's hinge): a design for the tested contrast that reads
  dev only, as the engine's record probe does.
- ``adaptive``: the one that most raises ``sum over domains of max over knots of
  min(delta_hat, 0)^2 / (sigma_hat^2 v)``, the plug-in expected squared t of the alarm test after
  it, from the hinge fitted to the pairs so far (a predictable design: it reads past pairs only,
  so the e-process stays valid under the null).

External scores of counterfactual pairs are drawn from the simulated surface as a submission of
that candidate's artefact would be. Dev is the surface's noise-free dev, not the dev-only GP
mean the engine would have: an approximation. Printed per weak domain: the noncentrality
``lambda`` (``searchlab.calibration.evidence_ceiling``) of the engine's pairs and of each rule's.
Changing the probe would also change later proposals (the two-task GP sees other external
scores); this holds them fixed, so it measures the design alone.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np


def _log_v(x: np.ndarray, knots: list[float], form: str, kappa: float) -> float:
    from searchlab.validity import hinge_design

    total = 0.0
    for k in knots:
        w, _ = hinge_design(x, x, k, form, kappa)
        gram = w.T @ w + 1e-6 * np.eye(w.shape[1])  # a knot nothing lies above: v large, finite
        total += math.log(np.linalg.inv(gram)[-1, -1])
    return total


def _alarm_fits(
    x: np.ndarray, y: np.ndarray, knots: list[float], form: str, kappa: float
) -> list[tuple[float, float, float]]:
    """``(knot, delta_hat, sigma_hat^2)`` of the hinge fitted to the pairs so far, per knot
    with at least 3 pairs above it."""
    from searchlab.validity import _hinge_fit

    fits = []
    for k in knots:
        fit = _hinge_fit(x, y, k, form, kappa) if np.count_nonzero(x > k) >= 3 else None
        if fit is not None:
            fits.append((k, fit[0], fit[3] / fit[4]))
    return fits


def _expected_t2(
    fits: list[tuple[float, float, float]], x: np.ndarray, x_new: float, form: str, kappa: float
) -> float:
    """Plug-in expected squared t of ``delta`` (alarm side) at the best knot, after adding a
    pair at ``x_new``: ``min(delta_hat, 0)^2 / (sigma_hat^2 v_after)`` from ``fits``."""
    from searchlab.validity import hinge_design

    best = 0.0
    for k, d_hat, s2 in fits:
        w, _ = hinge_design(np.append(x, x_new), np.append(x, x_new), k, form, kappa)
        v_after = float(np.linalg.inv(w.T @ w)[-1, -1])
        best = max(best, min(d_hat, 0.0) ** 2 / (s2 * v_after))
    return best


def counterfactual(url: str, hinge_form: str, rule: str) -> list[tuple[str, str, float, float]]:
    from searchlab.store import Storage

    storage = Storage(url)
    rows = []
    for name in storage.names():
        record = storage.load(name)
        if name.startswith("power-corpus-") and record.finished:
            rows += _one_study(name, record, hinge_form, rule)
    return rows


def _one_study(
    name: str, record: Any, hinge_form: str, rule: str
) -> list[tuple[str, str, float, float]]:
    from functools import partial

    from searchlab.analysis import _settings
    from searchlab.backends import backend_for
    from searchlab.calibration import _noncentrality, _residual_sd, _streams
    from searchlab.config import stored_config
    from searchlab.readmodel import read
    from searchlab.validity import ValidityTest

    rows = []
    config = stored_config(record.config_data)
    surface = backend_for(config).surface
    view = read(record)
    _, st, _ = _settings(view, {"hinge_form": hinge_form})
    streams = _streams(view)
    numbers = sorted(view.complete)
    index = {n: i for i, n in enumerate(numbers)}
    trained = np.array([view.complete[n].round for n in numbers])
    x, knots, scale = {}, {}, {}
    for d in config.domain_names:
        test = ValidityTest(settings=st)
        test.fix_knots(streams[d]["warm"])
        scale[d] = float(test.scale)
        knots[d] = [k / scale[d] for k in test.knots]
        dev = [surface.true_dev(view.complete[n].recipe, candidate=n)[d] for n in numbers]
        x[d] = np.array(dev) / scale[d]

    y: dict[int, dict[str, float]] = {}  # external of each paired candidate
    for s in view.pairs:
        if s.get("test_dev"):
            y[index[s["candidate"]]] = {d: float(v) for d, v in s["scores"].items()}

    def external(i: int) -> dict[str, float]:
        if i not in y:  # a counterfactual submission of that candidate's artefact
            c = view.complete[numbers[i]]
            seed = int((c.artefact or {}).get("seed", config.seed + numbers[i]))
            scores = surface.observe_external(
                c.recipe, run_seed=seed, submission=1000 + i, candidate=numbers[i]
            )
            y[i] = scores["public"]
        return y[i]

    def gains(chosen: list[int]) -> Any:
        """The rule's gain of each candidate added to ``chosen``, as a function of it; what
        does not depend on the candidate is computed once."""
        form, kappa = st.hinge_form, st.tracking
        if rule == "c-optimal":
            base = {d: _log_v(x[d][chosen], knots[d], form, kappa) for d in x}
            return lambda i: sum(
                base[d] - _log_v(x[d][[*chosen, i]], knots[d], form, kappa) for d in x
            )
        ys = [external(j) for j in chosen]
        fits = {
            d: _alarm_fits(x[d][chosen], np.array([v[d] for v in ys]), knots[d], form, kappa)
            for d in x
        }
        return lambda i: sum(
            _expected_t2(fits[d], x[d][chosen], float(x[d][i]), form, kappa) for d in x
        )

    pairs = [s for s in view.pairs if s.get("test_dev")]
    chosen: list[int] = []
    for r in sorted({int(s["round"]) for s in pairs}):
        slots = 0
        for s in (s for s in pairs if int(s["round"]) == r):
            probe = str(s.get("reason", "")).startswith("validity probe")
            if (r == 0 or not probe) and index[s["candidate"]] not in chosen:
                chosen.append(index[s["candidate"]])
            else:
                slots += 1
        for _ in range(slots):
            open_ = [i for i in range(len(numbers)) if trained[i] <= r and i not in chosen]
            if open_:
                chosen.append(max(open_, key=gains(list(chosen))))
    engine = np.array([[index[s["candidate"]] for s in pairs]])
    for d in config.backend.options.get("weak_domains", []):
        mu = np.array(
            [surface.true_external(view.complete[n].recipe, candidate=n)[d] for n in numbers]
        )
        sigma = _residual_sd(streams[d]["x"] / scale[d], streams[d]["y"], knots[d], st, st.tracking)
        lam = partial(_noncentrality, x[d], mu, sigma=sigma, settings=st, kappa=st.tracking)
        ours = max(float(lam(engine, k)[0]) for k in knots[d])
        theirs = max(float(lam(np.array([chosen]), k)[0]) for k in knots[d])
        rows.append((name, d, ours, theirs))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storage")
    parser.add_argument("--hinge-form", default="linear", choices=["linear", "quad"])
    args = parser.parse_args()
    rows = {
        rule: counterfactual(args.storage, args.hinge_form, rule)
        for rule in ("c-optimal", "adaptive")
    }
    for a, b in zip(rows["c-optimal"], rows["adaptive"], strict=True):
        print(
            f"{a[0]:34s} {a[1]:12s} lambda: engine {a[2]:6.2f}   c-optimal {a[3]:6.2f}   "
            f"adaptive {b[3]:6.2f}"
        )


if __name__ == "__main__":
    main()
