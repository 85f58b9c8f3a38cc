"""The external target: a leaderboard over a held-out split, the way the challenge ran one.

- Items are split once, by a seeded permutation per domain, into a **public** half (what a
  submission sees) and a **private** half (the final ranking, never shown during the search).
- The displayed public score is **floored** to the resolution (the challenge showed 2 decimals).
- A **budget** of submissions in total; a submission past it is refused with the reason,
  before anything is scored. (searchlab's engine also plans within its own budget;
  the leaderboard enforces its own, as a real one does.)
- Every submission is logged (number, artefact hash, public and private scores) in a JSON-lines
  file, so a submission whose answer was lost in a crash can be looked up instead of re-sent.

Scores are per domain, like the probe submissions of the challenge (docs/FACTS.md).
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from searchlab.errors import BackendError
from searchlab_evaluation.scoring import Item, per_domain_accuracy


def floor_to(value: float, resolution: float) -> float:
    """``value`` floored to a multiple of ``resolution`` (0 leaves it unchanged)."""
    if resolution <= 0:
        return value
    # The small epsilon keeps 0.29 (0.28999... in binary) from flooring to 0.28.
    return round(math.floor(value / resolution + 1e-9) * resolution, 10)


class Leaderboard:
    """Public/private scoring of graded samples over a fixed external item set.

    Args:
        items: The external items, in a fixed order.
        resolution: Display resolution of the public score.
        total: Submissions allowed in all (None: unlimited).
        log_path: The submission log (JSON lines).
        seed: Seeds the public/private split.
    """

    def __init__(
        self,
        *,
        items: Sequence[Item],
        resolution: float = 0.01,
        total: int | None = None,
        log_path: str | Path,
        seed: int = 0,
    ) -> None:
        self.items = list(items)
        self.resolution = resolution
        self.total = total
        self.log_path = Path(log_path)
        public: list[bool] = [False] * len(self.items)
        by_domain: dict[str, list[int]] = {}
        for i, item in enumerate(self.items):
            by_domain.setdefault(item.domain, []).append(i)
        for domain, idx in by_domain.items():
            order = list(idx)
            random.Random(f"public|{domain}|{seed}").shuffle(order)
            for i in order[: len(order) // 2]:
                public[i] = True
        self.public_mask = public

    def log(self) -> list[dict[str, Any]]:
        """Every submission so far, in order."""
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    def lookup(self, submission: int) -> dict[str, Any] | None:
        """The logged record of one submission number, if it was scored."""
        return next((r for r in self.log() if r["submission"] == submission), None)

    def check_budget(self) -> None:
        """Raises :class:`BackendError` when another submission would exceed the budget."""
        if self.total is not None and len(self.log()) >= self.total:
            raise BackendError(
                f"leaderboard: the total budget of {self.total} submissions is spent"
            )

    def score(
        self,
        samples: Sequence[Mapping[str, object]],
        *,
        submission: int,
        artefact: str,
    ) -> dict[str, dict[str, float]]:
        """Scores one submission's graded samples and logs it.

        Args:
            samples: Graded samples in the order of ``items``.
            submission: The submission number (unique).
            artefact: The artefact's content hash, for the log.

        Returns:
            ``{"public": {domain: floored accuracy}, "private": {domain: accuracy}}``.
        """
        if len(samples) != len(self.items):
            raise BackendError(f"leaderboard: {len(samples)} samples for {len(self.items)} items")
        public = [s for s, m in zip(samples, self.public_mask, strict=True) if m]
        private = [s for s, m in zip(samples, self.public_mask, strict=True) if not m]
        result = {
            "public": {
                d: floor_to(a, self.resolution) for d, (a, _) in per_domain_accuracy(public).items()
            },
            "private": {d: a for d, (a, _) in per_domain_accuracy(private).items()},
        }
        record = {"submission": submission, "artefact": artefact, **result}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return result
