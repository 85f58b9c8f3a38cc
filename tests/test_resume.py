"""Interrupt a running study (SIGINT, kill -9) and resume it: nothing lost, nothing twice.

The back end is the simulated one slowed down (``conftest.SLOW_BACKEND``: a sleep per candidate)
so that the signal lands mid-round, and it logs every external submission it receives to a file,
which is how the test knows what the "leaderboard" saw, independently of what searchlab stored.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import slow_study_cli as _cli
from conftest import slow_study_env as _env
from conftest import slow_study_file


def _complete_count(db: Path, name: str) -> int:
    # Read-only SQL: opening the file with Optuna would race the CLI creating its schema.
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM trials JOIN studies USING (study_id) "
                "WHERE studies.study_name = ? AND trials.state = 'COMPLETE'",
                (name,),
            ).fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0])


def _interrupt_then_resume(tmp_path: Path, sig: int, after_complete: int) -> dict:
    name = f"resume-{sig}"
    study, log = slow_study_file(
        tmp_path, name=name, seed=3, delay=0.4, candidates=4, rounds=3, budget=5
    )
    db = tmp_path / "s.db"
    storage = f"sqlite:///{db}"
    env = _env(tmp_path)
    proc = subprocess.Popen(
        _cli("study", "create", str(study), "--storage", storage, "-q"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while _complete_count(db, name) < after_complete:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "study made no progress"
        time.sleep(0.1)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0, f"the study finished before the signal landed: {stderr[-3000:]}"
    if sig in (signal.SIGINT, signal.SIGTERM):
        # SIGTERM is handled like Ctrl-C: the same message, exit 128 + 15.
        assert proc.returncode == (130 if sig == signal.SIGINT else 143), stderr[-3000:]
        assert "interrupted: what finished is stored; continue with 'searchlab study resume'" in (
            stderr
        )

    done_before = _complete_count(db, name)
    resumed = subprocess.run(
        _cli("study", "resume", name, "--storage", storage, "-q"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    status = json.loads(
        subprocess.run(
            _cli("study", "status", name, "--storage", storage, "--json"),
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout
    )
    audit = json.loads(
        subprocess.run(
            _cli("study", "audit", name, "--storage", storage, "--json"),
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout
    )
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    sent = [r for r in rows if r["event"] == "submit"]
    return {"status": status, "audit": audit, "sent": sent, "done_before": done_before}


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["sigint", "sigterm", "kill-9"]
)
def test_interrupted_study_resumes_exactly(tmp_path: Path, sig: int) -> None:
    out = _interrupt_then_resume(tmp_path, sig, after_complete=6)
    status, audit, sent = out["status"], out["audit"], out["sent"]

    assert out["done_before"] >= 6
    assert status["finished"] is True
    assert status["rounds_done"] == 3
    # Every round got its 4 completed candidates: nothing finished was lost or redone.
    assert status["candidates"] == 12
    # The budget is exact, and the leaderboard never saw a candidate twice.
    assert status["external_budget"]["used"] == 5
    assert status["external_budget"]["left"] == 0
    candidates_sent = [s["candidate"] for s in sent]
    assert len(candidates_sent) == len(set(candidates_sent))
    assert len(sent) <= 5
    submissions = [e for e in audit if e["kind"] in ("submission", "submission_recovered")]
    assert len({e["candidate"] for e in submissions}) == len(submissions)
    # The audit trail has no gaps or duplicates.
    assert [e["seq"] for e in audit] == list(range(len(audit)))
    assert audit[-1]["kind"] == "recommendation"


def _trial_states(db: Path, name: str) -> dict[int, str]:
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        rows = conn.execute(
            "SELECT trials.number, trials.state FROM trials JOIN studies USING (study_id) "
            "WHERE studies.study_name = ? ORDER BY trials.number",
            (name,),
        ).fetchall()
    return {int(n): str(s) for n, s in rows}


def _json_cli(env: dict[str, str], *args: str) -> object:
    done = subprocess.run(
        _cli(*args, "--json"), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("gap_s", [0.04, 0.06, 0.1], ids=["40ms", "60ms", "100ms"])
def test_a_second_sigint_while_a_candidate_trains_loses_nothing(
    tmp_path: Path, gap_s: float
) -> None:
    name = f"twice-{round(gap_s * 1000)}ms"
    study, log = slow_study_file(
        tmp_path, name=name, seed=3, delay=1.5, candidates=3, rounds=1, budget=2
    )
    db = tmp_path / "s.db"
    storage = f"sqlite:///{db}"
    env = _env(tmp_path)
    proc = subprocess.Popen(
        _cli("study", "create", str(study), "--storage", storage, "-q"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not (log.exists() and '"train"' in log.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no candidate started"
        time.sleep(0.02)
    time.sleep(0.4)  # well inside the first candidate's training (1.5 s)
    proc.send_signal(signal.SIGINT)
    time.sleep(gap_s)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "continue with 'searchlab study resume'" in stderr
    # The interrupted candidate was replaced completely before the process stopped: failed,
    # proposed again, and its audit entry written, the second signal notwithstanding.
    states = _trial_states(db, name)
    assert states[0] == "FAIL" and list(states.values()).count("FAIL") == 1, states
    audit = _json_cli(env, "study", "audit", name, "--storage", storage)
    replaced = [e for e in audit if e["kind"] == "candidate_replaced"]
    assert [e["candidate"] for e in replaced] == [0]
    assert replaced[0]["reason"] == "interrupted by the user (SIGINT)"

    resumed = subprocess.run(
        _cli("study", "resume", name, "--storage", storage, "-q"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    status = _json_cli(env, "study", "status", name, "--storage", storage)
    audit = _json_cli(env, "study", "audit", name, "--storage", storage)
    assert status["finished"] is True
    assert status["candidates"] == 3  # all of them: the interrupted one's recipe ran again
    states = _trial_states(db, name)
    failed = sorted(n for n, s in states.items() if s == "FAIL")
    replaced = sorted(e["candidate"] for e in audit if e["kind"] == "candidate_replaced")
    assert replaced == failed  # one audit entry per replacement
    assert [e["seq"] for e in audit] == list(range(len(audit)))
    rows = [json.loads(line) for line in log.read_text().splitlines() if line]
    trained = Counter(r["candidate"] for r in rows if r["event"] == "train")
    assert all(n == 1 for n in trained.values()), trained
    sent = [r["candidate"] for r in rows if r["event"] == "submit"]
    assert len(sent) == len(set(sent)) == status["external_budget"]["used"] == 2


def test_resume_completes_a_replacement_that_was_cut_short(tmp_path: Path) -> None:
    """What a process killed in the middle of Engine._replace leaves, repaired by _recover."""
    from conftest import tiny_study_data

    from searchlab.backends import backend_for
    from searchlab.config import validate_study
    from searchlab.engine import Engine
    from searchlab.space import SearchSpace
    from searchlab.store import Phase, Storage

    config = validate_study(tiny_study_data(), source="test")
    record = Storage(f"sqlite:///{tmp_path / 's.db'}", create=True).create(config)
    space = SearchSpace(config.space)
    for recipe in space.quasi_random(4, seed=0)[:3]:
        record.enqueue(recipe, round=0, proposal={"method": "sobol"})
    record.set_phase(0, Phase.PROPOSED)
    dists = space.distributions()
    for _ in range(3):
        record.start_next(dists)
    # 0: failed to be replaced, then killed: no new proposal, no audit entry.
    record.fail(0, "interrupted by the user (SIGINT)", repropose=True)
    # 1: failed and proposed again (candidate 3), then killed before the audit entry.
    record.fail(1, "interrupted by the user (SIGINT)", repropose=True)
    c1 = next(c for c in record.candidates() if c.number == 1)
    record.enqueue(c1.recipe, round=0, proposal={**c1.proposal, "replaces": 1})
    # 2: the back end failed it, and the process stopped before its audit entry.
    record.fail(2, "back end raised RuntimeError: boom")

    engine = Engine(record=record, config=config, backend=backend_for(config))
    for _ in range(2):  # a second resume finds nothing left to do
        engine._recover()
        candidates = record.candidates()
        assert [(c.number, c.state, c.proposal.get("replaces")) for c in candidates] == [
            (0, "FAIL", None),
            (1, "FAIL", None),
            (2, "FAIL", None),
            (3, "WAITING", 1),
            (4, "WAITING", 0),
        ]
        # The new proposal is the old recipe (an enqueued trial holds it as fixed params).
        assert record.study.get_trials()[4].system_attrs["fixed_params"] == candidates[0].recipe
        log = [(e["kind"], e["candidate"]) for e in record.audit_log()]
        assert sorted(log) == [
            ("candidate_failed", 2),
            ("candidate_replaced", 0),
            ("candidate_replaced", 1),
        ]
