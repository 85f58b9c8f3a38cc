"""The overhead benchmark runs and reports both tools on the same history (figures, no timing
assertions: speed is shown in docs/RESULTS.md, not asserted)."""

from __future__ import annotations

from searchlab.bench import overhead


def test_overhead_reports_both_tools() -> None:
    (row,) = overhead(candidates=(12,), repeats=1)
    assert row["candidates"] == 12 and row["repeats"] == 1
    for key in ("searchlab_s", "searchlab_cold_s", "optuna_gp_s", "ratio"):
        assert row[key] > 0
