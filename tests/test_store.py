"""Storage: schema versions, passwords, reading without writing, atomic create, locks."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, sqlite_url

from searchlab import store
from searchlab.config import validate_study
from searchlab.errors import StorageError, StudyFileError, StudyStateError
from searchlab.simulation import canonical_space
from searchlab.store import PREFIX, Storage, redact


def _config():
    return validate_study(
        {
            "name": "schema",
            "domains": [{"name": "cipher"}, {"name": "equations"}],
            "space": canonical_space(("cipher", "equations")),
            "backend": {"name": "simulated"},
            "rounds": {"candidates": 2, "count": 2},
            "external": {"per_round": 1, "total": 2},
            "policy": {"switch": False},  # too few submissions for the test
        },
        source="test",
    )


def test_a_study_from_another_schema_gets_a_clear_message(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    record = Storage(url, create=True).create(_config())
    assert Storage(url).load("schema").schema_version == 1
    record.study.set_user_attr(f"{PREFIX}schema", 99)
    with pytest.raises(StorageError, match=r"schema version 99.*reads version 1"):
        Storage(url).load("schema")


def test_an_optuna_study_that_is_not_searchlabs_is_named(tmp_path: Path) -> None:
    import optuna

    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="plain", storage=url)
    with pytest.raises(StorageError, match=r"'plain'.*not a searchlab study"):
        Storage(url).load("plain")
    assert Storage(url).names() == []


def test_passwords_are_redacted() -> None:
    assert redact("postgresql://u:hunter2@db:5432/x") == "postgresql://u:***@db:5432/x"


# -- reading never writes; read-only and locked databases ------------------------------------


def _one_line_error(result: Any, *culprits: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for culprit in culprits:
        assert culprit in lines[0], lines[0]
    return lines[0]


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_reading_another_tools_database_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "foreign.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    url = sqlite_url(db)
    before = db.read_bytes()
    listed = run_cli("study", "list", "--storage", url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == "" and "no searchlab studies" in listed.stderr
    for args in (
        ("status", "x"),
        ("audit", "x"),
        ("export", "x", "--out", str(tmp_path / "out")),
        ("report", "x", "--out", str(tmp_path / "report")),
        ("analyze", "x"),
    ):
        _one_line_error(run_cli("study", *args, "--storage", url), "'x'", "no Optuna")
    assert _tables(db) == {"notes"}
    assert db.read_bytes() == before
    assert Storage(url).names() == []


def test_create_and_resume_on_a_read_only_database_fail_in_one_line(
    tmp_path: Path, tiny_study: Path
) -> None:
    db = tmp_path / "s.db"
    url = sqlite_url(db)
    Storage(url, create=True).create(_config())
    before = db.read_bytes()
    # SQLite opened read-only: what a file without write permission is to a non-root user.
    read_only = f"sqlite:///file:{db.resolve()}?mode=ro&uri=true"
    _one_line_error(run_cli("study", "resume", "schema", "--storage", read_only), "readonly")
    _one_line_error(run_cli("study", "create", str(tiny_study), "--storage", read_only))
    if os.geteuid() != 0:  # root writes a file whatever its mode says
        db.chmod(0o444)
        _one_line_error(run_cli("study", "resume", "schema", "--storage", url), "readonly")
        db.chmod(0o644)
    assert db.read_bytes() == before
    assert not list(tmp_path.glob("file:*"))  # no stray lock file from the URI form


# -- atomic create -------------------------------------------------------------------------------

_KILLED_CREATE = """
import os, sys
import sqlalchemy.orm
from searchlab.config import load_study_file
from searchlab.store import Storage

store = Storage(sys.argv[1], create=True)
commit = sqlalchemy.orm.Session.commit

def killed(self):
    # The study's rows are written into the transaction, then the process dies before COMMIT.
    if any(type(o).__name__ == "StudyModel" for o in self.new):
        self.flush()
        os._exit(9)
    return commit(self)

sqlalchemy.orm.Session.commit = killed
store.create(load_study_file(sys.argv[2]))
"""


def test_a_create_killed_half_way_leaves_no_study(tmp_path: Path, tiny_study: Path) -> None:
    url = sqlite_url(tmp_path / "s.db")
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_CREATE, url, str(tiny_study)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == 9, killed.stderr
    import optuna

    assert optuna.get_all_study_names(url) == []
    _one_line_error(run_cli("study", "status", "tiny", "--storage", url), "no study 'tiny'")
    _one_line_error(run_cli("study", "resume", "tiny", "--storage", url), "no study 'tiny'")
    from searchlab.config import load_study_file

    record = Storage(url, create=True).create(load_study_file(str(tiny_study)))
    assert record.schema_version == 1 and record.config_data["name"] == "tiny"
    assert record.study.metric_names == ["dev:cipher", "dev:equations"]


def test_an_incomplete_study_is_named_in_one_line_and_create_replaces_it(
    tmp_path: Path,
) -> None:
    import optuna

    url = sqlite_url(tmp_path / "s.db")
    # What an older searchlab left when killed between its writes: the schema, no config.
    study = optuna.create_study(study_name="schema", storage=url, directions=["maximize"] * 2)
    study.set_user_attr(f"{PREFIX}schema", 1)
    for command in ("status", "resume", "audit"):
        _one_line_error(
            run_cli("study", command, "schema", "--storage", url), "'schema'", "incomplete"
        )
    assert Storage(url).names() == []
    record = Storage(url, create=True).create(_config())
    assert record.config_data["name"] == "schema"
    assert [e["kind"] for e in record.audit_log()] == ["incomplete_study_replaced"]
    assert Storage(url).load("schema").schema_version == 1


def test_a_study_that_is_not_searchlabs_is_never_replaced(tmp_path: Path) -> None:
    import optuna

    url = sqlite_url(tmp_path / "s.db")
    optuna.create_study(study_name="schema", storage=url)
    with pytest.raises(StudyStateError, match="already exists"):
        Storage(url, create=True).create(_config())


# -- a database locked by another process -----------------------------------------------------


def _hold_lock(path: Path, seconds: float, ready: threading.Event) -> threading.Thread:
    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        ready.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    ready.wait(10)
    return thread


def _waiting_study(tmp_path: Path) -> tuple[Path, Any]:
    from searchlab.space import SearchSpace

    db = tmp_path / "s.db"
    config = _config()
    record = Storage(sqlite_url(db), create=True).create(config)
    space = SearchSpace(config.space)
    for recipe in space.quasi_random(2, seed=0):
        record.enqueue(recipe, round=0, proposal={"method": "test"})
    return db, space.distributions()


def test_a_locked_database_is_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "SQLITE_BUSY_S", 0.2)  # the driver gives up fast: we retry
    monkeypatch.setattr(store, "LOCK_WAIT_S", 60.0)
    db, distributions = _waiting_study(tmp_path)
    record = Storage(sqlite_url(db)).load("schema")
    held = _hold_lock(db, 2.0, threading.Event())
    t0 = time.monotonic()
    trial = record.start_next(distributions)
    record.mark_finished()
    assert time.monotonic() - t0 > 1.0
    held.join()
    assert trial is not None and trial.number == 0
    assert [c.state for c in record.candidates()] == ["RUNNING", "WAITING"]
    assert set(trial.params) == set(distributions)


def test_a_database_locked_too_long_is_one_line_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "SQLITE_BUSY_S", 0.2)
    monkeypatch.setattr(store, "LOCK_WAIT_S", 1.0)
    db, distributions = _waiting_study(tmp_path)
    record = Storage(sqlite_url(db)).load("schema")
    held = _hold_lock(db, 3.0, threading.Event())
    with pytest.raises(StorageError) as info:
        record.start_next(distributions)
    message = str(info.value)
    assert "\n" not in message
    assert "cannot start a candidate: the database stayed locked by another process" in message
    held.join()
    assert [c.state for c in Storage(sqlite_url(db)).load("schema").candidates()] == [
        "WAITING",
        "WAITING",
    ]


def test_a_signal_never_lands_inside_a_database_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    from searchlab import interrupt

    monkeypatch.setattr(interrupt._State, "raised_at", None)
    db = tmp_path / "s.db"
    record = Storage(sqlite_url(db), create=True).create(_config())
    set_user_attr = record.study.set_user_attr

    def slow(key: str, value: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the write is under way
        time.sleep(0.2)
        set_user_attr(key, value)

    monkeypatch.setattr(record.study, "set_user_attr", slow)
    with interrupt.sigint_latch(), pytest.raises(KeyboardInterrupt):
        record.mark_finished()
    # The write completed before the interrupt was raised, and left no lock behind.
    assert Storage(sqlite_url(db)).load("schema").finished
    with sqlite3.connect(db, timeout=0.5) as conn:
        conn.execute("CREATE TABLE probe (x INTEGER)")


def test_a_stored_study_from_before_the_submissions_rule_still_reads(tmp_path: Path) -> None:
    """New files with too few submissions for the test are refused; stored ones still read."""
    from searchlab.config import StudyConfig
    from searchlab.readmodel import status

    data = _config().model_dump(mode="json")
    data["policy"]["switch"] = True  # two submissions: refused as a new file
    with pytest.raises(StudyFileError, match=r"external\.total"):
        validate_study(data, source="new")
    url = f"sqlite:///{tmp_path / 's.db'}"
    Storage(url, create=True).create(StudyConfig.model_validate(data))
    result = run_cli("study", "status", "schema", "--storage", url, "--json")
    assert result.returncode == 0, result.stderr
    assert '"finished": false' in result.stdout
    assert status(Storage(url).load("schema"))["external_budget"]["total"] == 2


def test_a_study_stored_before_tracking_and_hinge_form_keeps_its_test(tmp_path: Path) -> None:
    """A config stored without keys added later reads with the values the study ran with
    (``tracking`` 0: the "slope above >= 0" test; the quadratic hinge), in status, resume and
    re-analysis alike; a new file may not ask for ``tracking: 0``."""
    from searchlab.config import stored_config
    from searchlab.readmodel import read
    from searchlab.validity import HingeForm

    url = f"sqlite:///{tmp_path / 's.db'}"
    record = Storage(url, create=True).create(_config())
    old = dict(record.config_data)
    assert stored_config(old).policy.share_probes  # stored with the key: as it ran
    later = ("tracking", "hinge_form", "share_probes")
    old["policy"] = {k: v for k, v in old["policy"].items() if k not in later}
    record.study.set_user_attr(f"{PREFIX}config", old)  # as an older searchlab stored it
    view = read(Storage(url).load("schema"))
    assert view.settings.tracking == 0.0 and view.settings.hinge_form == HingeForm.QUAD
    assert stored_config(old).policy.tracking == 0.0
    assert not stored_config(old).policy.share_probes  # no probes after a switch back then
    result = run_cli("study", "status", "schema", "--storage", url, "--json")
    assert result.returncode == 0, result.stderr
    new = _config().model_dump(mode="json")
    new["policy"]["tracking"] = 0.0
    with pytest.raises(StudyFileError, match=r"policy\.tracking"):
        validate_study(new, source="new")
