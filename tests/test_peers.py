"""The peer detectors (searchlab.peers) on streams whose answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from searchlab.peers import PEERS, record_streak, slope_cusum, window_correlation

WARM = np.linspace(0.3, 0.5, 8)


def _stream(kind: str, seed: int, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Dev makes a record at every submission; five or six of them above 0.7.
    x = np.sort(np.linspace(0.3, 0.9, n) + rng.uniform(-0.01, 0.01, n))
    if kind == "tracking":
        y = 0.1 + 0.5 * x
    else:  # "fall" after a dev of 0.7
        y = 0.1 + 0.5 * np.minimum(x, 0.7) - 1.0 * np.maximum(x - 0.7, 0.0)
    # Noise far below the signal: the answers hold for any seed.
    return x, y + rng.normal(0.0, 0.001, n)


def test_record_streak_counts_dev_records_without_external_records() -> None:
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert record_streak(x, np.array([0.1, 0.2, 0.3, 0.4, 0.5]), WARM, threshold=1) is None
    # Pairs 3, 4 and 5 set dev records below the external record of pair 2.
    y = np.array([0.1, 0.5, 0.4, 0.3, 0.2])
    assert record_streak(x, y, WARM, threshold=3) == 5
    assert record_streak(x, y, WARM, threshold=4) is None
    # A pair that is not a dev record breaks the streak.
    x2 = np.array([0.1, 0.2, 0.3, 0.25, 0.4, 0.5])
    y2 = np.array([0.1, 0.5, 0.4, 0.4, 0.3, 0.2])
    assert record_streak(x2, y2, WARM, threshold=2) == 6
    assert record_streak(x2, y2, WARM, threshold=3) is None


@pytest.mark.parametrize("seed", range(5))
def test_detectors_stay_quiet_on_tracking_and_fire_on_a_fall(seed: int) -> None:
    x, y = _stream("tracking", seed)
    # A CUSUM of standardised residuals drifts on noise alone at h = 5 (its false alarms);
    # a strict h never fires on a stream that keeps tracking.
    assert slope_cusum(x, y, WARM, threshold=50.0) is None
    assert window_correlation(x, y, WARM, threshold=2.0) is None
    assert record_streak(x, y, WARM, threshold=3) is None
    xf, yf = _stream("fall", seed)
    assert slope_cusum(xf, yf, WARM, threshold=5.0) is not None
    assert record_streak(xf, yf, WARM, threshold=3) is not None


def test_window_correlation_fires_when_the_late_window_turns_negative() -> None:
    x = np.linspace(0.1, 0.9, 12)
    y = np.where(x < 0.5, x, 1.0 - x)
    first = window_correlation(x, y, WARM, threshold=2.0)
    assert first is not None and first >= 7  # not before the latest window holds the fall
    assert window_correlation(x, x, WARM, threshold=2.0) is None
    with pytest.raises(ValueError, match="window"):
        window_correlation(x, y, WARM, threshold=2.0, window=3)


def test_grids_run_from_sensitive_to_strict() -> None:
    # compare_peers keeps the first threshold of each grid that matches the test's false alarms.
    for _, grid in PEERS.values():
        assert list(grid) == sorted(grid)
