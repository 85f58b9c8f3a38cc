"""Workers on PostgreSQL: every candidate done once, and kill -9 of a worker or the coordinator.

A throw-away PostgreSQL cluster is created in a temporary folder (``initdb``, ``pg_ctl``) for
the session (``conftest.pg_url``); without PostgreSQL's server programs these tests are skipped
(``.ci/run`` installs them). The back end is the simulated one slowed down, and it logs every
training it starts (candidate, process id) and every submission it receives to files, which is
how the tests know what ran where independently of what searchlab stored.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from conftest import slow_study_cli as _cli
from conftest import slow_study_env as _env
from conftest import slow_study_file


def _sql(url: str, query: str, *params: object) -> list[tuple]:
    import psycopg

    with psycopg.connect(url.replace("+psycopg", ""), connect_timeout=5) as conn:
        return conn.execute(query, params).fetchall()


def _trials(url: str, name: str) -> list[tuple[int, str]]:
    try:
        return _sql(
            url,
            "SELECT trials.number, trials.state FROM trials JOIN studies USING (study_id) "
            "WHERE studies.study_name = %s ORDER BY trials.number",
            name,
        )
    except Exception:  # the schema is not created yet
        return []


class _Study:
    """A study run by a coordinator process and worker processes."""

    def __init__(self, tmp_path: Path, url: str, name: str, **shape: Any) -> None:
        self.url, self.name = url, name
        self.file, self.log = slow_study_file(tmp_path, name=name, seed=5, **shape)
        self.env = _env(tmp_path)
        self.workers: list[subprocess.Popen[str]] = []
        self.coordinator: subprocess.Popen[str] | None = None

    def _spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            _cli(*args),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tempfile.gettempdir(),
        )

    def create(self, lease: float) -> None:
        self.coordinator = self._spawn(
            "study", "create", str(self.file), "--storage", self.url, "--external-workers",
            "--lease", str(lease), "-q",
        )  # fmt: skip
        deadline = time.time() + 120
        while not _trials(self.url, self.name):
            assert self.coordinator.poll() is None, self.coordinator.communicate()
            assert time.time() < deadline, "the coordinator proposed nothing"
            time.sleep(0.2)

    def start_workers(self, n: int, lease: float, heartbeat: float) -> None:
        for _ in range(n):
            self.workers.append(
                self._spawn(
                    "worker",
                    self.name,
                    "--storage",
                    self.url,
                    "--lease",
                    str(lease),
                    "--heartbeat",
                    str(heartbeat),
                    "--idle-exit",
                    "120",
                )
            )

    def complete(self) -> int:
        return sum(1 for _, s in _trials(self.url, self.name) if s == "COMPLETE")

    def rows(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def wait_workers(self) -> None:
        for w in self.workers:
            try:
                w.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                w.kill()
                w.communicate()

    def kill_all(self) -> None:
        for p in [self.coordinator, *self.workers]:
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()

    def report(self) -> dict:
        run = lambda *a: json.loads(  # noqa: E731
            subprocess.run(
                _cli(*a, self.name, "--storage", self.url, "--json"),
                env=self.env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        return {"status": run("study", "status"), "audit": run("study", "audit")}


def _check_exact(study: _Study, total: int, budget: int) -> dict:
    out = study.report()
    status, audit = out["status"], out["audit"]
    assert status["finished"] is True
    assert status["candidates"] == total
    assert status["external_budget"]["used"] == budget
    assert [e["seq"] for e in audit] == list(range(len(audit)))
    assert audit[-1]["kind"] == "recommendation"
    rows = study.rows()
    trained = Counter(r["candidate"] for r in rows if r["event"] == "train")
    assert all(n == 1 for n in trained.values()), trained  # no candidate trained twice
    sent = [r["candidate"] for r in rows if r["event"] == "submit"]
    assert len(sent) == len(set(sent)) == budget
    trials = _trials(study.url, study.name)
    assert [n for n, _ in trials] == list(range(len(trials)))
    assert sum(1 for _, s in trials if s == "COMPLETE") == total
    assert not [n for n, s in trials if s in ("WAITING", "RUNNING")]
    return {**out, "trials": trials, "rows": rows}


def test_four_workers_do_every_candidate_once(tmp_path: Path, pg_url: str) -> None:
    study = _Study(tmp_path, pg_url, "four-workers", delay=0.3, candidates=8, rounds=5, budget=8)
    try:
        study.create(lease=30)
        study.start_workers(4, lease=30, heartbeat=1)
        assert study.coordinator is not None
        _, stderr = study.coordinator.communicate(timeout=300)
        assert study.coordinator.returncode == 0, stderr
        study.wait_workers()
    finally:
        study.kill_all()
    out = _check_exact(study, total=40, budget=8)
    assert [s for _, s in out["trials"]] == ["COMPLETE"] * 40  # no failure, no replacement
    trained = [r for r in out["rows"] if r["event"] == "train"]
    assert sorted(r["candidate"] for r in trained) == list(range(40))
    assert len({r["pid"] for r in trained}) >= 2  # the work was shared
    assert all(w.returncode == 0 for w in study.workers)


def test_killed_worker_is_replaced(tmp_path: Path, pg_url: str) -> None:
    # A long delay so the victim is still training its candidate when the signal lands, even
    # on a loaded machine (with 0.8 s the worker sometimes finished it first).
    study = _Study(tmp_path, pg_url, "kill-worker", delay=2.5, candidates=4, rounds=3, budget=4)
    try:
        study.create(lease=3)
        study.start_workers(2, lease=3, heartbeat=0.5)
        pids = {w.pid: w for w in study.workers}
        deadline = time.time() + 120
        victim = None
        while victim is None:
            assert time.time() < deadline, "no worker started a candidate"
            # A worker that has started a candidate after round 1 and is still training it,
            # with at least half the delay left (a loaded machine polls slowly: a victim picked
            # near the end of its training could finish it before the signal lands).
            running = {n for n, s in _trials(study.url, study.name) if s == "RUNNING"}
            rows = [
                r
                for r in study.rows()
                if r["event"] == "train"
                and r["pid"] in pids
                and r["candidate"] in running
                and time.time() - r["t"] < 2.5 / 2
            ]
            if study.complete() >= 4 and rows:
                victim = rows[-1]
            time.sleep(0.05)
        os.kill(victim["pid"], signal.SIGKILL)
        pids[victim["pid"]].communicate()
        assert study.coordinator is not None
        _, stderr = study.coordinator.communicate(timeout=300)
        assert study.coordinator.returncode == 0, stderr
        study.wait_workers()
    finally:
        study.kill_all()
    out = _check_exact(study, total=12, budget=4)
    replaced = [e for e in out["audit"] if e["kind"] == "candidate_replaced"]
    assert [e["candidate"] for e in replaced] == [victim["candidate"]]
    assert replaced[0]["reason"].startswith("worker lost: no heartbeat for")
    failed = [n for n, s in out["trials"] if s == "FAIL"]
    assert failed == [victim["candidate"]]


def test_killed_coordinator_resumes_with_running_workers(tmp_path: Path, pg_url: str) -> None:
    study = _Study(
        tmp_path, pg_url, "kill-coordinator", delay=0.3, candidates=4, rounds=4, budget=6
    )
    try:
        study.create(lease=10)
        study.start_workers(2, lease=10, heartbeat=0.5)
        assert study.coordinator is not None
        deadline = time.time() + 180
        while study.complete() < 6:
            assert study.coordinator.poll() is None, study.coordinator.communicate()
            assert time.time() < deadline, "the study made no progress"
            time.sleep(0.05)
        study.coordinator.send_signal(signal.SIGKILL)
        study.coordinator.communicate()
        resumed = subprocess.run(
            _cli("coordinator", study.name, "--storage", study.url, "--lease", "10", "-q"),
            env=study.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert resumed.returncode == 0, resumed.stderr
        study.wait_workers()
    finally:
        study.kill_all()
    out = _check_exact(study, total=16, budget=6)
    # Nobody died but the coordinator: nothing was replaced.
    assert not [e for e in out["audit"] if e["kind"] == "candidate_replaced"]
