"""The overhead benchmark runs and reports both tools on the same history (figures, no timing
assertions: speed is shown in docs/RESULTS.md, not asserted)."""

from __future__ import annotations

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

    monkeypatch.setattr(bench, "_optuna_gp_seconds", no_memory)
    (row,) = overhead(candidates=(12,), repeats=1)
    assert row["searchlab_s"] > 0 and row["optuna_gp_s"] is None and row["ratio"] is None
    assert row["optuna_gp_error"].startswith("out of memory")

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
        # The engine's switches per seed ("domain@candidate"), so a late alarm and none differ.
        assert len(r["alarms"]) == (1 if r["method"] in ENGINE_METHODS else 0)
        assert all("@" in a for seed in r["alarms"] for a in seed)
        # Peers are judged by a model; their best observed external is reported beside it.
        observed = r["regrets_best_observed"]
        assert len(observed) == (0 if r["method"] in ENGINE_METHODS else 1)
        assert all(v >= -1e-6 for v in observed)


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
