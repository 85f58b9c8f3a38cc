"""All domains' two-task ICM surrogates as one batched GP, so the acquisition pays one posterior.

The acquisition (:mod:`searchlab.acquisition`) needs at ``P`` points the joint posterior of the
``2K`` outputs ``(dev_1, ext_1, ..., dev_K, ext_K)`` of ``K`` domains. A BoTorch ``ModelList``
of the ``K`` ``MultiTaskGP`` s computes it one model after the other: ``K`` passes through
GPyTorch's Python, about 7 ms each at 100 candidates on one CPU thread (measured, cProfile),
which is most of a proposal's time. The domains are independent a posteriori, so the joint
covariance is block diagonal,

    Sigma = blockdiag(Sigma_1, ..., Sigma_K),    Sigma_k of shape 2P x 2P (task-major),

and the ``K`` ICMs can be evaluated as one GPyTorch ``ExactGP`` with batch shape ``[K]`` (BoTorch's
``MultiTaskGP`` refuses batched training inputs). :class:`DomainBatch` holds the per-domain
models' fitted hyperparameters stacked along that batch dimension and returns the same
distribution as the ``ModelList``: a ``MultitaskMultivariateNormal`` over ``P x 2K`` whose
covariance stays a ``BlockDiagLinearOperator``, so a sample costs ``K`` Cholesky factors of
``2P x 2P``, never one of ``2KP x 2KP``.

Limit: only when every domain is a two-task ICM with the same training inputs (dev at every
candidate, external at the same submitted ones, which is what the engine stores). Otherwise
:func:`batched_model` returns None and the caller keeps the ``ModelList``. Its Monte Carlo draws
differ from the ``ModelList``'s (one Sobol sequence, not one per domain), so proposals are the
same in distribution, not draw for draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from searchlab.surrogate import DEV, EXTERNAL, DomainSurrogate, SurrogateForm, log_parametrise

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
    import torch

    if len(surrogates) < 2 or any(
        s.model is None or not s.two_task or s.form is not SurrogateForm.ICM for s in surrogates
    ):
        return None
    first = surrogates[0].model.train_inputs[0]
    if any(
        s.model.train_inputs[0].shape != first.shape
        or not torch.equal(s.model.train_inputs[0], first)
        for s in surrogates[1:]
    ):
        return None
    return _domain_batch_class()(surrogates)


def _domain_batch_class() -> type:
    """Built on first use so that importing this module does not import torch (lazy imports)."""
    import torch
    from botorch.models.model import Model
    from botorch.models.multitask import _compute_multitask_mean
    from botorch.models.utils.assorted import _make_X_full, gpt_posterior_settings
    from botorch.models.utils.gpytorch_modules import (
        MIN_INFERRED_NOISE_LEVEL,
        get_covar_module_with_dim_scaled_prior,
    )
    from botorch.posteriors.gpytorch import GPyTorchPosterior
    from gpytorch.constraints import GreaterThan
    from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal
    from gpytorch.kernels import IndexKernel
    from gpytorch.likelihoods import HadamardGaussianLikelihood
    from gpytorch.means import ConstantMean, MultitaskMean
    from gpytorch.models import ExactGP
    from linear_operator.operators import BlockDiagLinearOperator

    class BatchedICM(ExactGP):
        """``K`` ICMs ``k(x, x') B_k[i, j]`` in GPyTorch batch mode; module names as BoTorch's
        ``MultiTaskGP`` (with searchlab's full-rank ``IndexKernel``), so its state dict stacks."""

        def __init__(self, train_x: torch.Tensor, train_y: torch.Tensor, dim: int) -> None:
            # train_x: K x N x (d + 1), task last; train_y: K x N (standardised per domain).
            batch = train_y.shape[:-1]
            likelihood = HadamardGaussianLikelihood(
                num_tasks=2,
                batch_shape=batch,
                noise_constraint=GreaterThan(MIN_INFERRED_NOISE_LEVEL, transform=None),
                task_feature_index=dim,
            )
            super().__init__(train_x, train_y, likelihood)
            self.dim = dim
            self.mean_module = MultitaskMean(ConstantMean(batch_shape=batch), num_tasks=2)
            self.covar_module = get_covar_module_with_dim_scaled_prior(
                ard_num_dims=dim, batch_shape=batch, active_dims=list(range(dim))
            ) * IndexKernel(num_tasks=2, rank=2, batch_shape=batch, active_dims=[dim])
            log_parametrise(self)  # as DomainSurrogate's two-task models, so raw values stack

        def forward(self, x: torch.Tensor) -> MultivariateNormal:
            # x: batch x K x n x (d + 1)
            task = x[..., self.dim :].long()
            mean = _compute_multitask_mean(self.mean_module, x[..., : self.dim], task, x[..., :0])
            return MultivariateNormal(mean, self.covar_module(x))

    class DomainBatch(Model):
        """The ``2K``-output posterior of ``K`` two-task ICM surrogates in one GPyTorch call.

        Args:
            surrogates: Fitted two-task ICM surrogates on the same training inputs
                (:func:`batched_model` checks that).
        """

        def __init__(self, surrogates: Sequence[DomainSurrogate]) -> None:
            super().__init__()
            models = [s.model for s in surrogates]
            dim = surrogates[0].dim
            k = len(models)
            train_x = models[0].train_inputs[0]  # N x (d + 1), already projected
            train_y = torch.stack([m.train_targets for m in models])  # K x N
            self.gp = BatchedICM(train_x.expand(k, *train_x.shape), train_y, dim).to(train_x)
            # Fitted values, stacked: each domain's parameter becomes one slice of the batch.
            states = [m.state_dict() for m in models]
            names = [name for name, _ in self.gp.named_parameters()]
            stacked = {name: torch.stack([s[name] for s in states]) for name in names}
            self.gp.load_state_dict(stacked, strict=False)
            self.gp.eval()
            self.input_transform = models[0].input_transform
            # Standardize(m=1) per domain, shared by its two tasks: mean and sd, each K.
            self.y_mean = torch.stack([m.outcome_transform.means.reshape(()) for m in models])
            self.y_sd = torch.stack([m.outcome_transform.stdvs.reshape(()) for m in models])
            self.k, self.dim = k, dim

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
