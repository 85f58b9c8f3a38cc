r"""Detectors a user would otherwise write, run on the same pair streams as the validity test.

Each detector reads one domain's stream of pairs in submission order, ``x_i`` (the dev each
pair entered the validity test with) and ``y_i`` (the observed external score), plus the
warm-up dev values the test fixed its knots from, and returns the first pair (1-based) at which
it alarms, or None. Each has one threshold; :func:`searchlab.calibration.compare_peers` sets it
to give the same false-alarm rate as the validity test on the null corpus, so that power is
compared at equal false alarms.

References and formulas:

* :func:`record_streak` -- EvalStop-style (arXiv 2606.04145 stops a run after ``k``
  consecutive eval-score drops): alarm when ``k`` consecutive submissions each set a dev record
  (``x_i > max_{j<i} x_j``) without an external record (``y_i <= max_{j<i} y_j``); a submission
  that does not set a dev record, or sets both records, resets the count.
* :func:`window_correlation` -- the correlation drop a dashboard shows: Fisher's
  ``z = atanh(r)`` of the last ``w`` pairs against that of the first ``w`` pairs; alarm when
  ``(z_first - z_window) / sqrt(2 / (w - 3)) >= h``. Range restriction makes the window
  correlation fall with no Goodhart at all (the optimiser concentrates), which is what its
  threshold must absorb on the nulls.
* :func:`slope_cusum` -- a one-sided CUSUM of one-step-ahead standardised residuals weighted
  by how far dev is in the record region: with the OLS line of ``y`` on ``x`` fitted to the
  earlier pairs and its prediction standard error ``se_i``, ``z_i = (y_i - \hat y_i) / se_i``,
  ``w_i = clip((x_i - mean(warm-up)) / sd(warm-up), 0, 3)`` and
  ``W_i = max(0, W_{i-1} - w_i z_i - w_i^2 / 2)``; alarm when ``W_i >= h``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["PEERS", "record_streak", "slope_cusum", "window_correlation"]


def record_streak(
    x: np.ndarray, y: np.ndarray, warm: np.ndarray, *, threshold: float, start: int = 1
) -> int | None:
    """EvalStop-style: ``threshold`` (``k``) consecutive dev records without an external record.

    Args:
        x: Dev of each pair, shape ``(n,)``.
        y: External of each pair, shape ``(n,)``.
        warm: Warm-up dev values (unused; same signature as the others).
        threshold: ``k``, rounded to an integer >= 1.
        start: Checks begin at this pair (1-based).

    Returns:
        The first alarming pair (1-based), or None.
    """
    k = max(1, round(threshold))
    streak = 0
    for i in range(1, len(x)):
        dev_record = x[i] > np.max(x[:i])
        ext_record = y[i] > np.max(y[:i])
        streak = streak + 1 if dev_record and not ext_record else 0
        if i + 1 >= start and streak >= k:
            return i + 1
    return None


def window_correlation(
    x: np.ndarray,
    y: np.ndarray,
    warm: np.ndarray,
    *,
    threshold: float,
    window: int = 6,
    start: int = 1,
) -> int | None:
    """The latest ``window`` pairs' correlation, against the first ``window`` pairs', dropped.

    Args:
        x: Dev of each pair, shape ``(n,)``.
        y: External of each pair, shape ``(n,)``.
        warm: Warm-up dev values (unused).
        threshold: ``h``: the standardised drop of Fisher's z that alarms.
        window: Pairs per window (at least 4, for ``w - 3 > 0``).
        start: Checks begin at this pair (1-based).

    Returns:
        The first alarming pair (1-based), or None.
    """
    if window < 4:
        raise ValueError("window must be >= 4")

    def z(a: np.ndarray, b: np.ndarray) -> float | None:
        if np.std(a) <= 0 or np.std(b) <= 0:
            return None
        r = float(np.clip(np.corrcoef(a, b)[0, 1], -0.999, 0.999))
        return math.atanh(r)

    first = z(x[:window], y[:window]) if len(x) >= window else None
    if first is None:
        return None
    se = math.sqrt(2.0 / (window - 3))
    for n in range(window + 1, len(x) + 1):
        last = z(x[n - window : n], y[n - window : n])
        if n >= start and last is not None and (first - last) / se >= threshold:
            return n
    return None


def slope_cusum(
    x: np.ndarray, y: np.ndarray, warm: np.ndarray, *, threshold: float, start: int = 1
) -> int | None:
    """A one-sided CUSUM of one-step-ahead residuals, weighted by the dev-record distance.

    Args:
        x: Dev of each pair, shape ``(n,)``.
        y: External of each pair, shape ``(n,)``.
        warm: Warm-up dev values: their mean and sd place the weights.
        threshold: ``h``.
        start: Checks begin at this pair (1-based); earlier pairs still update ``W``.

    Returns:
        The first alarming pair (1-based), or None.
    """
    mean, sd = float(np.mean(warm)), float(np.std(warm, ddof=1)) if len(warm) > 1 else 0.0
    if not sd > 0:
        return None
    total = 0.0
    for i in range(3, len(x)):
        design = np.column_stack([np.ones(i), x[:i]])
        beta, *_ = np.linalg.lstsq(design, y[:i], rcond=None)
        resid = y[:i] - design @ beta
        s2 = float(resid @ resid) / (i - 2)  # i >= 3 pairs, two coefficients
        point = np.array([1.0, x[i]])
        gram = design.T @ design
        if np.linalg.matrix_rank(gram) < 2 or not s2 > 0:
            continue
        se = math.sqrt(s2 * (1.0 + float(point @ np.linalg.solve(gram, point))))
        z = (y[i] - float(point @ beta)) / se
        w = min(max((x[i] - mean) / sd, 0.0), 3.0)
        total = max(0.0, total - w * z - w * w / 2.0)
        if i + 1 >= start and total >= threshold:
            return i + 1
    return None


#: Name, detector and the threshold grid its equal-false-alarm setting is chosen from.
PEERS: dict[str, tuple[Callable[..., int | None], Sequence[float]]] = {
    "record-streak": (record_streak, tuple(range(1, 9))),
    "window-correlation": (window_correlation, tuple(np.round(np.arange(0.5, 6.01, 0.25), 2))),
    "slope-cusum": (slope_cusum, tuple(np.round(np.arange(1.0, 20.01, 0.5), 2))),
}
