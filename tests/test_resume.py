"""Interrupt a running study (SIGINT, kill -9) and resume it: nothing lost, nothing twice.

The back end is the simulated one slowed down (``conftest.SLOW_BACKEND``: a sleep per candidate)
so that the signal lands mid-round, and it logs every external submission it receives to a file,
which is how the test knows what the "leaderboard" saw, independently of what searchlab stored.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import slow_study_file


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "searchlab.cli", *args]


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
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert "resume" in stderr

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
        ).stdout
    )
    audit = json.loads(
        subprocess.run(
            _cli("study", "audit", name, "--storage", storage, "--json"),
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    sent = [r for r in rows if r["event"] == "submit"]
    return {"status": status, "audit": audit, "sent": sent, "done_before": done_before}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "kill-9"])
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
