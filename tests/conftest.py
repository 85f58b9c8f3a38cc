"""Shared fixtures and helpers: a tiny valid study, and the ``searchlab`` CLI in a subprocess.

The environment is set before anything imports torch: one OpenMP thread (on small shared CPUs
torch's thread pool spin-waits), a throw-away Hugging Face cache, and no network for the hub.
Subprocesses started by :func:`run_cli` inherit it.
"""

from __future__ import annotations

import copy
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
if not os.environ.get("HF_HOME"):
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="searchlab-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import yaml

from searchlab.simulation import canonical_space  # numpy/scipy only: no torch yet

_TINY_STUDY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "description": "A tiny simulated study for the tests.",
    "domains": [{"name": "cipher"}, {"name": "equations"}],
    "space": canonical_space(("cipher", "equations")),
    "backend": {
        "name": "simulated",
        "options": {"variant": "goodhart", "weak_domains": ["equations"]},
    },
    "rounds": {"candidates": 3, "count": 2},
    "external": {"per_round": 1, "total": 2},
    # Two submissions are too few for the validity test: a dev-only search.
    "policy": {"warmup_rounds": 1, "switch": False},
}

# The working folder of every CLI subprocess: empty, and not a test's tmp_path, so that nothing is
# importable from it (``python -m`` puts the working folder on sys.path) and a forgotten
# --storage cannot write a searchlab.db into the repository.
_NEUTRAL_CWD: str | None = None


def simulated_study(
    name: str, seed: int, domains: list[str], *, options: dict[str, Any], **sections: Any
) -> dict[str, Any]:
    """A study of the simulated back end over ``domains`` with its full recipe space (mixture,
    learning rate, epochs, LoRA rank, template share, dropout); ``sections`` (rounds,
    external, policy) are the study file's, given whole."""
    return {
        "name": name,
        "seed": seed,
        "domains": [{"name": d} for d in domains],
        "space": {
            "mixture": {"type": "mixture", "domains": list(domains)},
            "learning_rate": {"type": "float", "low": 3e-6, "high": 3e-4, "log": True},
            "epochs": {"type": "int", "low": 1, "high": 10},
            "lora_rank": {"type": "categorical", "choices": [8, 16, 32]},
            "template_share": {"type": "float", "low": 0.0, "high": 1.0},
            "lora_dropout": {"type": "float", "low": 0.0, "high": 0.3},
        },
        "backend": {"name": "simulated", "options": options},
        **sections,
    }


def tiny_study_data() -> dict[str, Any]:
    """A fresh (deep) copy of the tiny study as a dict, for tests to mutate."""
    return copy.deepcopy(_TINY_STUDY)


def six_domain_surrogates(n: int, *, external: bool = True) -> tuple[Any, Any, list[Any]]:
    """``(history, space, surrogates)``: ``bench._history(n, 0)`` over the six simulated domains
    and one fitted surrogate per domain (dev only with ``external=False``: a quick fit)."""
    import numpy

    from searchlab.bench import _history
    from searchlab.simulation import DOMAINS
    from searchlab.surrogate import DomainSurrogate

    h = _history(n, 0)
    space = h["space"]
    empty = numpy.zeros((0, space.dim))
    surrogates = []
    for i, d in enumerate(DOMAINS):
        s = DomainSurrogate(
            dim=space.dim, simplex_groups=space.simplex_groups(), resolution=0.01, seed=i
        )
        if external:
            s.fit(h["x"], h["dev"][d], h["x"][h["ext_rows"]], h["ext"][d])
        else:
            s.fit(h["x"], h["dev"][d], empty, empty[:, 0])
        surrogates.append(s)
    return h, space, surrogates


def write_yaml(path: Path | str, data: Any) -> Path:
    """Writes ``data`` as YAML (``.nan``/``.inf`` for non-finite floats) and returns the path."""
    path = Path(path)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m searchlab.cli ARGS`` and captures its output as text.

    Args:
        *args: The command-line arguments.
        env: Variables added to (and overriding) this process's environment.
        timeout: Seconds before the subprocess is killed (the test then fails).
        stdin: Text for its standard input (none: it reads end of file).
    """
    global _NEUTRAL_CWD
    if _NEUTRAL_CWD is None:
        _NEUTRAL_CWD = tempfile.mkdtemp(prefix="searchlab-cwd-")
    full_env = {**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "searchlab.cli", *map(str, args)],
        cwd=_NEUTRAL_CWD,
        env=full_env,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        check=False,
    )


def sqlite_url(path: Path | str) -> str:
    """An SQLAlchemy URL for an SQLite file at an absolute path."""
    return f"sqlite:///{Path(path).resolve()}"


# The simulated back end slowed down (a sleep per training), so that signals and workers land
# mid-round; it logs every training it starts and every submission it receives, with its process
# id, which is how tests know what ran where independently of what searchlab stored.
SLOW_BACKEND = textwrap.dedent(
    """
    import json, os, time
    from searchlab.backends import SimulatedBackend

    class SlowSimulated(SimulatedBackend):
        def __init__(self, *, log, delay=0.3, **kw):
            super().__init__(**kw)
            self.log, self.delay = log, delay

        def _write(self, **row):
            with open(self.log, "a") as f:
                f.write(json.dumps({**row, "pid": os.getpid(), "t": time.time()}) + "\\n")

        def train(self, recipe, *, candidate, seed):
            self._write(event="train", candidate=candidate)
            time.sleep(self.delay)
            return super().train(recipe, candidate=candidate, seed=seed)

        def submit_external(self, artefact, *, submission):
            self._write(event="submit", candidate=artefact["candidate"], submission=submission)
            return super().submit_external(artefact, submission=submission)
    """
)


def slow_study_file(
    folder: Path,
    *,
    name: str,
    seed: int,
    delay: float,
    candidates: int,
    rounds: int,
    budget: int,
) -> tuple[Path, Path]:
    """Writes ``slowbackend.py`` and a study on it (the tiny study's domains and space) to
    ``folder``; ``folder`` must be on the subprocesses' PYTHONPATH.

    Returns:
        (the study file, the back end's log file).
    """
    (folder / "slowbackend.py").write_text(SLOW_BACKEND)
    log = folder / f"{name}.log"
    data = tiny_study_data()
    data.pop("description")
    data.update(
        name=name,
        seed=seed,
        backend={
            "name": "slowbackend:SlowSimulated",
            "options": {"log": str(log), "delay": delay, "weak_domains": ["equations"]},
        },
        rounds={"candidates": candidates, "count": rounds},
        external={"per_round": 2, "total": budget},
    )
    return write_yaml(folder / f"{name}.yaml", data), log


@pytest.fixture
def tiny_study(tmp_path: Path) -> Path:
    """A small valid study file: 2 domains, the simulated back end, 2 rounds of 3 candidates."""
    return write_yaml(tmp_path / "tiny.yaml", tiny_study_data())


# A throw-away PostgreSQL cluster (tests/test_workers.py, tests/test_lease.py).


def _pg_bin() -> tuple[str, str] | None:
    for folder in [None, *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        initdb = shutil.which("initdb", path=folder)
        pg_ctl = shutil.which("pg_ctl", path=folder)
        if initdb and pg_ctl:
            return initdb, pg_ctl
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL server on loopback in a temporary folder, for this test session."""
    pytest.importorskip("psycopg")
    found = _pg_bin()
    if found is None:
        pytest.skip("PostgreSQL server programs (initdb, pg_ctl) not found")
    initdb, pg_ctl = found
    prefix: list[str] = []
    folder = tempfile.mkdtemp(prefix="searchlab-pg-")
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run initdb as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        runuser = shutil.which("runuser")
        prefix = [runuser, "-u", "postgres", "--"] if runuser else ["su", "postgres", "-c"]
        if not runuser:
            pytest.skip("running as root without runuser")
    data = os.path.join(folder, "data")
    port = _free_port()
    subprocess.run(
        [*prefix, initdb, "-D", data, "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
    subprocess.run(
        [*prefix, pg_ctl, "-D", data, "-o", options, "-l", f"{folder}/log", "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", data, "-m", "immediate", "stop"], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def slow_study_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a CLI subprocess that runs a :func:`slow_study_file` study."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    # The study names slowbackend:SlowSimulated, the test's own module: opt in to importing it.
    env["SEARCHLAB_TRUST_BACKEND"] = "1"
    return env


def slow_study_cli(*args: str) -> list[str]:
    """The ``searchlab`` command line as a subprocess of this interpreter."""
    return [sys.executable, "-m", "searchlab.cli", *args]
