"""Bad input gets one line on stderr, ``error: ...`` naming the culprit, and exit status 2.

Covers study files (``study validate`` and ``study create``), storage URLs, and that a failed
``create`` never touches a study already stored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, sqlite_url, tiny_study_data, write_yaml

FILE = "<file>"  # culprit placeholder: the study file's path


def assert_one_line_error(result: Any, *culprits: str) -> str:
    """Exit status 2, stderr is exactly one non-empty ``error:`` line naming every culprit."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("error:"), line
    for culprit in culprits:
        assert culprit in line, f"{culprit!r} not named in: {line}"
    return line


# -- study files -------------------------------------------------------------------------------


def _mutated(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        data = tiny_study_data()
        change(data)
        return write_yaml(folder / "study.yaml", data)

    return build


def _text(text: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "study.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    return build


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets ``a.b.c`` (dict keys only) to ``value``."""

    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[last] = value

    return change


def _both(*changes: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        for c in changes:
            c(data)

    return change


def _missing_file(folder: Path) -> Path:
    return folder / "no-such-study.yaml"


_LR = "space.learning_rate"

# (id, build(folder) -> study file, culprits named in the error line)
BAD_FILES: list[tuple[str, Callable[[Path], Path], tuple[str, ...]]] = [
    ("yaml-colon", _text("name: tiny: oops\nseed: 0\n"), (FILE, "malformed YAML")),
    (
        "yaml-unclosed-bracket",
        _text("name: tiny\ndomains: [cipher, equations\nseed: 0\n"),
        (FILE, "malformed YAML"),
    ),
    ("top-level-list", _text("- name: tiny\n- seed: 0\n"), (FILE, "mapping")),
    ("top-level-scalar", _text("just a string\n"), (FILE, "mapping")),
    ("empty-file", _text(""), (FILE, "mapping")),
    ("unknown-top-level-key", _mutated(_set("colour", "red")), ("colour", "unknown key")),
    ("unknown-nested-key", _mutated(_set("policy.alhpa", 0.1)), ("policy.alhpa", "unknown key")),
    ("wrong-type", _mutated(_set("rounds.candidates", "eight")), ("rounds.candidates",)),
    ("missing-required", _mutated(lambda d: d.pop("rounds")), ("rounds", "missing")),
    ("empty-bounds", _mutated(_set(f"{_LR}.high", 3.1622776601683794e-06)), (_LR,)),
    (
        "inverted-bounds-int",
        _mutated(_both(_set("space.epochs.low", 10), _set("space.epochs.high", 1))),
        ("space.epochs",),
    ),
    (
        "inverted-bounds-float",
        _mutated(
            _both(_set("space.template_share.low", 1.0), _set("space.template_share.high", 0.0))
        ),
        ("space.template_share",),
    ),
    ("nan-bound", _mutated(_set("space.lora_dropout.high", math.nan)), ("space.lora_dropout",)),
    ("inf-bound", _mutated(_set("space.lora_dropout.high", math.inf)), ("space.lora_dropout",)),
    ("log-low-zero", _mutated(_set(f"{_LR}.low", 0.0)), (_LR,)),
    ("log-low-negative", _mutated(_set(f"{_LR}.low", -1e-5)), (_LR,)),
    (
        "weights-sum",
        _mutated(
            _set(
                "domains", [{"name": "cipher", "weight": 0.5}, {"name": "equations", "weight": 0.6}]
            )
        ),
        ("domains", "sum"),
    ),
    (
        "weights-partial",
        _mutated(_set("domains", [{"name": "cipher", "weight": 1.0}, {"name": "equations"}])),
        ("domains",),
    ),
    (
        "mixture-unknown-domain",
        _mutated(_set("space.mixture.domains", ["cipher", "gravity"])),
        ("space.mixture.domains", "gravity"),
    ),
    (
        "duplicate-domains",
        _mutated(_set("domains", [{"name": "cipher"}, {"name": "cipher"}, {"name": "equations"}])),
        ("domains",),
    ),
    (
        "categorical-one-choice",
        _mutated(_set("space.lora_rank.choices", [8])),
        ("space.lora_rank",),
    ),
    ("per-round-over-candidates", _mutated(_set("external.per_round", 4)), ("external.per_round",)),
    ("name-slash", _mutated(_set("name", "team/tiny")), ("name", "team/tiny")),
    ("name-unicode", _mutated(_set("name", "tiny-étude")), ("name", "tiny-étude")),
    (
        "backend-no-module",
        _mutated(_set("backend.name", "nosuchmodule.x:Backend")),
        ("backend.name", "nosuchmodule.x"),
    ),
    (
        "backend-no-class",
        _mutated(_set("backend.name", "json:NoSuchClass")),
        ("backend.name", "NoSuchClass"),
    ),
    ("backend-unknown-builtin", _mutated(_set("backend.name", "simulatd")), ("backend.name",)),
    (
        "simulated-unknown-option",
        _mutated(_set("backend.options.frobnicate", 1)),
        ("backend.options", "frobnicate"),
    ),
    ("file-missing", _missing_file, (FILE, "not found")),
    ("tracking-one", _mutated(_set("policy.tracking", 1.0)), ("policy.tracking",)),
    ("tracking-zero", _mutated(_set("policy.tracking", 0.0)), ("policy.tracking",)),
    ("threshold-one", _mutated(_set("policy.threshold", 1.0)), ("policy.threshold",)),
    ("surrogate-unknown", _mutated(_set("policy.surrogate", "lmc")), ("policy.surrogate",)),
    # Two submissions can never feed the validity test: the switch asked for cannot happen.
    (
        "too-few-submissions-for-the-test",
        _mutated(_set("policy.switch", True)),
        ("external.total", "policy.switch"),
    ),
]


def _command(kind: str, study: Path, folder: Path) -> list[str]:
    if kind == "validate":
        return ["study", "validate", str(study)]
    return ["study", "create", str(study), "--storage", sqlite_url(folder / "s.db")]


def _file_params() -> list[Any]:
    return [
        pytest.param(kind, build, culprits, id=f"{kind}-{case}")
        for kind in ("validate", "create")
        for case, build, culprits in BAD_FILES
    ]


@pytest.mark.parametrize(("kind", "build", "culprits"), _file_params())
def test_bad_study_file(
    kind: str, build: Callable[[Path], Path], culprits: tuple[str, ...], tmp_path: Path
) -> None:
    study = build(tmp_path)
    result = run_cli(*_command(kind, study, tmp_path))
    names = tuple(str(study) if c == FILE else c for c in culprits)
    assert_one_line_error(result, *names)
    assert "Traceback" not in result.stdout + result.stderr


# -- storage ---------------------------------------------------------------------------------------


def test_storage_unreachable_server_hides_password(tiny_study: Path) -> None:
    # Nothing listens on port 1; without a PostgreSQL driver installed the error is the missing
    # driver instead. Either way: one line, and never the password.
    url = "postgresql://user:secretpw@127.0.0.1:1/db"
    for args in (
        ["study", "create", str(tiny_study), "--storage", url],
        ["study", "status", "tiny", "--storage", url],
        ["study", "list", "--storage", url],
    ):
        result = run_cli(*args, timeout=120)
        line = assert_one_line_error(result, "127.0.0.1:1")
        assert "secretpw" not in result.stdout + result.stderr, line


def test_storage_sqlite_folder_missing(tiny_study: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    url = sqlite_url(missing / "s.db")
    result = run_cli("study", "create", str(tiny_study), "--storage", url)
    assert_one_line_error(result, str(missing))
    assert not missing.exists()


def test_storage_no_such_study(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "s.db")
    # Reading a database file that does not exist is an error, and creates nothing.
    assert_one_line_error(run_cli("study", "list", "--storage", url), "s.db")
    assert not (tmp_path / "s.db").exists()
    from searchlab.store import Storage

    Storage(url, create=True)  # an empty searchlab storage
    assert run_cli("study", "list", "--storage", url).returncode == 0
    result = run_cli("study", "status", "nosuchstudy", "--storage", url, "--json")
    assert_one_line_error(result, "nosuchstudy")


# -- nothing stored is lost ------------------------------------------------------------------------


def test_failed_create_leaves_stored_study_unchanged(tiny_study: Path, tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "s.db")
    created = run_cli("study", "create", str(tiny_study), "--storage", url, "--quiet")
    assert created.returncode == 0, created.stderr
    before = run_cli("study", "status", "tiny", "--storage", url, "--json")
    assert before.returncode == 0, before.stderr
    state = json.loads(before.stdout)
    assert state["finished"] is True and state["rounds_done"] == 2

    again = run_cli("study", "create", str(tiny_study), "--storage", url, "--quiet")
    assert_one_line_error(again, "'tiny'", "already exists")

    broken = tiny_study.with_name("broken.yaml")
    broken.write_text(tiny_study.read_text(encoding="utf-8") + "rounds: [\n", encoding="utf-8")
    bad = run_cli("study", "create", str(broken), "--storage", url, "--quiet")
    assert_one_line_error(bad, str(broken))

    invalid = write_yaml(tmp_path / "invalid.yaml", {**tiny_study_data(), "colour": "red"})
    bad = run_cli("study", "create", str(invalid), "--storage", url, "--quiet")
    assert_one_line_error(bad, "colour")

    after = run_cli("study", "status", "tiny", "--storage", url, "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == state
    listed = run_cli("study", "list", "--storage", url)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["tiny"]
    assert "finished" in listed.stdout


def test_create_with_broken_backend_stores_nothing(tiny_study: Path, tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "s.db")
    data = tiny_study_data()
    data["backend"]["name"] = "nosuchmodule.x:Backend"
    broken = write_yaml(tmp_path / "broken.yaml", data)
    assert_one_line_error(
        run_cli("study", "create", str(broken), "--storage", url, "-q"), "backend.name"
    )
    # Nothing was stored: not even the database file was created.
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize(
    ("argv", "culprit"),
    [
        (("bench", "search", "--rounds", "2"), "--rounds"),
        (("bench", "search", "--threshold", "1"), "--threshold"),
        (("validity", "corpus", "--submissions", "0"), "--submissions"),
        (("study", "status", "--no-such-option"), "--no-such-option"),
        (("study", "status"), "name"),
        (("study", "frobnicate"), "frobnicate"),
    ],
)
def test_usage_errors_are_one_line(argv: tuple[str, ...], culprit: str) -> None:
    """A bad option value, an unknown option or command, a missing argument: one line, exit 2."""
    assert_one_line_error(run_cli(*argv), culprit)


def test_a_command_group_without_a_command_shows_its_help() -> None:
    result = run_cli("study")
    assert result.returncode == 2
    assert "create" in result.stdout + result.stderr  # the group's commands are listed
    assert "error:" not in result.stdout + result.stderr
