"""A study file is not a way in: hostile study files get one ``error:`` line and exit status 2.

Covers the back-end loading rules (built-in names, entry points, ``module:Class`` only with
``--trust-backend`` or ``SEARCHLAB_TRUST_BACKEND=1``, a class checked before it is called) and
the input limits of :mod:`searchlab.config` (YAML aliases and duplicate keys, numeric ranges,
names, domain count, seed, candidates per round, colliding categorical choices).
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_cli, sqlite_url, tiny_study_data, write_yaml

from searchlab.backends import TRUST_ENV, load_backend
from searchlab.config import load_study_file, validate_study
from searchlab.errors import BackendError, StudyFileError

USER_MODULE = '''
"""A user's back end, and a marker that says whether the module was imported."""

import os

if os.environ.get("HOSTILE_MARKER"):
    open(os.environ["HOSTILE_MARKER"], "w").close()


class UserBackend:
    def __init__(self, *, domains, weights, seed, **options):
        self.domains = list(domains)

    def train(self, recipe, *, candidate, seed):
        return {"candidate": candidate}

    def evaluate(self, artefact):
        return {d: 0.5 for d in self.domains}

    def submit_external(self, artefact, *, submission):
        return {d: 0.5 for d in self.domains}


def make_backend(**kwargs):
    raise AssertionError("a function named as a back end must never be called")
'''

ZEN = "Beautiful is better than ugly"


def assert_one_line_error(result: Any, *culprits: str) -> str:
    """Exit status 2, stderr is one ``error:`` line naming every culprit, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith("error:"), lines[0]
    for culprit in culprits:
        assert culprit in lines[0], f"{culprit!r} not named in: {lines[0]}"
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


@pytest.fixture
def user_module(tmp_path: Path) -> dict[str, str]:
    """Writes ``hostileuser.py`` into its own folder; returns the environment that finds it."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "hostileuser.py").write_text(textwrap.dedent(USER_MODULE), encoding="utf-8")
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    # TRUST_ENV empty: an opt-in in the developer's own environment must not leak in.
    return {"PYTHONPATH": path, "HOSTILE_MARKER": str(tmp_path / "imported"), TRUST_ENV: ""}


def _study(folder: Path, /, **changes: Any) -> Path:
    data = tiny_study_data()
    data.update(changes)
    return write_yaml(folder / "study.yaml", data)


def _with_backend(folder: Path, backend: str, **options: Any) -> Path:
    return _study(folder, backend={"name": backend, "options": options})


def _validate(study: Path, *flags: str, env: dict[str, str] | None = None) -> Any:
    return run_cli("study", "validate", str(study), *flags, env=env)


def _no_traceback(result: Any) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


# -- back ends ---------------------------------------------------------------------------------


def test_import_path_refused_without_opt_in(tmp_path: Path) -> None:
    # `this` prints the Zen of Python when imported: it must not even be imported.
    result = _validate(_with_backend(tmp_path, "this:d"), env={TRUST_ENV: ""})
    assert_one_line_error(result, "backend.name", "this:d", "--trust-backend", TRUST_ENV)
    assert ZEN not in result.stdout + result.stderr
    _no_traceback(result)


def test_import_path_refused_without_opt_in_imports_nothing(
    tmp_path: Path, user_module: dict[str, str]
) -> None:
    study = _with_backend(tmp_path, "hostileuser:UserBackend")
    for command in (
        ["study", "validate", str(study)],
        ["study", "create", str(study), "--storage", sqlite_url(tmp_path / "s.db"), "-q"],
    ):
        result = run_cli(*command, env=user_module)
        assert_one_line_error(result, "backend.name", "hostileuser:UserBackend", "--trust-backend")
    assert not (tmp_path / "imported").exists(), "the module was imported without the opt-in"
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_import_path_accepted_with_opt_in(
    tmp_path: Path, user_module: dict[str, str], how: str
) -> None:
    study = _with_backend(tmp_path, "hostileuser:UserBackend")
    if how == "flag":
        result = _validate(study, "--trust-backend", env=user_module)
    else:
        result = _validate(study, env={**user_module, TRUST_ENV: "1"})
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert (tmp_path / "imported").exists()


def test_function_refused_even_with_opt_in(tmp_path: Path, user_module: dict[str, str]) -> None:
    result = _validate(
        _with_backend(tmp_path, "hostileuser:make_backend"), "--trust-backend", env=user_module
    )
    assert_one_line_error(result, "backend.name", "hostileuser:make_backend", "not a class")
    _no_traceback(result)


def test_torch_hub_load_refused_even_with_opt_in(tmp_path: Path) -> None:
    # torch.hub.load(repo_or_dir, model, source="local") would execute repo/hubconf.py.
    repo = tmp_path / "repo"
    repo.mkdir()
    marker = tmp_path / "hubconf-ran"
    (repo / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf-8")
    study = _with_backend(
        tmp_path, "torch.hub:load", repo_or_dir=str(repo), model="m", source="local"
    )
    for flags in ((), ("--trust-backend",)):
        result = _validate(study, *flags)
        assert_one_line_error(result, "backend.name", "torch.hub:load")
        _no_traceback(result)
        assert not marker.exists(), "hubconf.py was executed"
    assert "not a class" in result.stderr


def test_entry_point_backend_needs_no_opt_in(tmp_path: Path, user_module: dict[str, str]) -> None:
    # An installed package registers its back end in the entry-point group searchlab.backends.
    folder = Path(user_module["PYTHONPATH"].split(os.pathsep)[0])
    dist = folder / "hostileuser-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: hostileuser\nVersion: 0.1\n", encoding="utf-8"
    )
    (dist / "entry_points.txt").write_text(
        "[searchlab.backends]\nhostile-user = hostileuser:UserBackend\n", encoding="utf-8"
    )
    result = _validate(_with_backend(tmp_path, "hostile-user"), env=user_module)
    assert result.returncode == 0, result.stderr


def test_unknown_plain_name_lists_the_known_ones(tmp_path: Path) -> None:
    result = _validate(_with_backend(tmp_path, "simulatd"))
    assert_one_line_error(result, "backend.name", "simulatd", "simulated")


@pytest.mark.parametrize("command", ["resume", "coordinator", "worker"])
def test_stored_import_path_needs_opt_in_again(tmp_path: Path, command: str) -> None:
    from searchlab.store import Storage

    url = sqlite_url(tmp_path / "s.db")
    data = tiny_study_data()
    data["backend"] = {"name": "this:d"}
    Storage(url, create=True).create(validate_study(data, source="test"))
    args = ["study", "resume"] if command == "resume" else [command]
    result = run_cli(*args, "tiny", "--storage", url, env={TRUST_ENV: ""})
    assert_one_line_error(result, "backend.name", "this:d", "--trust-backend")
    assert ZEN not in result.stdout + result.stderr


def test_api_refuses_import_path_without_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRUST_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "this", raising=False)
    with pytest.raises(BackendError, match=r"backend\.name 'this:d'.*--trust-backend"):
        load_backend("this:d", {}, domains=["a"], weights={"a": 1.0}, seed=0)
    assert "this" not in sys.modules


def test_api_trust_comes_from_the_environment_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user_module: dict[str, str]
) -> None:
    monkeypatch.syspath_prepend(user_module["PYTHONPATH"].split(os.pathsep)[0])
    monkeypatch.delitem(sys.modules, "hostileuser", raising=False)
    args: dict[str, Any] = {"domains": ["a"], "weights": {"a": 1.0}, "seed": 0}
    monkeypatch.setenv(TRUST_ENV, "1")
    backend = load_backend("hostileuser:UserBackend", {}, **args)
    assert backend.evaluate({}) == {"a": 0.5}
    # An explicit trust=False wins over the environment.
    with pytest.raises(BackendError, match="--trust-backend"):
        load_backend("hostileuser:UserBackend", {}, trust=False, **args)
    monkeypatch.delenv(TRUST_ENV)
    with pytest.raises(BackendError, match="--trust-backend"):
        load_backend("hostileuser:UserBackend", {}, **args)


def test_api_class_checked_before_it_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.hub

    calls: list[Any] = []
    monkeypatch.setattr(torch.hub, "load", lambda *a, **k: calls.append((a, k)))
    with pytest.raises(BackendError, match="not a class"):
        load_backend(
            "torch.hub:load",
            {"repo_or_dir": "x", "model": "y"},
            domains=["a"],
            weights={"a": 1.0},
            seed=0,
            trust=True,
        )
    assert calls == []


# -- YAML ----------------------------------------------------------------------------------------


def _bomb_study(folder: Path) -> Path:
    """A study whose back-end options are a 'billion laughs': 9**9 strings once expanded."""
    data = tiny_study_data()
    data.pop("backend")
    levels = ["    l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    for i in range(1, 9):
        levels.append(f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    text = (
        yaml.safe_dump(data, sort_keys=False)
        + "backend:\n  name: simulated\n  options:\n"
        + "\n".join(levels)
        + "\n"
    )
    path = folder / "bomb.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_alias_bomb_refused_before_expansion(tmp_path: Path) -> None:
    bomb = _bomb_study(tmp_path)
    size = bomb.stat().st_size
    assert size < 2500, size
    with pytest.raises(StudyFileError, match="anchors"):
        load_study_file(bomb)
    result = _validate(bomb)
    assert_one_line_error(result, str(bomb), "anchors")
    _no_traceback(result)


@pytest.mark.parametrize(
    ("text", "culprits"),
    [
        pytest.param("name: a\nseed: 1\nseed: 2\n", ("seed", "duplicate key"), id="top-level"),
        pytest.param(
            "space:\n  lr: {type: float, low: 1.0e-5, high: 1.0e-3}\n  lr: {type: int}\n",
            ("space.lr", "duplicate key"),
            id="parameter",
        ),
        pytest.param(
            "space:\n  lr:\n    type: float\n    low: 1\n    low: 2\n",
            ("space.lr.low", "duplicate key"),
            id="nested",
        ),
        pytest.param("a: {x: 1}\nb:\n  <<: {x: 1}\n", ("b", "merge keys"), id="merge-key"),
        pytest.param("x: " + "[" * 100 + "]" * 100 + "\n", ("deeper",), id="deep-nesting"),
        pytest.param("seed: " + "9" * 5000 + "\n", ("malformed YAML",), id="huge-integer"),
        pytest.param("x: *nowhere\n", ("aliases",), id="alias"),
    ],
)
def test_yaml_constructs_refused(tmp_path: Path, text: str, culprits: tuple[str, ...]) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(text, encoding="utf-8")
    result = _validate(path)
    assert_one_line_error(result, str(path), *culprits)
    _no_traceback(result)


def test_file_over_one_mib_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("description: '" + "x" * (1 << 20) + "'\n", encoding="utf-8")
    with pytest.raises(StudyFileError, match="larger than"):
        load_study_file(path)


# -- numbers, names and sizes ----------------------------------------------------------------------


def _space(key: str, param: dict[str, Any]) -> dict[str, Any]:
    space = tiny_study_data()["space"]
    space[key] = param
    return space


def _domains(n: int) -> list[dict[str, str]]:
    return [{"name": f"d{i}"} for i in range(n)]


BAD_VALUES: list[Any] = [
    pytest.param({"rounds": {"candidates": 1, "count": 2}}, ("rounds.candidates",), id="cand-1"),
    pytest.param(
        {"space": _space("epochs", {"type": "int", "low": 0, "high": 10**12})},
        ("space.epochs", "10000"),
        id="int-range-1e12",
    ),
    pytest.param(
        {"space": _space("epochs", {"type": "int", "low": 1, "high": 10**12, "log": True})},
        ("space.epochs", "10000"),
        id="int-range-log",
    ),
    pytest.param(
        {"space": _space("lora_dropout", {"type": "float", "low": -1e308, "high": 1e308})},
        ("space.lora_dropout", "low"),
        id="float-1e308",
    ),
    pytest.param(
        {"space": _space("lora_dropout", {"type": "float", "low": 0.0, "high": 1e7})},
        ("space.lora_dropout", "high"),
        id="float-1e7",
    ),
    pytest.param({"name": "small\n"}, ("name", "small"), id="name-newline"),
    pytest.param({"name": "x" * 101}, ("name",), id="name-long"),
    pytest.param({"name": "ti\x1bny"}, ("name",), id="name-escape"),
    pytest.param({"domains": _domains(200)}, ("domains", "32"), id="200-domains"),
    pytest.param(
        {"domains": [{"name": "cipher\n"}, {"name": "equations"}]},
        ("domains[0].name",),
        id="domain-newline",
    ),
    pytest.param({"seed": -1}, ("seed",), id="seed-negative"),
    pytest.param({"seed": 2**70}, ("seed",), id="seed-2**70"),
    pytest.param(
        {"space": _space("lora_rank", {"type": "categorical", "choices": [0, False, 1, True]})},
        ("space.lora_rank.choices",),
        id="choices-0-false-1-true",
    ),
]


@pytest.mark.parametrize(("changes", "culprits"), BAD_VALUES)
def test_bad_values_through_the_cli(
    tmp_path: Path, changes: dict[str, Any], culprits: tuple[str, ...]
) -> None:
    study = _study(tmp_path, **changes)
    result = _validate(study)
    assert_one_line_error(result, str(study), *culprits)
    _no_traceback(result)


@pytest.mark.parametrize(
    "choices",
    [
        [0, False, 1, True],
        [1, True, "1", 1.0],
        [1, "1"],
        [1, 1.0],
        ["2", " 2"],
        ["true", True],
        [True, 2],
        [0.5, 0.5],
    ],
)
def test_colliding_choices_refused(choices: list[Any]) -> None:
    data = tiny_study_data()
    data["space"]["lora_rank"] = {"type": "categorical", "choices": choices}
    with pytest.raises(StudyFileError, match=r"space\.lora_rank\.choices"):
        validate_study(data, source="test")


def test_distinct_choices_still_accepted() -> None:
    data = tiny_study_data()
    data["space"]["lora_rank"] = {"type": "categorical", "choices": ["adam", "Adam", "1.5", 2]}
    data["space"]["flag"] = {"type": "categorical", "choices": [True, False]}
    validate_study(data, source="test")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"space": {**_space("lr\n", {"type": "float", "low": 0.0, "high": 1.0})}}, "space"),
        ({"description": "ok\x07"}, "description"),
        ({"description": "x" * 10_001}, "description"),
        ({"backend": {"name": "simulated\n"}}, "backend.name"),
        ({"rounds": {"candidates": 3, "count": 2}, "policy": {"warmup_rounds": 10**6}}, "policy"),
    ],
)
def test_other_limits(changes: dict[str, Any], field: str) -> None:
    data = tiny_study_data()
    data.update(changes)
    with pytest.raises(StudyFileError, match=field):
        validate_study(data, source="test")


def test_limits_at_their_edges_are_accepted() -> None:
    data = tiny_study_data()
    data["seed"] = 2**32 - 1
    data["space"]["epochs"] = {"type": "int", "low": 0, "high": 10_000}
    data["space"]["lora_dropout"] = {"type": "float", "low": -1e6, "high": 1e6}
    data["rounds"] = {"candidates": 2, "count": 2}
    data["description"] = "line one\nline two\twith a tab"
    config = validate_study(data, source="test")
    assert config.with_overrides(seed=0).seed == 0
    names = [d["name"] for d in _domains(32)]
    data = tiny_study_data()
    data["domains"] = [{"name": n} for n in names]
    data["space"]["mixture"]["domains"] = names[:2]
    data["backend"] = {"name": "simulated"}
    validate_study(data, source="test")


# -- --seed and nothing stored -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_seed", "flags"),
    [
        pytest.param(-1, (), id="file-seed--1"),
        pytest.param(2**70, (), id="file-seed-2**70"),
        pytest.param(0, ("--seed", "-5"), id="flag-seed--5"),
        pytest.param(0, ("--seed", str(2**70)), id="flag-seed-2**70"),
    ],
)
def test_bad_seed_stores_nothing(tmp_path: Path, file_seed: int, flags: tuple[str, ...]) -> None:
    from searchlab.store import Storage

    url = sqlite_url(tmp_path / "s.db")
    Storage(url, create=True)  # an empty storage: afterwards it must still hold no study
    study = _study(tmp_path, seed=file_seed)
    result = run_cli("study", "create", str(study), "--storage", url, "-q", *flags)
    assert_one_line_error(result, "seed")
    _no_traceback(result)
    assert Storage(url).names() == []


def test_with_overrides_validates_the_seed() -> None:
    config = validate_study(tiny_study_data(), source="test")
    for seed in (-5, 2**32, 2**70):
        with pytest.raises(StudyFileError, match="command line: seed"):
            config.with_overrides(seed=seed)
