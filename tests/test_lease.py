"""One engine per study: the study lease, in storage and between processes.

Unit tests take, renew, release and take over leases on SQLite in this process. The process
tests run two ``searchlab study resume NAME`` at once on one interrupted study (SQLite, then
PostgreSQL): exactly one proceeds, the other exits 2 naming the holder, and the back end's own
log (``conftest.SLOW_BACKEND``) shows the budget spent exactly, nothing trained or sent twice.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import slow_study_cli as _cli
from conftest import slow_study_env as _env
from conftest import slow_study_file

from searchlab.config import validate_study
from searchlab.errors import StudyHeldError
from searchlab.simulation import canonical_space
from searchlab.store import LEASE_TABLE, AuditKind, Storage, StudyLease


def _config(name: str = "leased") -> Any:
    return validate_study(
        {
            "name": name,
            "domains": [{"name": "cipher"}, {"name": "equations"}],
            "space": canonical_space(("cipher", "equations")),
            "backend": {"name": "simulated"},
            "rounds": {"candidates": 2, "count": 2},
            "external": {"per_round": 1, "total": 2},
            "policy": {"switch": False},  # too few submissions for the test
        },
        source="test",
    )


@pytest.fixture
def store(tmp_path: Path) -> Storage:
    store = Storage(f"sqlite:///{tmp_path / 's.db'}", create=True)
    store.create(_config())
    return store


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant(store: Storage, owner: str, *, age_s: float, ttl_s: float) -> None:
    """Writes a lease row as another process would have left it."""
    lease = StudyLease(store, "leased")
    table = lease._table()
    now = time.time()
    with store.engine.begin() as conn:
        conn.execute(
            table.insert().values(
                study_name="leased",
                owner=owner,
                acquired_at=now - age_s - 60,
                heartbeat_at=now - age_s,
                expires_at=now - age_s + ttl_s,
            )
        )


# -- unit tests ------------------------------------------------------------------------------


def test_acquire_refuse_renew_release(store: Storage) -> None:
    a = store.lease("leased", ttl_s=30)
    assert a.acquire() is None
    holder = a.holder()
    assert holder is not None and holder.owner == a.owner
    assert a.owner.startswith(f"{socket.gethostname()}:{os.getpid()}:")

    b = store.lease("leased", ttl_s=30)
    with pytest.raises(StudyHeldError) as info:
        b.acquire()
    message = str(info.value)
    assert f"held by {socket.gethostname()}:{os.getpid()} since " in message
    assert "Z (heartbeat 0 s ago); wait, or stop it" in message

    time.sleep(0.05)
    assert a.renew() is True
    renewed = a.holder()
    assert renewed is not None
    assert renewed.expires_at > holder.expires_at and renewed.acquired_at == holder.acquired_at

    a.release()
    assert a.holder() is None
    assert b.acquire() is None  # free again
    b.release()


def test_an_expired_lease_is_taken_over_and_its_holder_stops(store: Storage) -> None:
    stale = store.lease("leased", ttl_s=0.2)
    stale.acquire()
    time.sleep(0.3)
    fresh = store.lease("leased", ttl_s=30)
    previous = fresh.acquire()
    assert previous is not None and previous.owner == stale.owner
    fields = fresh.takeover_fields()
    assert fields is not None
    assert fields["previous_owner"] == stale.owner
    assert fields["reason"].startswith("no heartbeat for")
    # The stalled holder learns it at its next renewal, and its engine at the next safe point.
    assert stale.renew() is False
    with pytest.raises(StudyHeldError, match="was taken over by"):
        stale.check()
    stale.release()  # must not delete the new holder's row
    holder = fresh.holder()
    assert holder is not None and holder.owner == fresh.owner
    fresh.check()


def test_a_dead_process_on_this_host_is_taken_over_at_once(store: Storage) -> None:
    dead = f"{socket.gethostname()}:{_dead_pid()}:0000"
    _plant(store, dead, age_s=1, ttl_s=3600)  # not expired: its process is gone
    lease = store.lease("leased")
    previous = lease.acquire()
    assert previous is not None and previous.owner == dead
    assert lease.takeover_reason == "its process no longer exists"
    lease.release()


def test_a_live_lease_of_another_host_is_refused(store: Storage) -> None:
    _plant(store, "elsewhere:1:abcd", age_s=3, ttl_s=3600)
    with pytest.raises(StudyHeldError, match=r"held by elsewhere:1 since .*heartbeat 3 s ago"):
        store.lease("leased").acquire()


def test_the_lease_is_renewed_while_held_and_released_on_an_exception(store: Storage) -> None:
    lease = store.lease("leased", ttl_s=0.6, heartbeat_s=0.1)
    with pytest.raises(RuntimeError), lease:
        first = lease.holder()
        time.sleep(1.0)  # longer than the ttl: only the renewals keep it
        holder = lease.holder()
        assert first is not None and holder is not None
        assert holder.owner == lease.owner and holder.heartbeat_at > first.heartbeat_at
        with pytest.raises(StudyHeldError):
            store.lease("leased").acquire()
        raise RuntimeError("the engine failed")
    assert lease.holder() is None


def test_of_many_at_once_exactly_one_takes_it(store: Storage) -> None:
    leases = [store.lease("leased") for _ in range(8)]
    barrier = threading.Barrier(len(leases))
    results: list[str] = []

    def take(lease: StudyLease) -> None:
        barrier.wait()
        try:
            lease.acquire()
            results.append("held")
        except StudyHeldError:
            results.append("refused")

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["held"] + ["refused"] * 7


def test_a_record_read_before_the_lease_sees_the_last_holders_writes(store: Storage) -> None:
    early = store.load("leased")
    early.audit_log()  # cached before the lease was taken (cli._run refreshes after taking it)
    store.load("leased").audit(AuditKind.PROPOSAL, round=None, by="the last holder")
    early.refresh()
    early.audit(AuditKind.PROPOSAL, round=None, by="the new holder")
    assert [e["by"] for e in store.load("leased").audit_log()] == [
        "the last holder",
        "the new holder",
    ]


def test_reading_does_not_create_the_lease_table(tmp_path: Path) -> None:
    import sqlalchemy

    url = f"sqlite:///{tmp_path / 's.db'}"
    Storage(url, create=True).create(_config())
    Storage(url).load("leased").audit_log()
    assert LEASE_TABLE not in sqlalchemy.inspect(sqlalchemy.create_engine(url)).get_table_names()


# -- two resumes at once ----------------------------------------------------------------------


def _complete(url: str, name: str) -> int:
    """COMPLETE trials of the study, by plain SQL (the CLI may be creating the schema)."""
    import sqlalchemy

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return 0  # opening it would create the file
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as conn:
            n = conn.execute(
                sqlalchemy.text(
                    "SELECT count(*) FROM trials JOIN studies USING (study_id) "
                    "WHERE studies.study_name = :name AND trials.state = 'COMPLETE'"
                ),
                {"name": name},
            ).scalar_one()
        engine.dispose()
    except sqlalchemy.exc.SQLAlchemyError:
        return 0
    return int(n)


def _freeze_outside_a_write(proc: subprocess.Popen, url: str) -> None:
    """SIGSTOPs ``proc`` at a moment it holds no SQLite lock.

    Frozen inside a write transaction it would make the resume wait for the lock
    (``LOCK_WAIT_S``) instead of reading the lease: a race that a loaded machine hits.
    """
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    for _ in range(200):
        proc.send_signal(signal.SIGSTOP)
        if path is None:
            return
        try:
            conn = sqlite3.connect(path, timeout=0.2)
            try:
                conn.execute("BEGIN EXCLUSIVE")  # no other reader or writer
                conn.rollback()
            finally:
                conn.close()
            return
        except sqlite3.OperationalError:
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.05)
    raise AssertionError("the create held the SQLite write lock at every try")


def _two_resumes(tmp_path: Path, url: str, name: str) -> None:
    """Interrupts a study (kill -9 after 3 candidates), then resumes it twice at once."""
    study, log = slow_study_file(
        tmp_path, name=name, seed=4, delay=0.4, candidates=3, rounds=2, budget=3
    )
    env = _env(tmp_path)
    create = subprocess.Popen(
        _cli("study", "create", str(study), "--storage", url, "-q"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while _complete(url, name) < 2:
        assert create.poll() is None, create.communicate()
        assert time.time() < deadline, "the study made no progress"
        time.sleep(0.05)
    # Frozen, the create still holds the lease (alive, not expired): a resume is refused.
    _freeze_outside_a_write(create, url)
    try:
        refused = subprocess.run(
            _cli("study", "resume", name, "--storage", url, "-q"),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        create.send_signal(signal.SIGKILL)  # its lease stays behind: a dead process's
        create.communicate()
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().startswith(
        f"error: study {name!r} is held by {socket.gethostname()}:{create.pid} since "
    ), refused.stderr

    resumes = [
        subprocess.Popen(
            _cli("study", "resume", name, "--storage", url, "-q"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = []
    for p in resumes:
        stdout, stderr = p.communicate(timeout=600)
        outcomes.append((p.returncode, stdout, stderr, p.pid))
    codes = sorted(code for code, *_ in outcomes)
    assert codes == [0, 2], outcomes
    winner = next(o for o in outcomes if o[0] == 0)
    loser = next(o for o in outcomes if o[0] == 2)
    lines = loser[2].strip().splitlines()
    assert len(lines) == 1, loser[2]
    host = socket.gethostname()
    assert lines[0].startswith(f"error: study {name!r} is held by {host}:{winner[3]} since "), lines
    assert "heartbeat" in lines[0] and "wait, or stop it" in lines[0]

    status = json.loads(
        subprocess.run(
            _cli("study", "status", name, "--storage", url, "--json"),
            env=env, capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    audit = json.loads(
        subprocess.run(
            _cli("study", "audit", name, "--storage", url, "--json"),
            env=env, capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    assert status["finished"] is True
    assert status["candidates"] == 6
    assert status["external_budget"]["used"] == 3
    assert [e["seq"] for e in audit] == list(range(len(audit)))
    assert audit[-1]["kind"] == "recommendation"
    # The killed create's lease was taken over once, by the winner, and said so.
    takeovers = [e for e in audit if e["kind"] == "lease_takeover"]
    assert len(takeovers) == 1
    assert takeovers[0]["previous_owner"].startswith(f"{host}:{create.pid}:")
    assert takeovers[0]["owner"].startswith(f"{host}:{winner[3]}:")
    assert takeovers[0]["reason"] == "its process no longer exists"
    # The back end's own log: the loser did nothing, nothing was trained or sent twice, and
    # the leaderboard saw exactly the budget.
    rows = [json.loads(line) for line in log.read_text().splitlines() if line]
    assert not [r for r in rows if r["pid"] == loser[3]]
    trained = Counter(r["candidate"] for r in rows if r["event"] == "train")
    assert all(n == 1 for n in trained.values()), trained
    sent = [r["candidate"] for r in rows if r["event"] == "submit"]
    assert len(sent) == len(set(sent)) == 3
    rounds = [e for e in audit if e["kind"] == "round_done"]
    assert [e["round"] for e in rounds] == [0, 1]


def test_two_resumes_at_once_on_sqlite(tmp_path: Path) -> None:
    _two_resumes(tmp_path, f"sqlite:///{tmp_path / 's.db'}", "twice-sqlite")


def test_two_resumes_at_once_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    _two_resumes(tmp_path, pg_url, "twice-pg")
