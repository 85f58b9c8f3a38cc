"""Decisions that are not acquisition: who spends the external budget, and what to recommend.

Submission policy (DESIGN.md, "spend the external budget where it informs the decision"):

- Warm-up rounds: spread the submissions over the range of de-noised mean dev (the lowest and the
  highest first, then the quantiles between), so the validity test sees the dev->external relation
  over a range and not only at the top.
- Later rounds: rank unsubmitted candidates by

      score(x) = sum_d w_d * [ mu_dev_d(x)                          if d is in proxy mode
                               mu_ext_d(x) + beta * sd_ext_d(x)     if d is decoupled ],

  i.e. confirm the best candidates where dev is trusted, and measure where the external model is
  promising and uncertain where it is not. A candidate is never submitted twice.

Recommendation: the candidate with the highest modelled external score (weighted posterior mean
of the external task), never the highest raw dev.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from searchlab.acquisition import DECOUPLED


@dataclass(frozen=True)
class SubmissionChoice:
    """One candidate chosen for an external submission, with why."""

    candidate: int
    reason: str
    score: float


def spread_by_dev(numbers: Sequence[int], mean_dev: np.ndarray, k: int) -> list[SubmissionChoice]:
    """Picks ``k`` candidates spread over the range of mean dev, extremes first.

    Args:
        numbers: ``n`` candidate numbers.
        mean_dev: ``n`` de-noised weighted mean dev of those candidates.
        k: How many to pick.
    """
    order = np.argsort(mean_dev)
    n = len(order)
    if k <= 0 or n == 0:
        return []
    k = min(k, n)
    # Extremes first (0, 1), then the interior quantiles: a two-pick round spans the range.
    targets = [0.0, 1.0] + [i / (k - 1) for i in range(1, k - 1)] if k > 1 else [1.0]
    chosen: list[int] = []
    for t in targets[:k]:
        pos = round(t * (n - 1))
        for step in range(n):  # nearest position not taken yet
            for p in (pos - step, pos + step):
                if 0 <= p < n and int(order[p]) not in chosen:
                    chosen.append(int(order[p]))
                    break
            else:
                continue
            break
    return [
        SubmissionChoice(numbers[i], "warm-up: spread over de-noised dev", float(mean_dev[i]))
        for i in chosen
    ]


def rank_for_submission(
    numbers: Sequence[int],
    predictions: Sequence[dict[str, np.ndarray]],
    weights: Sequence[float],
    modes: Sequence[str],
    k: int,
    *,
    beta: float,
) -> list[SubmissionChoice]:
    """Picks the ``k`` candidates whose external score informs the decision most.

    Args:
        numbers: ``n`` unsubmitted candidate numbers.
        predictions: Per domain, :meth:`DomainSurrogate.predict` at those candidates.
        weights: ``K`` domain weights.
        modes: ``K`` domain modes.
        k: How many to pick.
        beta: Optimism of the external bound in decoupled domains.
    """
    if k <= 0 or not numbers:
        return []
    score = np.zeros(len(numbers))
    for p, w, mode in zip(predictions, weights, modes, strict=True):
        if mode == DECOUPLED and not np.isnan(p["ext_mean"]).any():
            score += w * (p["ext_mean"] + beta * p["ext_sd"])
        else:
            score += w * p["dev_mean"]
    decoupled = [m == DECOUPLED for m in modes]
    reason = (
        "confirm the best by modelled dev"
        if not any(decoupled)
        else "promising and uncertain external in decoupled domain(s), dev elsewhere"
    )
    best = np.argsort(-score)[:k]
    return [SubmissionChoice(numbers[i], reason, float(score[i])) for i in best]


def recommend(numbers: Sequence[int], modelled_external: np.ndarray) -> tuple[int, float]:
    """The candidate with the highest modelled external score.

    Args:
        numbers: ``n`` completed candidate numbers.
        modelled_external: ``n`` weighted posterior means of the external task.

    Returns:
        (candidate number, its modelled external score).
    """
    i = int(np.nanargmax(modelled_external))
    return numbers[i], float(modelled_external[i])
