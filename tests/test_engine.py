"""The engine end to end on the simulated back end, in process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from searchlab.backends import load_backend
from searchlab.config import load_study_file, validate_study
from searchlab.engine import Engine
from searchlab.readmodel import status
from searchlab.simulation import canonical_space
from searchlab.store import Storage

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("cipher", "gravity", "equations")


def _config(total: int = 5, **policy):
    return validate_study(
        {
            "name": "e2e",
            "seed": 1,
            "domains": [{"name": d} for d in DOMAINS],
            "space": canonical_space(DOMAINS),
            "backend": {"name": "simulated", "options": {"weak_domains": ["equations"]}},
            "rounds": {"candidates": 4, "count": 3},
            "external": {"per_round": 2, "total": total},
            "policy": {"warmup_rounds": 1, "switch": False, **policy},
        },
        source="test",
    )


def _run(tmp_path: Path, config, modes: property | None = None) -> tuple[Engine, dict]:
    """Runs the study to its end; ``modes`` replaces the engine's (a test's forced switch)."""
    tmp_path.mkdir(exist_ok=True)
    record = Storage(f"sqlite:///{tmp_path / 's.db'}", create=True).create(config)
    backend = load_backend(
        config.backend.name,
        config.backend.options,
        domains=config.domain_names,
        weights=config.weights,
        seed=config.seed,
    )
    engine = Engine(record=record, config=config, backend=backend)
    if modes is not None:
        engine.__class__ = type("ForcedModes", (Engine,), {"modes": modes})
    engine.run()
    return engine, status(record)


def test_study_runs_and_status_has_the_contract_keys(tmp_path: Path) -> None:
    engine, s = _run(tmp_path, _config())
    assert s["finished"] and s["rounds_done"] == 3 and s["candidates"] == 12
    assert s["external_budget"] == {"used": 5, "left": 0, "total": 5}
    assert set(s["domains"]) == set(DOMAINS)
    for d in s["domains"].values():
        assert d["mode"] in ("proxy", "decoupled") and d["threshold"] > 0
    rec = s["recommendation"]
    assert {"candidate", "recipe", "modelled_external", "true_external", "regret"} <= set(rec)
    assert {"candidate", "true_external", "regret"} <= set(s["best_dev_candidate"])
    assert rec["regret"] >= -1e-9

    audit = engine.record.audit_log()
    kinds = [e["kind"] for e in audit]
    assert kinds.count("proposal") == 3 and kinds.count("round_done") == 3
    assert kinds[-1] == "recommendation"
    subs = [e for e in audit if e["kind"] == "submission"]
    assert len(subs) == 5 and len({e["candidate"] for e in subs}) == 5
    # Per-round budget respected: 2, 2, then the last 1.
    assert [sum(1 for e in subs if e["round"] == r) for r in range(3)] == [2, 2, 1]
    # The last round's one submission (no room for a probe) confirms the top of the modelled
    # external: no proposal follows it.
    assert all("last round" in e["reason"] for e in subs if e["round"] == 2)
    assert not any("last round" in e["reason"] for e in subs if e["round"] < 2)
    # Each model-based proposal records its acquisition values and the modes it used.
    model_based = [e for e in audit if e["kind"] == "proposal" and e["method"] == "qLogNEI"]
    assert len(model_based) == 2
    assert all(len(e["log_acquisition"]) == 4 and "modes" in e for e in model_based)


def test_recommendation_is_not_the_raw_dev_argmax_by_construction(tmp_path: Path) -> None:
    engine, _s = _run(tmp_path, _config())
    rec = engine.record.recommendation
    assert rec["recommendation"]["basis"].startswith("modelled external")
    # Where the model left [0, 1] or the observed range, it says so (and never alone decides).
    flagged = rec["recommendation"]["model_out_of_range"]
    assert str(rec["recommendation"]["candidate"]) not in flagged


def test_resume_of_a_finished_study_changes_nothing(tmp_path: Path) -> None:
    engine, before = _run(tmp_path, _config())
    n_audit = len(engine.record.audit_log())
    again = Engine(record=engine.record, config=engine.config, backend=engine.backend)
    again.run()
    after = status(engine.record)
    assert after["candidates"] == before["candidates"]
    assert after["external_budget"] == before["external_budget"]
    # A finished study is left as it is: not even the recommendation is recorded again.
    assert len(engine.record.audit_log()) == n_audit
    assert after["recommendation"] == before["recommendation"]


#: Seeds of the acceptance runs. One seed's trajectory is chaotic in floating point (torch's CPU
#: kernels differ between machines of one kind by instruction set), so the test asserts what
#: holds across seeds, not one run's numbers.
ACCEPTANCE_SEEDS = (0, 1, 2, 3)
#: Seeds (of the four) in which the weak domain must alarm (docs/RESULTS.md, "The main job").
ACCEPTANCE_MIN_ALARMS = 2


def _acceptance_run(seed: int, folder: str) -> dict:
    """One seed of the study file, in a worker process (module level: picklable)."""
    config = load_study_file(ROOT / "studies" / "goodhart-sim.yaml").with_overrides(seed=seed)
    return _run(Path(folder), config)[1]


@pytest.mark.slow
def test_default_goodhart_study_across_seeds(tmp_path: Path) -> None:
    """The acceptance runs of ``studies/goodhart-sim.yaml`` (two at a time; about 3 minutes on
    2 cores).

    Over the seeds: the weak domain alarms in at least ``ACCEPTANCE_MIN_ALARMS``, a healthy
    domain in none, and the recommendation's regret is, in the median, no worse than the
    best-dev candidate's. Measured (docs/RESULTS.md, "A calibrated threshold"): with the file's
    threshold 5, 4 of 4 alarms on an AVX-512 machine (seeds 0-3 of the main-job table); with the
    former 20, 3 of 4 natively and 4 of 4 with ``ATEN_CPU_CAPABILITY=default
    MKL_CBWR=COMPATIBLE``. The bound leaves two seeds of margin.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    folders = []
    for seed in ACCEPTANCE_SEEDS:
        (tmp_path / str(seed)).mkdir()
        folders.append(str(tmp_path / str(seed)))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = list(pool.map(_acceptance_run, ACCEPTANCE_SEEDS, folders))
    alarmed = [{a["domain"] for a in s["alarms"]} for s in runs]
    summary = [
        (seed, sorted(a), s["recommendation"]["regret"], s["best_dev_candidate"]["regret"])
        for seed, a, s in zip(ACCEPTANCE_SEEDS, alarmed, runs, strict=True)
    ]
    print("acceptance (seed, alarmed domains, regret, best-dev regret):", summary)  # pytest -s
    assert sum("equations" in a for a in alarmed) >= ACCEPTANCE_MIN_ALARMS, summary
    assert all(a <= {"equations"} for a in alarmed), summary
    rec = sorted(s["recommendation"]["regret"] for s in runs)
    best = sorted(s["best_dev_candidate"]["regret"] for s in runs)
    assert sum(rec[1:3]) <= sum(best[1:3]) + 0.002, summary  # medians of four


def test_after_a_switch_each_round_proposes_and_submits_a_share_probe(tmp_path: Path) -> None:
    # equations decoupled from the start (a stand-in for an alarm, so the test does not wait
    # for one): every round after the warm-up has one share probe, proposed with equations'
    # data share at least its dev-record holder's, and submitted with that reason.
    from searchlab.store import Mode

    config = _config(total=6, switch=True)
    forced = property(lambda _: [Mode.PROXY, Mode.PROXY, Mode.DECOUPLED])
    engine, _s = _run(tmp_path, config, modes=forced)
    candidates = engine.record.candidates()
    probes = [c for c in candidates if c.proposal["method"] == "share-probe"]
    assert [c.round for c in probes] == [1, 2]
    submitted = {e["candidate"]: e for e in engine.record.audit_log() if e["kind"] == "submission"}
    for c in probes:
        assert c.proposal["domain"] == "equations"
        assert c.recipe["mixture.equations"] >= c.proposal["min_share"] - 1e-6
        # Submitted as a share probe, or first as the round's record probe where the probe
        # itself set the dev record (which candidate does depends on the run).
        reason = submitted[c.number]["reason"]
        assert "share probe" in reason or reason.startswith("validity probe: dev record"), reason
        # The least share is a share some earlier candidate had.
        earlier = [e.recipe["mixture.equations"] for e in candidates if e.round < c.round]
        assert min(abs(np.array(earlier) - c.proposal["min_share"])) < 1e-9
