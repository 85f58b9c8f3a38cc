"""A user's back end named by import path (``module:Class``) runs a study through the CLI.

The module is written into tmp_path and found through PYTHONPATH only: the CLI runs in a neutral
working folder (see conftest.run_cli). Importing a ``module:Class`` needs the opt-in
``--trust-backend``, which every command here that loads the back end passes.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, sqlite_url, tiny_study_data, write_yaml

MODULE = r'''
"""Deterministic back ends for searchlab's plug-in tests."""

import math


class MyBackend:
    """Dev and external scores are simple functions of the recipe; no truth is known."""

    def __init__(self, *, domains, weights, seed, **options):
        self.domains = list(domains)
        self.weights = dict(weights)
        self.seed = seed
        self.options = options

    def train(self, recipe, *, candidate, seed):
        return {"recipe": dict(recipe), "candidate": candidate, "seed": seed}

    def _dev(self, artefact, domain):
        r = artefact["recipe"]
        share = r.get(f"mixture.{domain}", 0.5)
        lr = math.log10(r["learning_rate"])  # -5.5 .. -3.5
        bump = math.exp(-0.5 * ((lr + 4.3) / 0.6) ** 2)
        value = 0.15 + 0.4 * share + 0.2 * bump + 0.1 * r["template_share"]
        return min(0.95, max(0.05, value - 0.2 * r["lora_dropout"]))

    def evaluate(self, artefact):
        scores = {d: self._dev(artefact, d) for d in self.domains}
        first = self.domains[0]
        scores[first] = (scores[first], 400)  # the (accuracy, n) form for one domain
        return scores

    def submit_external(self, artefact, *, submission):
        r = artefact["recipe"]
        return {
            d: round(max(0.0, self._dev(artefact, d) - 0.3 * r["template_share"]), 2)
            for d in self.domains
        }


class RaisingBackend(MyBackend):
    def evaluate(self, artefact):
        raise RuntimeError("the evaluation cluster is down")


class MultiLineBackend(MyBackend):
    """Fails with multi-line messages, as a CUDA or cluster error would."""

    def __init__(self, *, domains, weights, seed, **options):
        if options.get("explode"):
            raise ValueError("cannot reach the cluster\n  host: gpu-01\n  reason: timeout")
        super().__init__(domains=domains, weights=weights, seed=seed, **options)

    def evaluate(self, artefact):
        raise RuntimeError("CUDA error: out of memory\n  at frame 1\n  at frame 2")


class NaNBackend(MyBackend):
    def evaluate(self, artefact):
        scores = super().evaluate(artefact)
        if artefact["candidate"] % 2 == 1:
            scores[self.domains[-1]] = float("nan")
        return scores


class HangingBackend(MyBackend):
    """Hangs on odd candidates, as a wedged cluster job would."""

    def train(self, recipe, *, candidate, seed):
        if candidate % 2 == 1:
            import time

            time.sleep(3600)
        return super().train(recipe, candidate=candidate, seed=seed)


class OutOfRangeBackend(MyBackend):
    def evaluate(self, artefact):
        scores = super().evaluate(artefact)
        if artefact["candidate"] % 2 == 1:
            scores[self.domains[-1]] = 1.5
        return scores
'''


@pytest.fixture
def plugin(tmp_path: Path) -> dict[str, str]:
    """Writes mybackend.py into its own folder; returns the environment that finds it."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "mybackend.py").write_text(textwrap.dedent(MODULE), encoding="utf-8")
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def _study(tmp_path: Path, backend: str, name: str, **options: Any) -> Path:
    data = tiny_study_data()
    data["name"] = name
    data["backend"] = {"name": f"mybackend:{backend}", "options": {"colour": "blue", **options}}
    return write_yaml(tmp_path / f"{name}.yaml", data)


def _create(study: Path, url: str, env: dict[str, str]) -> Any:
    return run_cli(
        "study", "create", str(study), "--storage", url, "--quiet", "--trust-backend", env=env
    )


def _json(*args: str, env: dict[str, str]) -> Any:
    result = run_cli(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_user_backend_runs_a_study(tmp_path: Path, plugin: dict[str, str]) -> None:
    url = sqlite_url(tmp_path / "s.db")
    study = _study(tmp_path, "MyBackend", "mine")
    validated = run_cli("study", "validate", str(study), "--trust-backend", env=plugin)
    assert validated.returncode == 0, validated.stderr

    result = _create(study, url, plugin)
    assert result.returncode == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"

    s = _json("study", "status", "mine", "--storage", url, env=plugin)
    assert s["finished"] is True
    assert s["candidates"] == 6
    assert s["failed_candidates"] == 0
    assert s["rounds_done"] == 2 and s["rounds_total"] == 2
    assert s["external_budget"]["used"] == 2
    assert s["external_budget"]["left"] == 0
    rec = s["recommendation"]
    assert rec is not None
    assert {"candidate", "recipe", "modelled_external"} <= set(rec)
    assert isinstance(rec["candidate"], int) and 0 <= rec["candidate"] < 6
    assert set(rec["recipe"]) == {
        "mixture.cipher",
        "mixture.equations",
        "learning_rate",
        "epochs",
        "lora_rank",
        "template_share",
        "lora_dropout",
    }
    assert isinstance(rec["modelled_external"], float)
    # The class knows no truth: no true external score, no regret, anywhere.
    assert "true_external" not in rec and "regret" not in rec
    assert "true_external" not in (s["best_dev_candidate"] or {})

    audit = _json("study", "audit", "mine", "--storage", url, env=plugin)
    submissions = [e for e in audit if e["kind"] == "submission"]
    assert len(submissions) == 2
    assert all(set(e["scores"]) == {"cipher", "equations"} for e in submissions)

    # Without the plug-in on the path, the study is still readable (status needs no back end).
    s2 = _json("study", "status", "mine", "--storage", url, env={})
    assert s2 == s


def test_backend_failing_every_candidate(tmp_path: Path, plugin: dict[str, str]) -> None:
    url = sqlite_url(tmp_path / "s.db")
    result = _create(_study(tmp_path, "RaisingBackend", "down"), url, plugin)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error:"), line
    assert "mybackend:RaisingBackend" in line and "failed on every candidate" in line, line
    assert "the evaluation cluster is down" in line

    s = _json("study", "status", "down", "--storage", url, env=plugin)
    assert s["failed_candidates"] >= 3
    assert s["candidates"] == 0
    assert s["finished"] is False
    assert s["external_budget"]["used"] == 0
    audit = _json("study", "audit", "down", "--storage", url, env=plugin)
    failed = [e for e in audit if e["kind"] == "candidate_failed"]
    assert len(failed) >= 3
    assert all("RuntimeError" in e["reason"] for e in failed)


@pytest.mark.parametrize(
    ("backend", "needle"),
    [
        pytest.param("NaNBackend", "nan", id="nan"),
        pytest.param("OutOfRangeBackend", "outside [0, 1]", id="out-of-range"),
    ],
)
def test_bad_scores_fail_candidates(
    tmp_path: Path, plugin: dict[str, str], backend: str, needle: str
) -> None:
    url = sqlite_url(tmp_path / "s.db")
    result = _create(_study(tmp_path, backend, "bad"), url, plugin)
    assert result.returncode == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"

    s = _json("study", "status", "bad", "--storage", url, env=plugin)
    assert s["finished"] is True
    assert s["failed_candidates"] > 0
    assert s["candidates"] + s["failed_candidates"] == 6
    assert s["recommendation"] is not None

    audit = _json("study", "audit", "bad", "--storage", url, env=plugin)
    failed = [e for e in audit if e["kind"] == "candidate_failed"]
    assert len(failed) == s["failed_candidates"]
    for e in failed:
        assert e["candidate"] % 2 == 1
        assert "equations" in e["reason"] and needle in e["reason"], e["reason"]
    # Nothing fabricated: a failed candidate is never submitted or recommended.
    bad = {e["candidate"] for e in failed}
    assert not bad & {e["candidate"] for e in audit if e["kind"] == "submission"}
    assert s["recommendation"]["candidate"] not in bad


def test_multi_line_constructor_error_is_one_line(tmp_path: Path, plugin: dict[str, str]) -> None:
    study = _study(tmp_path, "MultiLineBackend", "multi", explode=True)
    result = run_cli("study", "validate", str(study), "--trust-backend", env=plugin)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "MultiLineBackend" in lines[0]
    assert "timeout" in lines[0]


def test_multi_line_evaluate_error_is_one_line(tmp_path: Path, plugin: dict[str, str]) -> None:
    url = sqlite_url(tmp_path / "s.db")
    result = _create(_study(tmp_path, "MultiLineBackend", "multi"), url, plugin)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "failed on every candidate" in lines[0] and "out of memory" in lines[0]


def test_backend_that_hangs_past_its_timeout_fails_that_candidate(
    tmp_path: Path, plugin: dict[str, str]
) -> None:
    url = sqlite_url(tmp_path / "s.db")
    data = tiny_study_data()
    data["name"] = "hang"
    data["backend"] = {"name": "mybackend:HangingBackend", "timeout_s": 1.5}
    result = _create(write_yaml(tmp_path / "hang.yaml", data), url, plugin)
    assert result.returncode == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    s = _json("study", "status", "hang", "--storage", url, env=plugin)
    assert s["finished"] is True and s["failed_candidates"] >= 1
    audit = _json("study", "audit", "hang", "--storage", url, env=plugin)
    reasons = [e["reason"] for e in audit if e["kind"] == "candidate_failed"]
    assert reasons and all("did not return within 1.5 s" in r for r in reasons)
    assert s["candidates"] + s["failed_candidates"] >= 6
