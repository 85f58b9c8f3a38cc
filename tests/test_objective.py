"""The objective section: weighted or Pareto, per-domain floors, the baseline, the front.

The engine tests run small real studies on the simulated back end (real GPs, real BoTorch
acquisitions, real Optuna storage); what they assert holds whatever the trajectory: the
baseline's place, the floors' thresholds, the front's definition and that no candidate that
misses a floor is recommended as meeting it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_cli, simulated_study, six_domain_surrogates, sqlite_url, write_yaml

from searchlab.backends import backend_for
from searchlab.config import validate_study
from searchlab.engine import Engine
from searchlab.errors import StudyFileError
from searchlab.export import export
from searchlab.objective import (
    FloorTask,
    ObjectiveType,
    ResolvedFloor,
    floor_shortfall,
    front_mask,
    hypervolume,
    resolve_floors,
)
from searchlab.policy import recommend
from searchlab.readmodel import read, status
from searchlab.report import write_report
from searchlab.store import Storage

DOMAINS = ["cipher", "gravity", "equations"]
BASELINE = {
    "mixture.cipher": 0.34,
    "mixture.gravity": 0.33,
    "mixture.equations": 0.33,
    "learning_rate": 1e-4,
    "epochs": 3,
    "lora_rank": 16,
    "template_share": 0.0,
    "lora_dropout": 0.1,
}


def _study(seed: int = 0, **objective: Any) -> dict[str, Any]:
    return simulated_study(
        "mo",
        seed,
        DOMAINS,
        options={"variant": "goodhart", "weak_domains": ["equations"]},
        rounds={"candidates": 4, "count": 3},
        external={"per_round": 2, "total": 6},
        policy={"warmup_rounds": 1, "switch": False},
        objective=objective,
    )


def _pareto_with_floors(seed: int = 0) -> dict[str, Any]:
    return _study(
        seed,
        type="pareto",
        baseline=dict(BASELINE),
        floors=[
            {"domain": "gravity", "below_baseline": 0.02},
            {"domain": "cipher", "task": "dev", "at_least": 0.2},
        ],
    )


def _run(url: str, data: dict[str, Any]) -> Any:
    config = validate_study(data, source="test")
    record = Storage(url, create=True).create(config)
    Engine(record=record, config=config, backend=backend_for(config)).run()
    return record


# -- bad input ----------------------------------------------------------------------------------


def _with(objective: dict[str, Any]) -> dict[str, Any]:
    return _study(**objective)


def _floor(**floor: Any) -> dict[str, Any]:
    return {"floors": [{"domain": "cipher", **floor}]}


F0 = "objective.floors[0]"


@pytest.mark.parametrize(
    ("objective", "field", "words"),
    [
        (_floor(domain="physics", at_least=0.3), f"{F0}.domain", "unknown domain"),
        (_floor(at_least=1.5), f"{F0}.at_least", "less than or equal to 1"),
        (_floor(at_least=-0.1), f"{F0}.at_least", "greater than or equal to 0"),
        (_floor(below_baseline=0.1), f"{F0}.below_baseline", "needs objective.baseline"),
        (_floor(at_least=0.1, below_baseline=0.1), F0, "exactly one of"),
        (_floor(at_least=0.1, task="vibes"), f"{F0}.task", "'external' or 'dev'"),
        ({"baseline": {**BASELINE, "epochs": 99}}, "objective.baseline", "'epochs'"),
        ({"baseline": {**BASELINE, "warmth": 1}}, "objective.baseline", "'warmth' is not in"),
        ({"type": "lexicographic"}, "objective.type", "'weighted' or 'pareto'"),
        ({"colour": "blue"}, "objective.colour", "unknown key"),
    ],
)
def test_a_bad_objective_names_its_field(objective: dict, field: str, words: str) -> None:
    with pytest.raises(StudyFileError) as err:
        validate_study(_with(objective), source="f.yaml")
    line = str(err.value)
    assert line.startswith(f"f.yaml: {field}: ") and words in line and "\n" not in line


def test_pareto_needs_two_domains() -> None:
    data = simulated_study(
        "one", 0, ["cipher"], options={}, rounds={"candidates": 4, "count": 3},
        external={"per_round": 2, "total": 6}, policy={"switch": False},
        objective={"type": "pareto"},
    )  # fmt: skip
    del data["space"]["mixture"]  # a mixture needs two domains
    with pytest.raises(StudyFileError, match=r"objective\.type: pareto needs at least two"):
        validate_study(data, source="f.yaml")


def test_a_bad_objective_on_the_command_line_stores_nothing(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    good = _pareto_with_floors()
    run = run_cli("study", "create", write_yaml(tmp_path / "ok.yaml", good), "--storage",
                  sqlite_url(db), "-q", "--name", "kept")  # fmt: skip
    assert run.returncode == 0, run.stderr
    before = db.read_bytes()
    bad = copy.deepcopy(good)
    bad["objective"]["floors"][0]["domain"] = "physics"
    run = run_cli("study", "create", write_yaml(tmp_path / "bad.yaml", bad), "--storage",
                  sqlite_url(db), "--name", "other")  # fmt: skip
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "objective.floors[0].domain" in lines[0], run.stderr
    assert db.read_bytes() == before


# -- the pieces -----------------------------------------------------------------------------------


def test_front_is_the_non_dominated_rows() -> None:
    values = np.array([[0.5, 0.5], [0.6, 0.4], [0.4, 0.4], [0.5, 0.5], [0.2, 0.9]])
    assert front_mask(values).tolist() == [True, True, False, True, True]
    # A box: one point at (1, 1) above (0, 0) dominates 1; a dominated extra adds nothing.
    assert hypervolume(np.array([[1.0, 1.0], [0.5, 0.5]]), np.zeros(2)) == pytest.approx(1.0)
    assert hypervolume(np.array([[1.0, 0.5], [0.5, 1.0]]), np.zeros(2)) == pytest.approx(0.75)
    assert hypervolume(np.array([[-1.0, 2.0]]), np.zeros(2)) == 0.0


def test_floors_resolve_from_the_baseline_and_wait_for_its_scores() -> None:
    config = validate_study(_pareto_with_floors(), source="t")
    floors = config.objective.floors
    waiting = resolve_floors(floors, baseline=0, baseline_dev=None, baseline_external=None)
    assert waiting[0].threshold is None and "no external score yet" in waiting[0].basis
    assert waiting[1].threshold == 0.2  # at_least needs nothing measured
    known = resolve_floors(
        floors,
        baseline=0,
        baseline_dev={"cipher": 0.5, "gravity": 0.6, "equations": 0.3},
        baseline_external={"cipher": 0.4, "gravity": 0.7, "equations": 0.2},
    )
    assert known[0].threshold == pytest.approx(0.68) and known[0].task == FloorTask.EXTERNAL


def test_shortfall_uses_the_lower_bound_and_dev_without_an_external_model() -> None:
    nan = np.full(3, np.nan)
    predictions = {
        "cipher": {
            "dev_mean": np.array([0.5, 0.5, 0.5]),
            "dev_sd": np.zeros(3),
            "ext_mean": np.array([0.70, 0.70, 0.60]),
            "ext_sd": np.array([0.0, 0.1, 0.0]),
        },
        "gravity": {"dev_mean": np.array([0.3, 0.5, 0.5]), "dev_sd": np.zeros(3),
                    "ext_mean": nan, "ext_sd": nan},
    }  # fmt: skip
    floors = [
        ResolvedFloor("cipher", FloorTask.EXTERNAL, 0.65, "t"),
        ResolvedFloor("gravity", FloorTask.EXTERNAL, 0.4, "t"),  # no external model: dev
        ResolvedFloor("gravity", FloorTask.DEV, None, "waiting"),  # constrains nothing yet
    ]
    short = floor_shortfall(floors, predictions, confidence=0.9)
    # 0: gravity's dev 0.3 misses 0.4; 1: cipher's lower bound 0.70 - 1.28 * 0.1 misses 0.65.
    assert short[0] == pytest.approx(0.1)
    assert short[1] == pytest.approx(0.65 - (0.70 - 1.2816 * 0.1), abs=1e-3)
    assert short[2] == pytest.approx(0.05)


def test_a_candidate_missing_a_floor_is_never_recommended_as_meeting_it() -> None:
    numbers, values = [4, 5, 6], np.array([0.9, 0.7, 0.6])
    n, _, basis = recommend(numbers, values, shortfall=np.array([0.1, 0.0, 0.0]))
    assert n == 5 and "meet the floors" in basis
    n, _, basis = recommend(numbers, values, shortfall=np.array([0.3, 0.2, 0.1]))
    assert n == 6 and basis.startswith("no candidate meets the floors")
    # The observed-external fallback (no plausible model) keeps to the floors too.
    n, _, _ = recommend(
        numbers,
        values,
        implausible=[["cipher"]] * 3,
        observed_external={4: 0.9, 5: 0.5},
        shortfall=np.array([0.1, 0.0, 0.0]),
    )
    assert n == 5


def test_pareto_and_constrained_batches_are_proposed(tmp_path: Path) -> None:
    from searchlab.acquisition import floor_outputs, propose_batch
    from searchlab.simulation import DOMAINS as SIX
    from searchlab.store import Mode

    h, space, surrogates = six_domain_surrogates(24)
    floors = [ResolvedFloor(SIX[1], FloorTask.EXTERNAL, 0.5, "t"),
              ResolvedFloor(SIX[2], FloorTask.DEV, 0.4, "t")]  # fmt: skip
    # Outputs are stacked per domain as (dev, external): domain 1's external is output 3.
    assert floor_outputs(surrogates, SIX, floors) == [(3, 0.5), (4, 0.4)]
    for objective in ObjectiveType:
        batch = propose_batch(
            surrogates=surrogates,
            weights=[1 / 6] * 6,
            modes=[Mode.PROXY] * 5 + [Mode.DECOUPLED],
            dev_penalty=0.5,
            x_baseline=h["x"],
            x_pending=None,
            q=3,
            discrete_dims=space.discrete_dims(),
            seed=1,
            objective=objective,
            domains=SIX,
            floors=floors,
        )
        assert batch.x.shape == (3, space.dim)
        assert ((batch.x >= 0) & (batch.x <= 1)).all()
        assert np.isfinite(batch.acquisition).all()
        assert len({tuple(np.round(x, 6)) for x in batch.x}) == 3


# -- a whole study --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_a_pareto_study_with_floors(tmp_path: Path, seed: int) -> None:
    record = _run(sqlite_url(tmp_path / "s.db"), _pareto_with_floors(seed))
    v = read(record)
    first = v.candidates[0]
    # The baseline is trained first and submitted in the first round.
    assert first.recipe == BASELINE and first.proposal["method"] == "baseline"
    assert v.submissions[0]["candidate"] == first.number
    assert "baseline" in v.submissions[0]["reason"]
    methods = {c.proposal["method"] for c in v.candidates if c.round > 0}
    assert methods == {"qLogNParEGO"}
    s = status(record)
    assert s["objective"]["type"] == "pareto"
    gravity, cipher = s["objective"]["floors"]
    baseline_external = v.submissions[0]["scores"]["gravity"]
    assert gravity["threshold"] == pytest.approx(max(0.0, baseline_external - 0.02))
    assert cipher == {"domain": "cipher", "task": "dev", "threshold": 0.2, "basis": "at least 0.2"}
    front = s["objective"]["front"]
    members = [m for m in front if m["on_front"]]
    assert members
    # The front's definition: no completed candidate's modelled external beats a member in
    # every domain (members are checked against each other; the rest were left out by it).
    values = np.array([[m["modelled_external"][d] for d in DOMAINS] for m in members])
    assert front_mask(values).all()
    rec = s["recommendation"]
    assert rec["candidate"] in {m["candidate"] for m in front}
    row = next(m for m in front if m["candidate"] == rec["candidate"])
    assert row["meets_floors"] == rec["meets_floors"]
    if rec["meets_floors"]:
        assert row["modelled_external"]["gravity"] >= gravity["threshold"]
    else:
        assert rec["basis"].startswith("no candidate meets the floors")
    assert set(row["true_external"]) == set(DOMAINS)  # the simulator knows the truth


def test_the_front_is_exported_and_drawn(tmp_path: Path) -> None:
    record = _run(sqlite_url(tmp_path / "s.db"), _pareto_with_floors(2))
    export(record, "csv", tmp_path / "out")
    pareto = (tmp_path / "out" / "pareto.csv").read_text().splitlines()
    assert pareto[0].startswith("candidate,recommended,meets_floors,on_front,modelled_external.")
    assert len(pareto) - 1 == len(read(record).front)
    out = write_report(record, tmp_path / "report")
    for name in ("front.png", "front_parallel.png"):
        assert (tmp_path / "report" / name).stat().st_size > 1000
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "Pareto front by modelled external" in summary and "Floor: gravity external" in summary
    assert out is not None
    # optuna-dashboard gets the two front figures beside the four of every study.
    from searchlab.dashboard import publish
    from searchlab.figures import FIGURES, FRONT_FIGURES

    assert set(publish(record)) == set(FIGURES) | set(FRONT_FIGURES)


def test_a_weighted_study_has_no_front_and_no_front_figures(tmp_path: Path) -> None:
    from searchlab.figures import FIGURES, specs

    record = _run(sqlite_url(tmp_path / "s.db"), _study(0))
    v = read(record)
    assert v.front == [] and v.floors == []
    assert set(specs(v)) == set(FIGURES)
    assert status(record)["objective"] == {"type": "weighted", "floors": [], "front": []}
    assert "meets_floors" not in status(record)["recommendation"]


def test_bench_front_runs_every_method_at_equal_budget() -> None:
    run = run_cli("bench", "front", "--quick", "--seeds", "1", "--instance", "goodhart",
                  "--method", "searchlab-floors", "--method", "nsga2", "--json",
                  timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr
    import json

    out = json.loads(run.stdout)
    rows = {r["method"]: r for r in out["rows"]}
    assert set(rows) == {"searchlab-floors", "nsga2"}
    assert rows["searchlab-floors"]["candidates"] == rows["nsga2"]["candidates"] == 12
    assert all(r["hypervolume"] >= 0 for r in rows.values())
    assert isinstance(rows["searchlab-floors"]["meets_floor_in_truth"], bool)
    summary = {s["method"]: s for s in out["summary"]}
    assert summary["searchlab-floors"]["floor_met_in_truth"] in (0.0, 1.0)
    assert summary["nsga2"]["floor_met_in_truth"] is None
    bad = run_cli("bench", "front", "--method", "cmaes")
    assert bad.returncode == 2 and "unknown method" in bad.stderr


def test_the_caller_gets_the_baseline_first_and_a_failed_one_sets_no_floor(
    tmp_path: Path,
) -> None:
    from searchlab.backends import SimulatedBackend
    from searchlab.execution import candidate_seed
    from searchlab.loop import Study

    config = validate_study(_pareto_with_floors(5), source="test")
    backend = SimulatedBackend(
        domains=config.domain_names, weights=config.weights, seed=5, **config.backend.options
    )
    study = Study.create(config, storage=sqlite_url(tmp_path / "s.db"), publish=False)
    artefacts: dict[int, Any] = {}
    while not study.finished:
        for c in study.ask(4):
            if c.recipe == BASELINE:  # the first asked; the caller's training of it fails
                assert c.number == 0
                study.tell_failed(c.number, "out of memory")
                continue
            artefacts[c.number] = backend.train(
                c.recipe, candidate=c.number, seed=candidate_seed(config, c.number)
            )
            study.tell(c.number, dev=backend.evaluate(artefacts[c.number]), artefact={})
        for s in study.plan_submissions().submissions:
            assert s.number != 0
            scores = backend.submit_external(artefacts[s.number], submission=s.submission)
            study.tell_external(s.number, external=scores)
    floors = status(study.record)["objective"]["floors"]
    assert floors[0]["threshold"] is None and "no external score yet" in floors[0]["basis"]
    assert floors[1]["threshold"] == 0.2


def test_overhead_times_a_pareto_proposal_against_a_multi_objective_gpsampler() -> None:
    from searchlab.bench import overhead

    (row,) = overhead(candidates=(12,), repeats=1, objective=ObjectiveType.PARETO)
    assert row["candidates"] == 12
    assert all(row[k] > 0 for k in ("searchlab_s", "searchlab_cold_s", "optuna_gp_s", "ratio"))
