"""The overhead benchmark runs and reports both tools on the same history (figures, no timing
assertions: speed is shown in docs/RESULTS.md, not asserted)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from searchlab.bench import overhead


def test_overhead_reports_both_tools() -> None:
    (row,) = overhead(candidates=(12,), repeats=1)
    assert row["candidates"] == 12 and row["repeats"] == 1
    for key in ("searchlab_s", "searchlab_cold_s", "optuna_gp_s", "ratio"):
        assert row[key] > 0


def test_overhead_reports_a_peer_out_of_memory_and_goes_on(monkeypatch) -> None:
    import searchlab.bench as bench

    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: 31809601536 bytes")

    # searchlab's own timing is test_overhead_reports_both_tools's; here a stand-in keeps the
    # three runs to seconds (each real one fits six two-task GPs).
    monkeypatch.setattr(bench, "_searchlab_seconds", lambda *args, **kwargs: 1.0)
    monkeypatch.setattr(bench, "_optuna_gp_seconds", no_memory)
    (row,) = overhead(candidates=(12,), repeats=1)
    assert row["searchlab_s"] == 1.0 and row["optuna_gp_s"] is None and row["ratio"] is None
    assert row["optuna_gp_error"].startswith("out of memory")

    def bare(*args, **kwargs):
        raise MemoryError  # Python raises it without a message

    monkeypatch.setattr(bench, "_optuna_gp_seconds", bare)
    (row,) = overhead(candidates=(12,), repeats=1)
    assert row["optuna_gp_error"] == "out of memory: MemoryError"

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")  # a bug, not a limit: it must not be hidden

    monkeypatch.setattr(bench, "_optuna_gp_seconds", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        overhead(candidates=(12,), repeats=1)


def test_search_quick_runs_every_method_on_the_same_instance() -> None:
    from searchlab.bench import ENGINE_METHODS, METHODS, search

    rows = search(instances=("goodhart",), seeds=1, quick=True)
    assert [r["method"] for r in rows] == list(METHODS)
    for r in rows:
        assert {"instance", "method", "median_regret", "iqr", "seeds"} <= set(r)
        assert r["instance"] == "goodhart" and r["seeds"] == 1
        # Regret against the known optimum of the same instance: never below zero.
        assert r["median_regret"] >= -1e-6
        # The engine's switches per seed ("domain@candidate/roundR"), so a late alarm and none
        # differ.
        assert len(r["alarms"]) == (1 if r["method"] in ENGINE_METHODS else 0)
        shown = [a for seed in r["alarms"] for a in seed]
        assert all(re.fullmatch(r"\w+@\d+/round\d+", a) for a in shown), shown
        # Peers are judged by a model; their best observed external is reported beside it.
        observed = r["regrets_best_observed"]
        assert len(observed) == (0 if r["method"] in ENGINE_METHODS else 1)
        assert all(v >= -1e-6 for v in observed)


def test_search_keeps_each_engine_study_where_asked(tmp_path) -> None:
    """``keep``: the engine's study is stored, readable afterwards, and its recommendation is the
    one the benchmark scored; a second run into the same folder is refused before it starts."""
    from searchlab.backends import backend_for
    from searchlab.bench import kept_study, search
    from searchlab.errors import SearchlabError
    from searchlab.readmodel import read
    from searchlab.store import Storage

    run = {"instances": ("goodhart",), "methods": ("dev-only",), "seeds": 1, "first_seed": 3}
    (row,) = search(**run, quick=True, keep=tmp_path / "kept")
    path = kept_study(tmp_path / "kept", "goodhart", 3, "dev-only")
    view = read(Storage(f"sqlite:///{path}").load("bench-goodhart-3"))
    assert len(view.complete) == 12  # the quick preset: 3 rounds of 4
    chosen = view.complete[view.recommendation["recommendation"]["candidate"]]
    backend = backend_for(view.config)
    truth = backend.true_external(chosen.artefact)
    regret = backend.optimum() - sum(view.weights[d] * truth[d] for d in view.config.domain_names)
    assert row["regrets"] == [pytest.approx(regret, abs=1e-12)]
    with pytest.raises(SearchlabError, match="already there"):
        search(**run, quick=True, keep=tmp_path / "kept")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SearchlabError, match="not a folder"):
        search(**run, quick=True, keep=tmp_path / "a-file")


def test_the_oracle_switches_where_a_candidate_goes_past_the_external_peak() -> None:
    from types import SimpleNamespace

    from searchlab.bench import past_peak
    from searchlab.simulation import DOMAINS, ResponseSurface, SurfaceConfig

    def candidate(number: int, template_share: float, state: str = "COMPLETE") -> SimpleNamespace:
        recipe = {f"mixture.{d}": (1.0 if d == "equations" else 0.0) for d in DOMAINS}
        recipe.update(
            learning_rate=10**-4.3, epochs=8, lora_rank=64, template_share=template_share,
            lora_dropout=0.1,
        )  # fmt: skip
        return SimpleNamespace(number=number, recipe=recipe, state=state)

    goodhart = ResponseSurface(config=SurfaceConfig(b_g=1.5), instance_seed=0)
    assert past_peak(goodhart, [candidate(0, 0.0)]) == set()  # no template data: no hack
    assert past_peak(goodhart, [candidate(0, 1.0, state="RUNNING")]) == set()
    assert past_peak(goodhart, [candidate(0, 0.0), candidate(1, 1.0)]) == {"equations"}
    late = ResponseSurface(config=SurfaceConfig(b_g=1.5, hack_unlock_at=24), instance_seed=0)
    assert past_peak(late, [candidate(23, 1.0)]) == set()  # still locked
    assert past_peak(late, [candidate(24, 1.0)]) == {"equations"}
    null = ResponseSurface(config=SurfaceConfig(variant="null"), instance_seed=0)
    assert past_peak(null, [candidate(0, 1.0)]) == set()  # no peak to go past


def test_the_switched_objective_known_exactly_is_maximised_like_the_optimum() -> None:
    """``ResponseSurface.maximise`` with the objective's own score is :meth:`optimum` (the same
    optimiser), and a penalised score keeps the weak domain's data (the diagnosis' premise)."""
    from searchlab.simulation import ResponseSurface, SurfaceConfig

    surface = ResponseSurface(
        config=SurfaceConfig.from_options({"b_g": 1.5, "weak_domains": ["equations"]}),
        instance_seed=3,
    )
    w = np.array([surface.weights[d] for d in surface.domains])
    value, recipe = surface.maximise(lambda dev, ext: ext @ w)
    assert (value, recipe) == surface.optimum()
    weak = surface.domains.index("equations")

    def switched(dev, ext):  # equations decoupled with lambda 0.5, every other domain on dev
        scores = dev.copy()
        scores[:, weak] = 1.5 * ext[:, weak] - 0.5 * dev[:, weak]
        return scores @ w

    _, best = surface.maximise(switched)
    assert best["mixture.equations"] > 0.3 and best["template_share"] < 0.1
    assert surface.regret(best) < surface.regret(surface.dev_optimum()[1])


def test_switch_diagnosis_runs_on_a_stored_study_and_names_bad_input(tmp_path) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import run_cli, sqlite_url, tiny_study_data, write_yaml

    url = sqlite_url(tmp_path / "s.db")
    study = write_yaml(tmp_path / "tiny.yaml", tiny_study_data())
    assert run_cli("study", "create", str(study), "--storage", url).returncode == 0
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "switch_diagnosis.py"

    def diagnosis(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), url, "--study", "tiny", *args],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip

    plain = diagnosis("--json")
    assert plain.returncode == 0, plain.stderr
    row = json.loads(plain.stdout)
    assert row["decoupled"] == [] and row["model"] is None  # nothing alarmed: no model part
    assert row["objective"]["regret_of_its_maximiser"] >= -1e-6

    asked = diagnosis("--decoupled", "equations", "--json")
    assert asked.returncode == 0, asked.stderr
    row = json.loads(asked.stdout)
    assert row["decoupled"] == ["equations"]
    assert set(row["model"]) >= {"optimum", "best_dev", "best_dev_unhacked"}
    for point in row["model"].values():
        assert all(math.isfinite(point[k]) for k in ("model_g", "true_g"))
        assert set(point["external"]) == {"equations"}
        ext = point["external"]["equations"]
        assert 0 <= ext["true"] <= 1 and ext["sd"] >= 0 and math.isfinite(ext["mean"])
    # The tiny study's second round is after the assumed switch (the warm-up is its first).
    assert "after_switch_model_best" in row["model"] and row["switch_round"] == 0

    unknown = diagnosis("--decoupled", "gravity")
    assert unknown.returncode == 2 and "gravity" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    missing = subprocess.run(
        [sys.executable, str(script), sqlite_url(tmp_path / "none.db")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
