"""The overhead benchmark runs and reports both tools on the same history (figures, no timing
assertions: speed is shown in docs/RESULTS.md, not asserted)."""

from __future__ import annotations

from searchlab.bench import overhead


def test_overhead_reports_both_tools() -> None:
    (row,) = overhead(candidates=(12,), repeats=1)
    assert row["candidates"] == 12 and row["repeats"] == 1
    for key in ("searchlab_s", "searchlab_cold_s", "optuna_gp_s", "ratio"):
        assert row[key] > 0


def test_search_quick_runs_every_method_on_the_same_instance() -> None:
    from searchlab.bench import ENGINE_METHODS, METHODS, search

    rows = search(instances=("goodhart",), seeds=1, quick=True)
    assert [r["method"] for r in rows] == list(METHODS)
    for r in rows:
        assert {"instance", "method", "median_regret", "iqr", "seeds"} <= set(r)
        assert r["instance"] == "goodhart" and r["seeds"] == 1
        # Regret against the known optimum of the same instance: never below zero.
        assert r["median_regret"] >= -1e-6
        # The engine's switches per seed ("domain@candidate"), so a late alarm and none differ.
        assert len(r["alarms"]) == (1 if r["method"] in ENGINE_METHODS else 0)
        assert all("@" in a for seed in r["alarms"] for a in seed)
