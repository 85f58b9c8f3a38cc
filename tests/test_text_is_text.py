"""Text that comes from data is printed as text: rich markup in it is neither applied nor fatal.

A back end's error ``node [/gpu-01] lost`` (a closing tag with nothing open: rich raises
MarkupError), a categorical choice ``[bold]sgd`` and an output folder ``rep[/x]`` go through the
CLI in subprocesses and come out verbatim.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from conftest import run_cli, sqlite_url, tiny_study_data, write_yaml

LOST = "node [/gpu-01] lost"
CHOICES = ["[bold]sgd", "[bold]sgd[/bold] [/x] :smile:"]

MODULE = f'''
from searchlab.backends import SimulatedBackend


class LosesANode(SimulatedBackend):
    """The simulated back end, whose training of candidate 1 fails with markup in the message."""

    def train(self, recipe, *, candidate, seed):
        if candidate == 1:
            raise RuntimeError({LOST!r})
        return super().train(recipe, candidate=candidate, seed=seed)
'''


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """A finished study (one candidate failed with ``LOST``); its storage URL and CLI env."""
    folder = tmp_path_factory.mktemp("text")
    (folder / "marked.py").write_text(textwrap.dedent(MODULE), encoding="utf-8")
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    # The import-path back end needs the opt-in where the loader asks for one.
    env = {"PYTHONPATH": path, "SEARCHLAB_TRUST_BACKEND": "1", "COLUMNS": "200"}
    data = tiny_study_data()
    data["backend"] = {
        "name": "marked:LosesANode",
        "options": {"variant": "goodhart", "weak_domains": ["equations"]},
    }
    data["space"]["optimizer"] = {"type": "categorical", "choices": CHOICES}
    url = sqlite_url(folder / "s.db")
    # Not --quiet: the live progress prints the failure.
    created = run_cli(
        "study", "create", str(write_yaml(folder / "s.yaml", data)), "--storage", url, env=env
    )
    assert created.returncode == 0, f"stdout: {created.stdout}\nstderr: {created.stderr}"
    assert LOST in created.stderr, created.stderr
    assert "MarkupError" not in created.stderr
    return url, env


def test_failure_with_markup_survives_create_and_audit(study: tuple[str, dict[str, str]]) -> None:
    url, env = study
    audit = run_cli("study", "audit", "tiny", "--storage", url, env=env)
    assert audit.returncode == 0, audit.stderr
    assert LOST in audit.stdout
    for args in (("study", "status", "tiny"), ("study", "list")):
        r = run_cli(*args, "--storage", url, env=env)
        assert r.returncode == 0, r.stderr


def test_categorical_choice_with_markup_is_verbatim(study: tuple[str, dict[str, str]]) -> None:
    url, env = study
    audit = run_cli("study", "audit", "tiny", "--storage", url, env=env)
    assert audit.returncode == 0, audit.stderr
    assert "[bold]sgd" in audit.stdout
    # Emoji codes are text too, where the second choice was proposed.
    assert "\N{SMILING FACE WITH OPEN MOUTH AND SMILING EYES}" not in audit.stdout


def test_report_into_a_folder_named_with_markup(
    study: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = study
    folder = tmp_path / "rep[/x]"
    r = run_cli("study", "report", "tiny", "--storage", url, "--out", str(folder), env=env)
    assert r.returncode == 0, r.stderr
    assert (folder / "summary.md").is_file() and (folder / "report.html").is_file()
    assert str(folder / "summary.md") in r.stdout
    e = run_cli("study", "export", "tiny", "--storage", url, "--out", str(folder), env=env)
    assert e.returncode == 0, e.stderr
    assert str(folder / "candidates.csv") in e.stdout
