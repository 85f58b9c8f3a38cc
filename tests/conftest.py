"""Shared fixtures and helpers: a tiny valid study, and the ``searchlab`` CLI in a subprocess.

The environment is set before anything imports torch: one OpenMP thread (on small shared CPUs
torch's thread pool spin-waits), a throw-away Hugging Face cache, and no network for the hub.
Subprocesses started by :func:`run_cli` inherit it.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
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
    "policy": {"warmup_rounds": 1},
}

# The working folder of every CLI subprocess: empty, and not a test's tmp_path, so that nothing is
# importable from it (``python -m`` puts the working folder on sys.path) and a forgotten
# --storage cannot write a searchlab.db into the repository.
_NEUTRAL_CWD: str | None = None


def tiny_study_data() -> dict[str, Any]:
    """A fresh (deep) copy of the tiny study as a dict, for tests to mutate."""
    return copy.deepcopy(_TINY_STUDY)


def write_yaml(path: Path | str, data: Any) -> Path:
    """Writes ``data`` as YAML (``.nan``/``.inf`` for non-finite floats) and returns the path."""
    path = Path(path)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m searchlab.cli ARGS`` and captures its output as text.

    Args:
        *args: The command-line arguments.
        env: Variables added to (and overriding) this process's environment.
        timeout: Seconds before the subprocess is killed (the test then fails).
    """
    global _NEUTRAL_CWD
    if _NEUTRAL_CWD is None:
        _NEUTRAL_CWD = tempfile.mkdtemp(prefix="searchlab-cwd-")
    full_env = {**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "searchlab.cli", *map(str, args)],
        cwd=_NEUTRAL_CWD,
        env=full_env,
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


@pytest.fixture
def tiny_study(tmp_path: Path) -> Path:
    """A small valid study file: 2 domains, the simulated back end, 2 rounds of 3 candidates."""
    return write_yaml(tmp_path / "tiny.yaml", tiny_study_data())
