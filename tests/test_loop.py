"""Driving a study from the caller's loop (searchlab.loop): the engine's steps, the rules, and
two drivers at once on PostgreSQL."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import simulated_study, sqlite_url

from searchlab.backends import SimulatedBackend
from searchlab.config import validate_study
from searchlab.engine import Engine
from searchlab.errors import RecipeError, SearchlabError
from searchlab.execution import candidate_seed
from searchlab.loop import LoopError, Study
from searchlab.store import AuditKind, Storage

_DOMAINS = ["bit_manipulation", "gravity", "equations"]


def _config(seed: int, name: str = "loop") -> dict[str, Any]:
    return simulated_study(
        name,
        seed,
        _DOMAINS,
        options={"variant": "goodhart", "weak_domains": ["equations"], "b_g": 1.5},
        rounds={"candidates": 4, "count": 4},
        external={"per_round": 2, "total": 8},
        policy={"warmup_rounds": 1},
    )


def _backend(config: Any) -> SimulatedBackend:
    return SimulatedBackend(
        domains=config.domain_names,
        weights=config.weights,
        seed=config.seed,
        **config.backend.options,
    )


def drive(study: Study, backend: Any, *, count: int = 4) -> None:
    """The caller's loop: train what is asked with ``backend``, send what is planned."""
    artefacts: dict[int, Any] = {}
    while not study.finished:
        asked = study.ask(count)
        for c in asked:
            seed = candidate_seed(study.config, c.number)
            artefacts[c.number] = backend.train(c.recipe, candidate=c.number, seed=seed)
            study.tell(c.number, dev=backend.evaluate(artefacts[c.number]), artefact={})
        plan = study.plan_submissions()
        for s in plan.submissions:
            scores = backend.submit_external(artefacts[s.number], submission=s.submission)
            study.tell_external(s.number, external=scores)
        assert asked or plan.submissions or study.finished, study.next_step()


def _snapshot(url: str, name: str) -> tuple[dict[str, Any], list[Any]]:
    record = Storage(url).load(name)
    trials = [(c.number, str(c.state), c.recipe, c.dev, c.proposal) for c in record.candidates()]
    return json.loads(json.dumps(record.attrs, default=str)), trials


@pytest.mark.parametrize("seed", [0, 1])
def test_a_driven_study_is_the_engines_study(tmp_path: Path, seed: int) -> None:
    """Told what the back end would have returned, a driven study is the engine's run: the same
    proposals, submissions, validity checks, switches, audit and recommendation."""
    config = validate_study(_config(seed), source="test")
    own, driven = sqlite_url(tmp_path / "own.db"), sqlite_url(tmp_path / "driven.db")
    record = Storage(own, create=True).create(config)
    Engine(record=record, config=config, backend=_backend(config)).run()
    study = Study.create(config, storage=driven, publish=False, backend=_backend(config))
    drive(study, _backend(config), count=3)
    attrs_own, trials_own = _snapshot(own, "loop")
    attrs_driven, trials_driven = _snapshot(driven, "loop")
    assert trials_driven == trials_own
    assert attrs_driven == attrs_own
    kinds = {e["kind"] for e in study.record.audit_log()}
    assert {AuditKind.SUBMISSION, AuditKind.VALIDITY_CHECK, AuditKind.RECOMMENDATION} <= kinds
    unsubmitted = next(n for n, *_ in trials_driven if n not in study.record.submissions())
    with pytest.raises(LoopError, match="is finished"):
        study.tell_external(unsubmitted, external=_dev())


@pytest.fixture
def opened(tmp_path: Path) -> Study:
    return Study.create(_config(0), storage=sqlite_url(tmp_path / "s.db"), publish=False)


def _stored(study: Study) -> tuple[dict[str, Any], list[Any]]:
    return _snapshot(study.record.url, study.record.name)


def _dev(**over: Any) -> dict[str, Any]:
    return {"bit_manipulation": 0.5, "gravity": 0.4, "equations": 0.3, **over}


@pytest.mark.parametrize(
    ("dev", "message"),
    [
        (_dev(gravity=float("nan")), "dev['gravity'] is nan"),
        (_dev(gravity=1.5), "outside [0, 1]"),
        ({"bit_manipulation": 0.5, "gravity": 0.4}, "no score for domain 'equations'"),
        (_dev(physics=0.5), "unknown domain 'physics'"),
        (_dev(gravity="high"), "is not a number"),
        (_dev(gravity=[0.4, 0]), "item count 0"),
        ([0.5, 0.4, 0.3], "expected an object"),
    ],
)
def test_bad_dev_is_refused_and_nothing_changes(opened: Study, dev: Any, message: str) -> None:
    (c,) = opened.ask(1)
    before = _stored(opened)
    with pytest.raises(LoopError, match=message.replace("[", r"\[").replace("]", r"\]")):
        opened.tell(c.number, dev=dev)
    assert _stored(opened) == before


def test_rules_of_telling(opened: Study) -> None:
    asked = opened.ask(2)
    with pytest.raises(LoopError, match="no candidate 99"):
        opened.tell(99, dev=_dev())
    waiting = opened.ask(1)[0].number + 1  # the round's fourth is still waiting
    with pytest.raises(LoopError, match=f"candidate {waiting} was not asked"):
        opened.tell(waiting, dev=_dev())
    opened.tell(asked[0].number, dev=_dev())
    before = _stored(opened)
    with pytest.raises(LoopError, match="told already"):
        opened.tell(asked[0].number, dev=_dev())
    with pytest.raises(LoopError, match="no dev scores yet"):
        opened.tell_external(asked[1].number, external=_dev())
    assert _stored(opened) == before


def test_external_scores_once_and_within_the_budget(tmp_path: Path) -> None:
    data = _config(0)
    data["external"] = {"per_round": 2, "total": 2}
    data["policy"]["switch"] = False  # two submissions: a dev-only study
    study = Study.create(data, storage=sqlite_url(tmp_path / "s.db"), publish=False)
    for c in study.ask(4):
        study.tell(c.number, dev=_dev())
    plan = study.plan_submissions()
    assert [s.reason for s in plan.submissions] == ["warm-up: spread over de-noised dev"] * 2
    assert plan.budget_left == 0  # planned submissions are counted at once
    assert study.plan_submissions() == plan  # asked again: the same, nothing planned twice
    first = plan.submissions[0].number
    study.tell_external(first, external=_dev())
    before = _stored(study)
    with pytest.raises(LoopError, match="accepted once"):
        study.tell_external(first, external=_dev())
    unplanned = next(n for n in range(4) if n not in {s.number for s in plan.submissions})
    with pytest.raises(LoopError, match="budget is spent"):
        study.tell_external(unplanned, external=_dev())
    with pytest.raises(LoopError, match="external: unknown domain 'x'"):
        study.tell_external(plan.submissions[1].number, external=_dev(x=0.1))
    assert _stored(study) == before
    study.tell_external(plan.submissions[1].number, error="the leaderboard was down")
    subs = study.record.submissions()
    assert subs[plan.submissions[1].number]["state"] == "failed"  # counted, never re-sent
    assert study.status()["external_budget"] == {"used": 2, "left": 0, "total": 2}


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"template_share": 2.0}, "'template_share' = 2.0 is outside its bounds [0.0, 1.0]"),
        ({"epochs": 2.5}, "'epochs' = 2.5 is not a whole number"),
        ({"epochs": "3"}, "'epochs' = '3' is not a finite number"),
        ({"mixture.gravity": 0.9}, "mixture 'mixture' sums to 1.5"),
        ({"lora_rnak": 8}, "'lora_rnak' is not in the space"),
    ],
)
def test_an_enqueued_recipe_outside_the_space(opened: Study, recipe: Any, message: str) -> None:
    good = {
        "mixture.bit_manipulation": 0.3,
        "mixture.gravity": 0.4,
        "mixture.equations": 0.3,
        "template_share": 0.5,
        "epochs": 3,
        "learning_rate": 1e-4,
        "lora_rank": 16,
        "lora_dropout": 0.1,
    }
    before = _stored(opened)
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        opened.enqueue({**good, **recipe}, source="agent")
    assert _stored(opened) == before
    missing = dict(good)
    del missing["epochs"]
    with pytest.raises(RecipeError, match="'epochs' is missing"):
        opened.enqueue(missing, source="agent")
    with pytest.raises(LoopError, match="source"):
        opened.enqueue(good, source="")


def test_enqueued_candidates_take_slots_and_keep_their_source(opened: Study) -> None:
    idea = {
        "mixture.bit_manipulation": 0.2,
        "mixture.gravity": 0.2,
        "mixture.equations": 0.6,
        "template_share": 0.9,
        "epochs": 4,
        "learning_rate": 1e-4,
        "lora_rank": 16,
        "lora_dropout": 0.1,
    }
    number = opened.enqueue(idea, source="agent: more equations")
    asked = opened.ask(10)
    assert len(asked) == 4  # the enqueued one and three quasi-random ones: one round
    assert asked[0].number == number and asked[0].source == "agent: more equations"
    assert asked[0].recipe == idea
    assert {a.source for a in asked[1:]} == {"searchlab"}
    (entry,) = [e for e in opened.record.audit_log() if e["kind"] == AuditKind.CANDIDATE_ENQUEUED]
    assert entry["source"] == "agent: more equations" and entry["candidate"] == number
    assert opened.ask(1) == []
    assert "tell the scores" in opened.next_step()


# -- two drivers at once --------------------------------------------------------------------


def _driver(url: str, name: str, log: str, start: Any) -> None:
    """One process's loop: every candidate it is handed and every external it tells, logged.
    Both start together (``start``, a barrier) and "train" for a moment, as a real loop would,
    so that each finds the other's candidates out when it asks."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    study = Study.open(name, storage=url, publish=False)
    backend = _backend(study.config)
    start.wait(timeout=300)
    with open(log, "a") as f:
        while not study.finished:
            for c in study.ask(1):
                art = backend.train(
                    c.recipe, candidate=c.number, seed=candidate_seed(study.config, c.number)
                )
                time.sleep(0.5)
                f.write(json.dumps({"asked": c.number}) + "\n")
                f.flush()
                study.tell(c.number, dev=backend.evaluate(art), artefact=art)
            for s in study.plan_submissions().submissions:
                scores = backend.submit_external(s.artefact, submission=s.submission)
                try:
                    study.tell_external(s.number, external=scores)
                except SearchlabError as exc:  # the other driver answered it (or the last) first
                    assert "accepted once" in str(exc) or "is finished" in str(exc), exc
                    continue
                f.write(json.dumps({"told": s.number}) + "\n")
                f.flush()


def test_two_drivers_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """Two processes drive one study at once: no candidate is handed to both, no external score
    is stored twice, the budget is never overspent, and the study finishes."""
    Study.create(_config(2, name="two-drivers"), storage=pg_url, publish=False)
    logs = [str(tmp_path / f"driver-{i}.jsonl") for i in range(2)]
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_driver, args=(pg_url, "two-drivers", log, start)) for log in logs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
        assert p.exitcode == 0
    rows = [[json.loads(line) for line in Path(log).read_text().splitlines()] for log in logs]
    asked = [{r["asked"] for r in rs if "asked" in r} for rs in rows]
    told = [[r["told"] for r in rs if "told" in r] for rs in rows]
    assert asked[0] and asked[1], "both drivers took part"
    assert not asked[0] & asked[1]
    assert len(asked[0] | asked[1]) == 16
    all_told = told[0] + told[1]
    assert len(all_told) == len(set(all_told)) <= 8
    study = Study.open("two-drivers", storage=pg_url, publish=False)
    status = study.status()
    assert status["finished"] and status["external_budget"]["used"] <= 8
    subs = study.record.submissions()
    assert sorted(s["submission"] for s in subs.values()) == list(range(len(subs)))
    assert {n for n, s in subs.items() if s["state"] == "done"} == set(all_told)


def test_a_round_whose_candidates_all_failed_is_proposed_again(opened: Study) -> None:
    first = opened.ask(4)
    for c in first:
        opened.tell_failed(c.number, "out of memory")
    assert "every candidate failed" in opened.next_step()
    again = opened.ask(4)
    assert len(again) == 4 and {a.round for a in again} == {0}
    assert not {json.dumps(a.recipe, sort_keys=True) for a in again} & {
        json.dumps(c.recipe, sort_keys=True) for c in first
    }


def test_what_the_caller_keeps_cannot_replace_the_recipe(opened: Study) -> None:
    (c,) = opened.ask(1)
    opened.tell(c.number, dev=_dev(), artefact={"recipe": "ckpt.yaml", "path": "/ckpt/3"})
    stored = next(x for x in opened.record.candidates() if x.number == c.number).artefact
    assert stored == {"recipe": c.recipe, "candidate": c.number, "path": "/ckpt/3"}


def test_huge_numbers_are_one_line_errors(opened: Study) -> None:
    (c,) = opened.ask(1)
    with pytest.raises(LoopError, match="is not a number"):
        opened.tell(c.number, dev=_dev(gravity=10**400))
    with pytest.raises(RecipeError, match="outside its bounds"):
        opened.enqueue(
            {
                "mixture.bit_manipulation": 0.3,
                "mixture.gravity": 0.4,
                "mixture.equations": 0.3,
                "template_share": 0.5,
                "epochs": 10**400,
                "learning_rate": 1e-4,
                "lora_rank": 16,
                "lora_dropout": 0.1,
            },
            source="agent",
        )
