"""Acquisition over domains in their current modes: batches of ``q`` recipes with BoTorch.

The objective of a recipe ``x`` over domains ``d`` with weights ``w_d`` (the leaderboard's mean
accuracy by default) is

    g(x) = sum_d w_d * c_d(x),    c_d = dev_d                                if d is in proxy mode,
                                  c_d = ext_d - lambda * (dev_d - ext_d)     if d is decoupled,

evaluated on joint posterior samples of every domain's (dev, external) GP, so the dev penalty of
a decoupled domain uses the same sample as its external score.

The penalty is on the proxy gap ``dev_d - ext_d``, the part of dev that external does not
follow, not on dev itself. Genuine skill raises both (external by a factor ``s`` near 1), so its
coefficient stays ``s + lambda (s - 1)``, near 1, instead of ``s - lambda``; a hack that raises
dev alone by ``a_p`` per unit and external by ``R'(D)`` gains ``(1 + lambda) R'(D) - lambda a_p``
(notation of :mod:`searchlab.simulation`). Penalising dev itself, ``ext - lambda * dev``, left
genuine skill in the weak domain worth ``s - lambda``, about ``0.85 - 0.5 = 0.35`` against 1 in
every proxy domain, a push to move the data away from the very domain the switch is about.

BoTorch's ``Penalized*`` acquisitions penalise distance in input space, which is something else;
a linear MC objective (``GenericMCObjective``) is the right tool (docs/FACTS.md).

The batch is chosen by ``qLogNoisyExpectedImprovement`` (Ament et al. 2023, "Unexpected
improvements to expected improvement for Bayesian optimization"): greedy sequential selection,
each new point conditioned on the earlier ones as pending, with the mixed optimiser of BoTorch
(``optimize_acqf_mixed_alternating``) for integer and categorical coordinates.

A share probe (:mod:`searchlab.policy`) adds a linear inequality on the unit cube: with the
mixture group ``G`` projected onto the simplex by ``x / sum(x_G)``, "domain coordinate ``c``
has a share of at least ``m``" is ``(1 - m) x_c - m * sum_{j in G, j != c} x_j >= 0``, which
BoTorch's optimisers take as ``inequality_constraints``.

A ``pareto`` study (:mod:`searchlab.objective`) keeps the ``K`` per-domain scores ``c_d`` apart,
``samples @ C`` with ``C`` of shape ``(m, K)``, and chooses each point of the batch by
``qLogNParEGO`` with its own scalarisation weights. Floors are outcome constraints of either
acquisition, ``tau - samples[..., j] <= 0`` on the output ``j`` the floor holds up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from searchlab.objective import FloorTask, ObjectiveType, ResolvedFloor
from searchlab.store import Mode
from searchlab.surrogate import DEV, EXTERNAL, DomainSurrogate, quiet_numerics

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Batch:
    """A proposed batch: encoded points and the acquisition value of each greedy step."""

    x: np.ndarray  # q x d
    acquisition: list[float]  # q, log-EI of each point given the earlier ones as pending
    predicted_objective: list[float]  # q, posterior mean of g(x)


def decoupled_coefficients(dev_penalty: float) -> tuple[float, float]:
    """``(on external, on dev)`` of a decoupled domain's score ``ext - lambda * (dev - ext)``."""
    return 1.0 + dev_penalty, -dev_penalty


@dataclass(frozen=True)
class ShareFloor:
    """A data share the proposal must keep: coordinate ``coordinate`` of the mixture group
    ``group`` (encoded coordinates) at a share of at least ``min_share``."""

    coordinate: int
    group: tuple[int, ...]
    min_share: float

    def constraints(self) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """BoTorch ``inequality_constraints`` (``sum_i coef_i * x[idx_i] >= rhs``): the share,
        and ``x_c >= 0.01`` so that an all-zero group (decoded as the uniform mixture) is out."""
        import torch

        m = self.min_share
        idx = torch.tensor(self.group, dtype=torch.long)
        coef = torch.tensor(
            [1.0 - m if i == self.coordinate else -m for i in self.group], dtype=torch.float64
        )
        own = torch.tensor([self.coordinate], dtype=torch.long)
        return [(idx, coef, 0.0), (own, torch.ones(1, dtype=torch.float64), 0.01)]


def objective_matrix(
    surrogates: Sequence[DomainSurrogate], modes: Sequence[Mode], dev_penalty: float
) -> np.ndarray:
    """Each domain's score ``c_d`` as a column over the stacked outputs of every domain's model.

    Args:
        surrogates: One fitted surrogate per domain, in domain order.
        modes: ``K`` modes, ``proxy`` or ``decoupled``.
        dev_penalty: lambda.

    Returns:
        ``(m, K)`` with ``m = sum_d num_outputs_d``; column ``d`` is zero outside domain ``d``'s
        outputs.
    """
    offsets = np.cumsum([0] + [s.num_outputs for s in surrogates])
    matrix = np.zeros((int(offsets[-1]), len(surrogates)))
    for d, (s, mode) in enumerate(zip(surrogates, modes, strict=True)):
        if mode == Mode.DECOUPLED and s.two_task:
            # ext - lambda * (dev - ext): the penalty is on the proxy gap (module docstring).
            on_ext, on_dev = decoupled_coefficients(dev_penalty)
            matrix[offsets[d] + EXTERNAL, d] = on_ext
            matrix[offsets[d] + DEV, d] = on_dev
        else:
            # Proxy mode, or a decoupled domain without an external model yet (cannot happen
            # after a switch, which needs paired observations; kept as the safe reading).
            matrix[offsets[d] + DEV, d] = 1.0
    return matrix


def objective_coefficients(
    surrogates: Sequence[DomainSurrogate],
    weights: Sequence[float],
    modes: Sequence[Mode],
    dev_penalty: float,
) -> np.ndarray:
    """Coefficients of ``g = sum_d w_d c_d`` over the stacked outputs of every domain's model.

    Args:
        surrogates: One fitted surrogate per domain, in domain order.
        weights: ``K`` domain weights.
        modes: ``K`` modes, ``proxy`` or ``decoupled``.
        dev_penalty: lambda.

    Returns:
        ``sum_d num_outputs_d`` coefficients.
    """
    # Each row has one non-zero entry, so the product is exact: ``(1 + lambda) * w`` and so on.
    matrix = objective_matrix(surrogates, modes, dev_penalty)
    return (matrix * np.asarray(weights, dtype=float)).sum(axis=1)


def floor_outputs(
    surrogates: Sequence[DomainSurrogate],
    domains: Sequence[str],
    floors: Sequence[ResolvedFloor],
) -> list[tuple[int, float]]:
    """``(output index j, threshold tau)`` of every floor whose threshold is known.

    A floor on external holds up the external output of a two-task domain model, and dev while
    the domain has no external model yet (searchlab.objective).
    """
    offsets = np.cumsum([0] + [s.num_outputs for s in surrogates])
    out = []
    for f in floors:
        if f.threshold is None:
            continue
        d = list(domains).index(f.domain)
        task = EXTERNAL if f.task == FloorTask.EXTERNAL and surrogates[d].two_task else DEV
        out.append((int(offsets[d]) + task, float(f.threshold)))
    return out


def propose_batch(
    *,
    surrogates: Sequence[DomainSurrogate],
    weights: Sequence[float],
    modes: Sequence[Mode],
    dev_penalty: float,
    x_baseline: np.ndarray,
    x_pending: np.ndarray | None,
    q: int,
    discrete_dims: Mapping[int, Sequence[float]],
    seed: int,
    raw_samples: int = 128,
    num_restarts: int = 3,
    mixed: bool = False,
    objective: ObjectiveType = ObjectiveType.WEIGHTED,
    domains: Sequence[str] = (),
    floors: Sequence[ResolvedFloor] = (),
    share_floor: ShareFloor | None = None,
) -> Batch:
    """Chooses ``q`` new recipes.

    Args:
        surrogates: Fitted surrogates, one per domain.
        weights: ``K`` domain weights.
        modes: ``K`` domain modes.
        dev_penalty: lambda, the weight of the proxy gap (dev - external) subtracted in
            decoupled domains.
        x_baseline: ``n x d`` encoded recipes already evaluated (the noisy incumbents of NEI).
        x_pending: ``p x d`` encoded recipes proposed but not evaluated yet, or None.
        q: Batch size.
        discrete_dims: Allowed encoded values of integer and categorical coordinates.
        seed: Seeds the MC sampler and the optimiser's random starts.
        raw_samples: Random points scored to pick optimiser starts.
        num_restarts: Optimiser starts.
        mixed: Optimise integer and categorical coordinates over their values with BoTorch's
            alternating mixed optimiser (exact; in one 4-round profile 125 s of proposing against
            33 s relaxed, MC samples also halved in between) instead of relaxing them.
        objective: ``weighted`` (qLogNEI of ``g``) or ``pareto`` (qLogNParEGO per point).
        domains: ``K`` domain names, in the surrogates' order (to place the floors).
        floors: Outcome constraints; those without a threshold yet are left out.
        share_floor: A data share every point of the batch keeps (a share probe), or None.

    Returns:
        The batch, in ``[0, 1]^d`` (mixture coordinates not yet projected).
    """
    import torch
    from botorch.models.model import ModelList

    from searchlab.batched import batched_model

    torch.manual_seed(seed)
    dtype = torch.float64
    coef = torch.as_tensor(
        objective_coefficients(surrogates, weights, modes, dev_penalty), dtype=dtype
    )
    # One batched posterior for all domains where they allow it (the same distribution).
    model = batched_model(surrogates) or ModelList(*[s.model for s in surrogates])
    d = x_baseline.shape[1]
    bounds = torch.stack([torch.zeros(d, dtype=dtype), torch.ones(d, dtype=dtype)])
    constraints = [
        partial(_below_floor, index=j, threshold=tau)
        for j, tau in floor_outputs(surrogates, domains, floors)
    ]
    inequalities = share_floor.constraints() if share_floor is not None else None
    optimise = partial(
        _optimise,
        bounds=bounds,
        discrete_dims=discrete_dims,
        mixed=mixed,
        raw_samples=raw_samples,
        num_restarts=num_restarts,
        inequality_constraints=inequalities,
    )
    with quiet_numerics():
        if objective == ObjectiveType.PARETO:
            matrix = torch.as_tensor(objective_matrix(surrogates, modes, dev_penalty), dtype=dtype)
            x, values = _pareto_batch(
                model, matrix, constraints, x_baseline, x_pending, q, seed,
                lambda acqf, k: optimise(acqf, q=k),
            )  # fmt: skip
        else:
            acqf = _acquisition(model, coef, x_baseline, x_pending, seed, constraints)
            x, values = optimise(acqf, q=q)
        with torch.no_grad():
            means = model.posterior(x).mean @ coef
    vals = values.reshape(-1).tolist() if values is not None else [float("nan")] * q
    if len(vals) == 1 and q > 1:
        vals = vals * q
    return Batch(
        x=x.detach().numpy(),
        acquisition=[float(v) for v in vals],
        predicted_objective=[float(m) for m in means.reshape(-1)],
    )


def _below_floor(samples: torch.Tensor, *, index: int, threshold: float) -> torch.Tensor:
    """BoTorch outcome constraint ``tau - samples[..., j]``: feasible where it is <= 0.

    ``samples`` of shape ``sample_shape x batch x q x m``; the result drops the last dimension.
    """
    return threshold - samples[..., index]


def _sampler(model: Any, seed: int) -> Any:
    """A quasi-MC sampler: one per domain model for a ModelList (its posterior is a
    PosteriorList), one for a :class:`~searchlab.batched.DomainBatch`."""
    import torch
    from botorch.models.model import ModelList
    from botorch.sampling.list_sampler import ListSampler
    from botorch.sampling.normal import SobolQMCNormalSampler

    if not isinstance(model, ModelList):
        return SobolQMCNormalSampler(sample_shape=torch.Size([64]), seed=seed)
    return ListSampler(
        *[
            SobolQMCNormalSampler(sample_shape=torch.Size([64]), seed=seed + i)
            for i in range(len(model.models))
        ]
    )


def _tensor_or_none(x: np.ndarray | None) -> torch.Tensor | None:
    import torch

    return None if x is None or len(x) == 0 else torch.as_tensor(x, dtype=torch.float64)


def _acquisition(
    model: Any,
    coef: torch.Tensor,
    x_baseline: np.ndarray,
    x_pending: np.ndarray | None,
    seed: int,
    constraints: list[Any] | None = None,
) -> Any:
    """qLogNEI of the linear objective ``samples @ coef`` over the domains' models.

    ``model`` has the ``K`` domains' outputs (``m`` in all; a ``ModelList`` or a
    :class:`~searchlab.batched.DomainBatch`), ``coef`` of
    shape ``(m,)``, ``x_baseline`` ``(n, d)``, ``x_pending`` ``(p, d)`` or None; ``constraints``
    are outcome constraints on the same samples (:func:`_below_floor`).
    """
    import torch
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.acquisition.objective import GenericMCObjective

    def g(samples: torch.Tensor, X: torch.Tensor | None = None) -> torch.Tensor:
        # samples: sample_shape x batch x q x m  ->  sample_shape x batch x q
        return samples @ coef

    return qLogNoisyExpectedImprovement(
        model=model,
        X_baseline=torch.as_tensor(x_baseline, dtype=torch.float64),
        sampler=_sampler(model, seed),
        objective=GenericMCObjective(g),
        X_pending=_tensor_or_none(x_pending),
        constraints=constraints or None,
        prune_baseline=True,
        cache_root=False,
    )


def _pareto_batch(
    model: Any,
    matrix: torch.Tensor,
    constraints: list[Any],
    x_baseline: np.ndarray,
    x_pending: np.ndarray | None,
    q: int,
    seed: int,
    optimise: Callable[[Any, int], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q`` points, each maximising qLogNParEGO of ``samples @ matrix`` (``(m, K)``: the ``K``
    per-domain scores) with its own scalarisation weights, the earlier points pending.

    The weights are ``q`` quasi-random points of the ``K``-simplex, so one batch spreads over
    the trade-offs. Returns ``x`` of shape ``(q, d)`` and the ``q`` acquisition values.
    """
    import torch
    from botorch.acquisition.multi_objective.objective import GenericMCMultiOutputObjective
    from botorch.acquisition.multi_objective.parego import qLogNParEGO
    from botorch.utils.sampling import sample_simplex

    def scores(samples: torch.Tensor, X: torch.Tensor | None = None) -> torch.Tensor:
        # samples: sample_shape x batch x q x m  ->  sample_shape x batch x q x K
        return samples @ matrix

    weights = sample_simplex(matrix.shape[1], n=q, qmc=True, seed=seed, dtype=torch.float64)
    baseline = torch.as_tensor(x_baseline, dtype=torch.float64)
    pending = _tensor_or_none(x_pending)
    points, values = [], []
    for i in range(q):
        acqf = qLogNParEGO(
            model=model,
            X_baseline=baseline,
            scalarization_weights=weights[i],
            sampler=_sampler(model, seed),
            objective=GenericMCMultiOutputObjective(scores),
            constraints=constraints or None,
            X_pending=pending,
            prune_baseline=True,
            cache_root=False,
        )
        x, value = optimise(acqf, 1)
        points.append(x.reshape(1, -1))
        values.append(value.reshape(-1))
        pending = points[-1] if pending is None else torch.cat([pending, points[-1]])
    return torch.cat(points), torch.cat(values)


def _optimise(
    acqf: Any,
    *,
    bounds: torch.Tensor,
    q: int,
    discrete_dims: Mapping[int, Sequence[float]] | None,
    mixed: bool,
    raw_samples: int,
    num_restarts: int,
    inequality_constraints: list[tuple[torch.Tensor, torch.Tensor, float]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximises ``acqf`` over the unit cube (within ``inequality_constraints``, BoTorch's
    format): ``(x, values)``, ``x`` of shape ``q x d``."""
    from botorch.optim import optimize_acqf
    from botorch.optim.optimize_mixed import optimize_acqf_mixed_alternating

    if discrete_dims and mixed:
        x, values = optimize_acqf_mixed_alternating(
            acqf,
            bounds=bounds,
            discrete_dims={k: list(v) for k, v in discrete_dims.items()},
            q=q,
            raw_samples=raw_samples,
            num_restarts=num_restarts,
            options={"maxiter_alternating": 16},
            inequality_constraints=inequality_constraints,
        )
    else:
        # Continuous relaxation: integer and categorical coordinates are rounded when the point
        # is decoded, and the rounded recipe is what is stored and later conditioned on.
        x, values = optimize_acqf(
            acqf,
            bounds=bounds,
            q=q,
            raw_samples=raw_samples,
            num_restarts=num_restarts,
            sequential=True,
            options={"maxiter": 60},
            inequality_constraints=inequality_constraints,
        )
    return x, values


def modelled_objective(
    predictions: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float],
    *,
    task: int = EXTERNAL,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted posterior mean (and sd, domains taken as independent) of one task.

    Args:
        predictions: Per domain, :meth:`DomainSurrogate.predict` at ``n`` recipes (the engine
            keeps them from its last fit, so nothing is predicted twice).
        weights: ``K`` domain weights.
        task: ``EXTERNAL`` (the modelled external score) or ``DEV``.

    Returns:
        ``n`` means and ``n`` standard deviations; NaN where a domain has no external model.
    """
    key = "ext" if task == EXTERNAL else "dev"
    mean = sum(w * p[f"{key}_mean"] for p, w in zip(predictions, weights, strict=True))
    var = sum((w * p[f"{key}_sd"]) ** 2 for p, w in zip(predictions, weights, strict=True))
    return np.asarray(mean, dtype=float), np.sqrt(np.asarray(var, dtype=float))
