"""A finished searchlab study written straight into storage, in well under a second.

The engine with its Gaussian processes takes half a minute even on a tiny study. The report,
dashboard and re-analysis tests need a *stored* study whose weak domain switched, not the
engine: this module writes one in the engine's storage layout (trials with per-domain dev,
``searchlab.external.<n>``, the audit trail, monitors, knots, recommendation), driving the real
:class:`ValidityTest` and :class:`DomainMonitor` the way the engine does. The de-noised dev is
the simulated stream's (a climb in dev; on ``equations`` external peaks and then falls, elsewhere it
rises linearly); observed dev adds binomial-sized noise.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import optuna

from searchlab.config import validate_study
from searchlab.simulation import canonical_space
from searchlab.space import SearchSpace
from searchlab.store import AuditKind, Phase, Storage, StudyRecord
from searchlab.validity import DetectorSettings, DomainMonitor, ValidityTest

DOMAINS = ("cipher", "gravity", "equations")
WEAK = "equations"


def study_config(name: str = "built", *, rounds: int = 6, candidates: int = 4) -> Any:
    return validate_study(
        {
            "name": name,
            "seed": 3,
            "domains": [{"name": d} for d in DOMAINS],
            "space": canonical_space(DOMAINS),
            "backend": {"name": "simulated", "options": {"weak_domains": [WEAK], "b_g": 1.5}},
            "rounds": {"candidates": candidates, "count": rounds},
            "external": {"per_round": 3, "total": 3 * rounds},
            "policy": {"warmup_rounds": 1},
        },
        source="studybuild",
    )


def build_study(
    url: str,
    name: str = "built",
    *,
    rounds: int = 6,
    candidates: int = 4,
    seed: int = 1,
    store_check_dev: bool = False,
) -> StudyRecord:
    """Writes a finished study; ``store_check_dev`` also stores each check's de-noised dev."""
    config = study_config(name, rounds=rounds, candidates=candidates)
    record = Storage(url, create=True).create(config)
    space = SearchSpace(config.space)
    dists = space.distributions()
    n = rounds * candidates
    k = candidates
    rng_noise = np.random.default_rng(seed + 1000)
    rng = np.random.default_rng(seed)
    # De-noised dev: random over the warm-up round, then climbing as an optimiser would.
    climb = np.linspace(0.0, 1.0, n - k)
    denoised, external = {}, {}
    for d in DOMAINS:
        warm = rng.uniform(0.35, 0.6, k)
        dev = np.concatenate([warm, 0.45 + 0.4 * climb + rng.normal(0, 0.03, n - k)])
        if d == WEAK:  # external rises with dev up to 0.62, then falls steeply
            link = 0.3 + 0.8 * (np.minimum(dev, 0.62) - 0.4) - 1.2 * np.maximum(dev - 0.62, 0)
        else:
            link = 0.2 + 0.6 * dev
        denoised[d] = dev
        external[d] = np.round(np.clip(link + rng.normal(0, 0.01, n), 0.01, 1.0), 2)
    observed = {d: np.clip(denoised[d] + rng_noise.normal(0, 0.02, n), 0.0, 1.0) for d in DOMAINS}
    with warnings.catch_warnings():  # n need not be a power of 2 here
        warnings.simplefilter("ignore", UserWarning)
        recipes = space.quasi_random(n, seed=seed)
    settings = DetectorSettings(alpha=config.policy.alpha, n_domains=len(DOMAINS))
    tests = {d: ValidityTest(settings=settings) for d in DOMAINS}
    monitors = {d: DomainMonitor(domain=d) for d in DOMAINS}
    order: list[int] = []
    used = 0
    total = config.external.total
    for r in range(rounds):
        modes = {d: monitors[d].mode for d in DOMAINS}
        method = "sobol" if r == 0 else "qLogNEI"
        numbers = list(range(r * k, (r + 1) * k))
        for j in numbers:
            trial = optuna.trial.create_trial(
                params=recipes[j],
                distributions=dists,
                values=[float(observed[d][j]) for d in DOMAINS],
                user_attrs={
                    "searchlab.round": r,
                    "searchlab.proposal": {"method": method, "modes": modes},
                    "searchlab.dev_n": {d: 300 for d in DOMAINS},
                    "searchlab.artefact": {"candidate": j},
                },
            )
            record.study.add_trial(trial)
        record.audit(AuditKind.PROPOSAL, round=r, method=method, count=k, modes=modes)
        if r == 0:
            warm = {d: denoised[d][numbers].tolist() for d in DOMAINS}
            for d in DOMAINS:
                tests[d].fix_knots(np.asarray(warm[d]))
            record.put_warmup_dev(warm)
            record.audit(
                AuditKind.KNOTS_FIXED, round=0, knots={d: list(tests[d].knots) for d in DOMAINS}
            )
        mean_dev = [np.mean([observed[d][j] for d in DOMAINS]) for j in numbers]
        chosen = [numbers[i] for i in np.argsort(mean_dev)[::-1][: config.external.per_round]]
        for j in chosen:
            if used >= total:
                break
            scores = {d: float(external[d][j]) for d in DOMAINS}
            record.put_submission(
                j,
                {
                    "round": r,
                    "submission": used,
                    "state": "done",
                    "reason": "test",
                    "scores": scores,
                },
            )
            used += 1
            record.audit(
                AuditKind.SUBMISSION,
                round=r,
                candidate=j,
                submission=used - 1,
                reason="test",
                scores=scores,
                budget={"used": used, "left": total - used},
            )
            order.append(j)
            # The engine's GP mean moves a little with every fit: emulate that revision.
            revised = {
                d: denoised[d][order] + rng_noise.normal(0, 0.002, len(order)) for d in DOMAINS
            }
            checks = {}
            for d in DOMAINS:
                before = monitors[d].mode
                ext = external[d][order]
                result, event = monitors[d].check(tests[d], revised[d], ext)
                checks[d] = {"mode": monitors[d].mode, **result.to_dict()}
                if store_check_dev:
                    checks[d]["dev"] = revised[d].tolist()
                if event is not None:
                    record.audit(
                        AuditKind.MODE_SWITCH,
                        round=r,
                        domain=d,
                        candidate=j,
                        from_mode=before,
                        to_mode=monitors[d].mode,
                        evidence=result.to_dict(),
                    )
            record.audit(AuditKind.VALIDITY_CHECK, round=r, candidate=j, domains=checks)
        for d in DOMAINS:
            record.put_monitor_state(d, monitors[d].to_dict())
        record.set_phase(r, Phase.DONE)
        record.audit(
            AuditKind.ROUND_DONE,
            round=r,
            candidates=(r + 1) * k,
            modes={d: monitors[d].mode for d in DOMAINS},
            budget_left=total - used,
        )
    best = max(order, key=lambda j: np.mean([external[d][j] for d in DOMAINS]))
    best_dev = max(range(n), key=lambda j: np.mean([observed[d][j] for d in DOMAINS]))
    result = {
        "recommendation": {
            "candidate": int(best),
            "recipe": recipes[best],
            "modelled_external": float(np.mean([external[d][best] for d in DOMAINS])),
            "modelled_external_sd": 0.01,
            "basis": "modelled external",
        },
        "best_dev_candidate": {
            "candidate": int(best_dev),
            "mean_dev": float(np.mean([observed[d][best_dev] for d in DOMAINS])),
        },
    }
    record.put_recommendation(result)
    record.audit(AuditKind.RECOMMENDATION, round=rounds - 1, **result)
    record.mark_finished()
    return record
