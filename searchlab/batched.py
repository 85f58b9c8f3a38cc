"""All domains' two-task ICM surrogates as one batched GP: one fit, one posterior per step.

The acquisition (:mod:`searchlab.acquisition`) needs at ``P`` points the joint posterior of the
``2K`` outputs ``(dev_1, ext_1, ..., dev_K, ext_K)`` of ``K`` domains. A BoTorch ``ModelList``
of the ``K`` ``MultiTaskGP`` s computes it one model after the other: ``K`` passes through
GPyTorch's Python, about 7 ms each at 100 candidates on one CPU thread (measured, cProfile),
which is most of a proposal's time. The domains are independent a posteriori, so the joint
covariance is block diagonal,

    Sigma = blockdiag(Sigma_1, ..., Sigma_K),    Sigma_k of shape 2P x 2P (task-major),

and the ``K`` ICMs can be evaluated as one GPyTorch ``ExactGP`` with batch shape ``[K]``
(BoTorch's ``MultiTaskGP`` refuses batched training inputs).

- :class:`DomainBatch` (from :func:`batched_model`) holds the per-domain models' fitted
  hyperparameters stacked along that batch dimension and returns the same distribution as the
  ``ModelList``: a ``MultitaskMultivariateNormal`` over ``P x 2K`` whose covariance stays a
  ``BlockDiagLinearOperator``, so a sample costs ``K`` Cholesky factors of ``2P x 2P``, never
  one of ``2KP x 2KP``.
- :func:`fit_domains` fits the ``K`` models the same way: the batched negative log marginal
  likelihood (plus priors) is a ``K``-vector whose entry ``k`` is domain ``k``'s own objective,
  and BoTorch's batched L-BFGS-B gives each entry its own run.

Limits: only when every domain is a two-task ICM with the same training inputs (dev at every
candidate, external at the same submitted ones, which is what the engine stores); otherwise the
domains are fitted and evaluated one by one, as before. The Monte Carlo draws of
:class:`DomainBatch` differ from the ``ModelList``'s (one Sobol sequence, not one per domain),
and a batched fit differs from a lone one in rounding, so proposals are the same in
distribution, not draw for draw. A batched evaluation computes all ``K`` objectives while
the slowest domain still iterates, so a fit costs about the slowest domain's iterations times
one batched evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from searchlab.surrogate import (
    DEV,
    EXTERNAL,
    DomainSurrogate,
    SurrogateForm,
    icm_task_kernel,
    log_parametrise,
    quiet_numerics,
)

if TYPE_CHECKING:
    import torch
    from botorch.models.model import Model


def batched_model(surrogates: Sequence[DomainSurrogate]) -> Model | None:
    """The ``K`` fitted surrogates as one :class:`DomainBatch`, or None where they cannot be.

    Args:
        surrogates: Fitted surrogates, one per domain, in the objective's order.

    Returns:
        A BoTorch model with ``2K`` outputs in the ``ModelList``'s order (domain-major, dev then
        external), or None unless every domain is a two-task ICM on the same training inputs.
    """
    if any(
        s.model is None or not s.two_task or s.form is not SurrogateForm.ICM for s in surrogates
    ) or not _share_inputs([s.model for s in surrogates]):
        return None
    return _domain_batch_class()(surrogates)


def _share_inputs(models: Sequence[Any]) -> bool:
    """Whether there are at least two models and all hold the same training inputs."""
    import torch

    first = models[0].train_inputs[0] if models else None
    return len(models) >= 2 and all(
        m.train_inputs[0].shape == first.shape and torch.equal(m.train_inputs[0], first)
        for m in models[1:]
    )


def _stack(models: Sequence[Any], dim: int) -> Any:  # -> BatchedICM
    """The ``K`` domain models' data and current hyperparameters, each domain one slice."""
    import torch

    # The stored inputs, projected as the models' own forward passes project them.
    train_x = models[0].input_transform(models[0].train_inputs[0])  # N x (d + 1)
    train_y = torch.stack([m.train_targets for m in models])  # K x N, standardised
    batched_icm = _batched_icm_class()
    gp = batched_icm(train_x.expand(len(models), *train_x.shape), train_y, dim).to(train_x)
    states = [m.state_dict() for m in models]
    names = [name for name, _ in gp.named_parameters()]
    gp.load_state_dict({n: torch.stack([s[n] for s in states]) for n in names}, strict=False)
    return gp


@cache
def _batched_icm_class() -> type:
    """Built on first use, so that importing this module does not import torch."""
    from botorch.models.multitask import _compute_multitask_mean
    from botorch.models.utils.gpytorch_modules import (
        MIN_INFERRED_NOISE_LEVEL,
        get_covar_module_with_dim_scaled_prior,
    )
    from gpytorch.constraints import GreaterThan
    from gpytorch.distributions import MultivariateNormal
    from gpytorch.likelihoods import HadamardGaussianLikelihood
    from gpytorch.means import ConstantMean, MultitaskMean
    from gpytorch.models import ExactGP
    from gpytorch.priors import LogNormalPrior

    class BatchedICM(ExactGP):
        """``K`` ICMs ``k(x, x') B_k[i, j]`` in GPyTorch batch mode; module names as BoTorch's
        ``MultiTaskGP`` (with searchlab's full-rank ``IndexKernel``), so its state dict stacks."""

        def __init__(self, train_x: torch.Tensor, train_y: torch.Tensor, dim: int) -> None:
            # train_x: K x N x (d + 1), task last; train_y: K x N (standardised per domain).
            batch = train_y.shape[:-1]
            likelihood = HadamardGaussianLikelihood(
                num_tasks=2,
                batch_shape=batch,
                noise_prior=LogNormalPrior(loc=-4.0, scale=1.0),  # MultiTaskGP's
                noise_constraint=GreaterThan(MIN_INFERRED_NOISE_LEVEL, transform=None),
                task_feature_index=dim,
            )
            super().__init__(train_x, train_y, likelihood)
            self.dim = dim
            self.mean_module = MultitaskMean(ConstantMean(batch_shape=batch), num_tasks=2)
            self.covar_module = get_covar_module_with_dim_scaled_prior(
                ard_num_dims=dim, batch_shape=batch, active_dims=list(range(dim))
            ) * icm_task_kernel(dim, batch)
            log_parametrise(self)  # as DomainSurrogate's two-task models, so raw values stack

        def transform_inputs(self, X: torch.Tensor, **_: Any) -> torch.Tensor:
            """BoTorch's loss closure asks for it: the training inputs are projected already."""
            return X

        def forward(self, x: torch.Tensor) -> MultivariateNormal:
            # x: batch x K x n x (d + 1)
            task = x[..., self.dim :].long()
            mean = _compute_multitask_mean(self.mean_module, x[..., : self.dim], task, x[..., :0])
            return MultivariateNormal(mean, self.covar_module(x))

    return BatchedICM


@cache
def _domain_batch_class() -> type:
    """Built on first use, so that importing this module does not import torch."""
    import torch
    from botorch.models.model import Model
    from botorch.models.utils.assorted import _make_X_full, gpt_posterior_settings
    from botorch.posteriors.gpytorch import GPyTorchPosterior
    from gpytorch.distributions import MultitaskMultivariateNormal
    from linear_operator.operators import BlockDiagLinearOperator

    class DomainBatch(Model):
        """The ``2K``-output posterior of ``K`` two-task ICM surrogates in one GPyTorch call.

        Args:
            surrogates: Fitted two-task ICM surrogates on the same training inputs
                (:func:`batched_model` checks that).
        """

        def __init__(self, surrogates: Sequence[DomainSurrogate]) -> None:
            super().__init__()
            models = [s.model for s in surrogates]
            self.gp = _stack(models, surrogates[0].dim)
            self.gp.eval()
            self.input_transform = models[0].input_transform
            # Standardize(m=1) per domain, shared by its two tasks: mean and sd, each K.
            self.y_mean = torch.stack([m.outcome_transform.means.reshape(()) for m in models])
            self.y_sd = torch.stack([m.outcome_transform.stdvs.reshape(()) for m in models])
            self.k, self.dim = len(models), surrogates[0].dim

        @property
        def num_outputs(self) -> int:
            return 2 * self.k

        @property
        def batch_shape(self) -> torch.Size:
            return torch.Size()

        def posterior(
            self,
            X: torch.Tensor,
            output_indices: list[int] | None = None,
            observation_noise: bool | torch.Tensor = False,
            posterior_transform: Any = None,
            **kwargs: Any,
        ) -> Any:
            """Joint posterior at ``X`` (``batch x P x d``): event ``P x 2K``, output
            ``2k + t`` the domain ``k``'s task ``t`` (0 dev, 1 external)."""
            if output_indices is not None or observation_noise is not False:
                raise NotImplementedError("DomainBatch: all outputs, latent values only")
            x_full = _make_X_full(X, output_indices=[DEV, EXTERNAL], tf=self.dim)
            x_full = self.input_transform(x_full)
            p = X.shape[-2]
            with gpt_posterior_settings():
                mvn = self.gp(x_full.unsqueeze(-3))  # batch x K, event 2P (task-major)
            sd = self.y_sd  # K
            mean = mvn.mean * sd.unsqueeze(-1) + self.y_mean.unsqueeze(-1)  # batch x K x 2P
            mean = mean.unflatten(-1, (2, p)).permute(*range(mean.dim() - 2), -1, -3, -2)
            mean = mean.reshape(*mean.shape[:-2], 2 * self.k)  # batch x P x 2K
            covar = mvn.lazy_covariance_matrix * (sd**2).reshape(-1, 1, 1)
            # Outputs ordered (k, t), each block task-major: non-interleaved over 2K tasks.
            distribution = MultitaskMultivariateNormal(
                mean, BlockDiagLinearOperator(covar, block_dim=-3), interleaved=False
            )
            posterior = GPyTorchPosterior(distribution=distribution)
            if posterior_transform is not None:
                return posterior_transform(posterior)
            return posterior

    return DomainBatch


def fit_domains(
    surrogates: Sequence[DomainSurrogate],
    x_dev: np.ndarray,
    y_devs: Sequence[np.ndarray],
    x_ext: np.ndarray,
    y_exts: Sequence[np.ndarray],
) -> None:
    """Fits every domain's surrogate, as :meth:`DomainSurrogate.fit` would one by one.

    Two-task ICMs on the same inputs, all cold or all warm, are optimised together by BoTorch's
    batched L-BFGS-B (``fmin_l_bfgs_b_batched``, a port of SciPy's): each domain has its own
    iterates, line searches and stopping test, as in its own run, and the ``K`` objectives
    are evaluated in one GPyTorch pass. A cold domain whose run does not converge is refitted
    on its own from its starting point, with BoTorch's retries, as before.

    Args:
        surrogates: ``K`` surrogates.
        x_dev: ``n x d`` encoded recipes with dev scores (every domain's).
        y_devs: ``K`` arrays of ``n`` dev accuracies.
        x_ext: ``m x d`` encoded recipes with external scores.
        y_exts: ``K`` arrays of ``m`` external scores as reported.
    """
    built = []
    for s, y_dev, y_ext in zip(surrogates, y_devs, y_exts, strict=True):
        with s.seeded(len(y_dev), len(y_ext)):
            built.append(s.build(x_dev, y_dev, x_ext, y_ext))
    groups: dict[bool, list[int]] = {}
    for i, (s, (_, warm)) in enumerate(zip(surrogates, built, strict=True)):
        if s.two_task and s.form is SurrogateForm.ICM:
            groups.setdefault(warm, []).append(i)
    statuses: dict[int, str | None] = {}
    for warm, members in groups.items():
        models = [built[i][0] for i in members]
        if _share_inputs(models):
            with quiet_numerics():  # L-BFGS-B draws nothing: only the warnings are scoped
                ended = _optimise_together(models, dim=surrogates[0].dim, warm=warm)
            statuses.update(zip(members, ended, strict=True))
    for i, (s, (model, warm)) in enumerate(zip(surrogates, built, strict=True)):
        status = statuses.get(i)
        if status is None:  # not batched, or a cold run that did not converge: its own fit
            with s.seeded(len(y_devs[i]), len(y_exts[i])):
                status = s.optimise(model, warm=warm)
        s.adopt(model, status)


def _optimise_together(models: Sequence[Any], *, dim: int, warm: bool) -> list[str | None]:
    """Runs each model's L-BFGS-B, batched; writes the results into the models.

    Returns:
        Per model, its :attr:`DomainSurrogate.fit_status`, or None for a cold run that did not
        converge (its model is left at its starting point).
    """
    import torch
    from botorch.optim.batched_lbfgs_b import fmin_l_bfgs_b_batched
    from botorch.optim.closures import BatchedNDarrayOptimizationClosure, get_loss_closure
    from botorch.optim.utils import get_parameters_and_bounds
    from botorch.optim.utils.numpy_utils import get_per_element_bounds
    from gpytorch.mlls import ExactMarginalLogLikelihood

    from searchlab.surrogate import WARM_MAXITER

    gp = _stack(models, dim)
    mll = ExactMarginalLogLikelihood(gp.likelihood, gp)
    mll.train()
    parameters, bounds = get_parameters_and_bounds(mll)
    parameters = {n: p for n, p in parameters.items() if p.requires_grad}
    batch = torch.Size([len(models)])
    closure = BatchedNDarrayOptimizationClosure(
        forward=get_loss_closure(mll), parameters=parameters, batch_shape=batch
    )
    # SciPy's defaults otherwise (factr 1e7, pgtol 1e-5, 10 corrections), as a lone fit has.
    xs, _, results = fmin_l_bfgs_b_batched(
        func=closure,
        x0=closure.state,
        bounds=get_per_element_bounds(parameters, bounds, batch),
        pass_batch_indices=True,
        **({"maxiter": WARM_MAXITER} if warm else {}),
    )
    closure.state = xs
    ended: list[str | None] = []
    for k, (model, result) in enumerate(zip(models, results, strict=True)):
        # status: 0 converged, 1 the iteration cap, 2 anything else (SciPy's warnflag)
        if result.status == 0:
            ended.append("converged")
        elif warm:  # kept, as a lone warm run is: the next round goes on from here
            kept = f"warm run not converged, kept: {result.message}"[:200]
            ended.append("stopped" if result.status == 1 else kept)
        else:
            ended.append(None)
            continue
        own = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in gp.named_parameters():
                own[name].copy_(value[k])
    return ended
