"""The study's objective: one weighted score or the front over domains, and per-domain floors.

Each domain ``d`` contributes a score ``c_d(x)`` in its current mode (:mod:`searchlab.acquisition`):
its dev in proxy mode, ``ext_d - lambda (dev_d - ext_d)`` once decoupled.

- ``weighted`` (the default): one objective ``g(x) = sum_d w_d c_d(x)``.
- ``pareto``: the ``K`` scores ``c_d`` are ``K`` objectives. Each point of a batch maximises
  qLogNParEGO (Knowles 2006, "ParEGO: a hybrid algorithm with on-line landscape approximation
  for expensive multiobjective optimization problems", IEEE TEC 10(1); the log-EI form of Ament
  et al. 2023) with its own random augmented Chebyshev scalarisation of the ``K`` scores, the
  earlier points pending. Why ParEGO and not qLogNEHVI: its cost does not grow with the number
  of objectives, while the hypervolume's box decomposition grows exponentially with ``K`` and
  the study file allows up to 32 domains (``searchlab bench overhead --objective pareto`` gives
  the time of one proposal).

What a Pareto study reports is the **front**: the completed candidates that no other completed
candidate beats in every domain's modelled external score (its posterior mean; the modelled dev
where a domain has no external model yet). Its recommendation is still one candidate, the best
by the study's weights among those that meet every floor; a positively weighted sum is
maximised on the front, so it is a front member.

**Floors** (``objective.floors``, in either mode) are outcome constraints: "the external (or
dev) score of domain ``d`` is at least ``tau``", with ``tau`` given (``at_least``) or the
baseline candidate's measured score minus ``delta`` (``below_baseline``; the baseline recipe is
given in the file and trained first, in the first round, and submitted there). They enter

- the acquisition as BoTorch outcome constraints ``tau - y_{d,t}(x) <= 0`` on the same posterior
  samples as the objective (a sigmoid-smoothed feasibility weight; Gardner et al. 2014, "Bayesian
  optimization with inequality constraints", ICML). Before a domain has an external model (two
  external scores), an external floor constrains its dev, the only model of the domain;
- the recommendation: a candidate *meets* a floor when the lower end of its one-sided
  ``confidence`` interval (``mean - z sd``, 90 % by default) is at least ``tau``. Only a candidate
  that meets every floor is recommended as such. When none does, the recommendation is the one
  with the smallest total shortfall, marked ``meets_floors: false``: the study says so rather
  than hide it. The bound is the surrogate's: a model whose intervals are too narrow (the ICM's
  are, docs/RESULTS.md) meets floors in truth less often than ``confidence`` says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported where it is used: the CLI imports the enums below
    import numpy as np

__all__ = [
    "BASELINE",
    "FloorTask",
    "ObjectiveType",
    "ResolvedFloor",
    "floor_shortfall",
    "front_mask",
    "hypervolume",
    "modelled_key",
    "resolve_floors",
]


class ObjectiveType(StrEnum):
    """How the domains' scores make the search's objective (module docstring)."""

    WEIGHTED = "weighted"
    PARETO = "pareto"


class FloorTask(StrEnum):
    """Which score of a domain a floor holds up."""

    EXTERNAL = "external"
    DEV = "dev"


@dataclass(frozen=True)
class ResolvedFloor:
    """A floor with its threshold known: ``domain``'s ``task`` score at least ``threshold``.

    ``threshold`` is None while it cannot be known (a ``below_baseline`` floor before the
    baseline has that score); such a floor constrains nothing yet, and ``basis`` says why.
    """

    domain: str
    task: FloorTask
    threshold: float | None
    basis: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "task": str(self.task),
            "threshold": self.threshold,
            "basis": self.basis,
        }


def floor_shortfall(
    floors: Sequence[ResolvedFloor],
    predictions: Mapping[str, Mapping[str, np.ndarray]],
    *,
    confidence: float,
) -> np.ndarray:
    """How far each candidate's lower bound falls short of the floors, summed (0 = meets all).

    Args:
        floors: The study's floors with their thresholds.
        predictions: Per domain, the surrogate's ``dev_mean``, ``dev_sd``, ``ext_mean``,
            ``ext_sd`` at ``n`` candidates (external entries NaN while a domain has no external
            model: its dev stands in, as in the acquisition).
        confidence: One-sided level of the lower bound ``mean - z sd``.

    Returns:
        ``n`` non-negative shortfalls.
    """
    import numpy as np

    z = NormalDist().inv_cdf(confidence)
    n = len(next(iter(predictions.values()))["dev_mean"]) if predictions else 0
    short = np.zeros(n)
    for f in floors:
        if f.threshold is None:
            continue
        p = predictions[f.domain]
        key = modelled_key(p) if f.task == FloorTask.EXTERNAL else "dev"
        lower = np.asarray(p[f"{key}_mean"]) - z * np.asarray(p[f"{key}_sd"])
        short += np.clip(f.threshold - lower, 0.0, None)
    return short


def modelled_key(prediction: Mapping[str, np.ndarray]) -> str:
    """``"ext"`` where a domain's prediction has an external model, else ``"dev"`` (its only
    model): what floors and the front read as the domain's modelled external."""
    import numpy as np

    return "dev" if np.isnan(prediction["ext_mean"]).any() else "ext"


def front_mask(values: np.ndarray) -> np.ndarray:
    """Which rows of ``values`` (``n x K``, every column maximised) no other row dominates.

    Ties count as not dominated (two equal rows are both on the front).
    """
    import numpy as np
    import torch
    from botorch.utils.multi_objective.pareto import is_non_dominated

    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    return is_non_dominated(torch.as_tensor(values, dtype=torch.float64), deduplicate=False).numpy()


def hypervolume(values: np.ndarray, reference: np.ndarray) -> float:
    """The hypervolume that the rows of ``values`` (``n x K``, maximised) dominate above
    ``reference`` (``K``); rows not above the reference in every column add nothing."""
    import numpy as np
    import torch
    from botorch.utils.multi_objective.hypervolume import Hypervolume

    values = np.asarray(values, dtype=float)
    keep = values[(values > reference).all(axis=1)] if len(values) else values
    if len(keep) == 0:
        return 0.0
    front = keep[front_mask(keep)]
    ref = torch.as_tensor(reference, dtype=torch.float64)
    return float(Hypervolume(ref_point=ref).compute(torch.as_tensor(front, dtype=torch.float64)))


BASELINE = "baseline"  # the proposal method of the baseline candidate


def resolve_floors(
    floors: Sequence[Any],
    *,
    baseline: int | None,
    baseline_dev: Mapping[str, float] | None,
    baseline_external: Mapping[str, float] | None,
) -> list[ResolvedFloor]:
    """The thresholds of the study file's floors (``objective.floors``) as known now.

    Args:
        floors: The file's floors (``domain``, ``task``, ``at_least`` or ``below_baseline``).
        baseline: The baseline candidate's number, if there is one.
        baseline_dev: Its measured dev per domain, once trained.
        baseline_external: Its external score per domain, once submitted and answered.
    """
    out = []
    for f in floors:
        task = FloorTask(f.task)
        if f.at_least is not None:
            out.append(ResolvedFloor(f.domain, task, float(f.at_least), f"at least {f.at_least}"))
            continue
        scores = baseline_dev if task == FloorTask.DEV else baseline_external
        if scores is None or baseline is None:
            out.append(ResolvedFloor(f.domain, task, None, f"baseline has no {task} score yet"))
            continue
        measured = float(scores[f.domain])
        out.append(
            ResolvedFloor(
                f.domain,
                task,
                max(0.0, measured - float(f.below_baseline)),
                f"baseline candidate {baseline}'s {task} {measured:.4f} minus {f.below_baseline}",
            )
        )
    return out
