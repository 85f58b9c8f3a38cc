"""Per-domain surrogate: one GP over (recipe, task) with two tasks, dev and external.

For domain ``d`` the default model (``SurrogateForm.ICM``) is an intrinsic coregionalisation
model (ICM, Bonilla et al. 2008)

    cov((x, i), (x', j)) = k(x, x') * B[i, j],    B = F F^T + diag(v),  F in R^{2 x 2}

with ``k`` BoTorch's default RBF ARD kernel (log-normal lengthscale prior scaled with the
dimension) and task ``0`` = dev (observed at every candidate), task
``1`` = external (observed at the few submitted ones). BoTorch's ``MultiTaskGP`` uses a
``PositiveIndexKernel`` with a Beta prior that can only represent non-negative task correlation
(measured: a true -0.9 was fitted as +0.05..+0.10); a flipped proxy must be representable, so the
task kernel here is gpytorch's unconstrained ``IndexKernel`` of full rank (:func:`icm_task_kernel`).
``B`` has priors: LKJ(2) on its correlation ``r`` (density proportional to ``1 - r^2``) and
LogNormal(0, 2) on its two variances. Without them a fit saturated (``|r|`` of 0.99999 and more
with two external points, or three flipped ones), and external had no variance of its own where
it was not observed: 58 % of the true externals of the main job's weak domain lay inside the 90 %
intervals, 74 % with the priors, at a lower RMSE (docs/RESULTS.md).

Outcomes are standardised jointly, levels differ per task; noise is inferred per task, so
the leaderboard's rounding enters as noise, never as exact values. A floored external score is
shifted up by half the resolution first, the mean of the floor's error.

The autoregressive form (``SurrogateForm.AUTOREGRESSIVE``, Kennedy & O'Hagan 2000, "Predicting
the output from a complex computer code when fast approximations are available", Biometrika
87(1); the co-kriging model of multi-fidelity Bayesian optimisation) separates what external
follows from what it does not:

    dev(x) = f(x) + e_dev,    ext(x) = rho * f(x) + delta(x) + e_ext,
    f ~ GP(0, k_f),  delta ~ GP(0, k_delta) independent,  rho in R (free in sign),

    cov((x, i), (x', j)) = c_i c_j k_f(x, x') + [i = j = 1] k_delta(x, x'),   c = (1, rho),

with ``k_f`` and ``k_delta`` two RBF ARD kernels with their own lengthscales. In
the ICM both tasks share one input kernel, so ~16 external points can only say "this region is
worse"; here ``delta`` (external's departure from ``rho * dev``) has lengthscales of its own and
can be short along a hack knob and long along genuine skill. Priors (standardised outcomes):
``rho ~ N(0, 1)``, outputscales ``Gamma(2, 2)`` for ``k_f`` and ``Gamma(2, 4)`` for ``k_delta``
(a priori most of external's variation follows dev), and BoTorch's dimension-scaled log-normal
lengthscale prior on both (Hvarfner, Hellsten & Nardi 2024). ``rho`` is identified only with
external points spread along ``f``; with two it is a prior draw.

Every fit's optimiser status is checked and kept (:attr:`DomainSurrogate.fit_status`): a warm
L-BFGS run that does not converge is kept, and the next round goes on from it; a cold fit whose
every attempt fails keeps its starting hyperparameters instead of stopping the study.

Why one GP per domain and not one over all domains' 2K tasks: a joint fit over 6 domains took
97 s at 50 candidates and 391 s at 100 on one CPU thread (measured); per-domain fits take a few
seconds cold and well under one second warm-started from the previous fit's hyperparameters.
The domains' ICMs are still fitted and evaluated together, as one batched GP whose batch
entries are independent (:mod:`searchlab.batched`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from botorch.models.model import Model

DEV, EXTERNAL = 0, 1
#: L-BFGS iterations of a warm refit (from the previous round's optimum).
WARM_MAXITER = 60
_WARM_KEYS = ("covar_module", "mean_module", "likelihood")


@contextmanager
def quiet_numerics() -> Iterator[None]:
    """Silences, inside the block only, what BoTorch, GPyTorch and linear_operator warn about
    numerics they handle themselves (jitter added, a fit stopped at its iteration cap, input
    scaling, sparse checks, ``torch.jit`` deprecations): how a fit ended is recorded instead
    (:attr:`DomainSurrogate.fit_status`, the audit's ``fit_warning``)."""
    from botorch.exceptions.warnings import BotorchWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BotorchWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # gpytorch's NumericalWarning is one
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


class SurrogateForm(StrEnum):
    """How a domain's external task is coupled to its dev task (module docstring)."""

    ICM = "icm"  # one shared input kernel times a 2 x 2 task covariance
    AUTOREGRESSIVE = "autoregressive"  # ext = rho * f_dev + delta, delta its own GP


def _autoregressive_kernel(dim: int):  # -> gpytorch Kernel over (x, task)
    """``c_i c_j k_f(x, x') + [i = j = 1] k_delta(x, x')`` with ``c = (1, rho)``; the task in
    column ``dim`` (0 = dev, 1 = external)."""
    import torch
    from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
    from gpytorch.kernels import Kernel, ScaleKernel
    from gpytorch.priors import GammaPrior, NormalPrior

    class AutoregressiveTaskKernel(Kernel):
        def __init__(self) -> None:
            super().__init__()
            self.task_dim = dim
            self.dev_kernel = ScaleKernel(
                get_covar_module_with_dim_scaled_prior(ard_num_dims=dim),
                outputscale_prior=GammaPrior(2.0, 2.0),
            )
            self.gap_kernel = ScaleKernel(
                get_covar_module_with_dim_scaled_prior(ard_num_dims=dim),
                outputscale_prior=GammaPrior(2.0, 4.0),
            )
            self.register_parameter("rho", torch.nn.Parameter(torch.full((1,), 0.5)))
            self.register_prior(
                "rho_prior", NormalPrior(0.0, 1.0), lambda m: m.rho, lambda m, v: m._set_rho(v)
            )

        def _set_rho(self, value: torch.Tensor) -> None:
            self.rho.data.copy_(torch.as_tensor(value).reshape(1))

        def forward(
            self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, **params: object
        ) -> torch.Tensor:
            # x1: batch x n x (d + 1), x2: batch x m x (d + 1); the task is the last column.
            ext1 = x1[..., self.task_dim].round() == 1  # batch x n
            ext2 = x2[..., self.task_dim].round() == 1  # batch x m
            z1, z2 = x1[..., : self.task_dim], x2[..., : self.task_dim]
            one = torch.ones((), dtype=x1.dtype)
            c1 = torch.where(ext1, self.rho, one)
            c2 = torch.where(ext2, self.rho, one)
            kf = self.dev_kernel(z1, z2, diag=diag).to_dense()
            kd = self.gap_kernel(z1, z2, diag=diag).to_dense()
            if diag:
                return c1 * c2 * kf + (ext1 & ext2).to(kd) * kd
            both = (ext1.unsqueeze(-1) & ext2.unsqueeze(-2)).to(kd)
            return c1.unsqueeze(-1) * c2.unsqueeze(-2) * kf + both * kd

        def task_correlation(self) -> float:
            """corr(dev(x), ext(x)) at one recipe: rho s_f / sqrt(s_f (rho^2 s_f + s_delta))."""
            sf, sd = self.dev_kernel.outputscale, self.gap_kernel.outputscale
            rho = self.rho.reshape(())
            return float(rho * sf / torch.sqrt(sf * (rho**2 * sf + sd)))

    return AutoregressiveTaskKernel()


#: ``eta`` of the LKJ prior (Lewandowski, Kurowicka & Joe 2009) on the ICM's 2 x 2 task
#: correlation: density ``(1 - r^2)^(eta - 1)``, i.e. ``(r + 1) / 2 ~ Beta(eta, eta)``. LKJ(2) is
#: weakly informative and zero at ``r = +-1``, so a fit can no longer saturate (without it,
#: +0.99999 with six external points was typical) and external keeps a part of its own
#: variance where it was not observed.
TASK_CORRELATION_ETA = 2.0
#: LogNormal(0, s) prior on each task's variance ``B[i, i]`` (outcomes standardised jointly, so
#: about 1 for dev); wide, since external's own spread can be a fiftieth of dev's.
TASK_VARIANCE_SCALE = 2.0


def icm_task_kernel(dim: int, batch_shape: torch.Size | None = None):  # -> gpytorch IndexKernel
    """The ICM's full-rank 2 x 2 task covariance ``B = F F^T + diag(v)`` over column ``dim``,
    with priors on its correlation and its two variances (the constants above).

    Args:
        dim: The task column (recipes occupy columns ``0 .. dim - 1``).
        batch_shape: One task covariance per batch entry (:mod:`searchlab.batched`).
    """
    import torch
    from gpytorch.kernels import IndexKernel
    from gpytorch.priors import LKJPrior, LogNormalPrior

    kernel = IndexKernel(
        num_tasks=2, rank=2, batch_shape=batch_shape or torch.Size(), active_dims=[dim]
    )
    kernel.register_prior(
        "task_correlation_prior",
        LKJPrior(n=2, eta=TASK_CORRELATION_ETA),
        _correlation_matrix,
        _set_correlation_matrix,
    )
    kernel.register_prior(
        "task_variance_prior",
        LogNormalPrior(0.0, TASK_VARIANCE_SCALE),
        _task_variances,
        _set_task_variances,
    )
    return kernel


def _task_variances(kernel: torch.nn.Module) -> torch.Tensor:
    """``diag(B)``, shape ``batch x 2``."""
    return kernel._eval_covar_matrix().diagonal(dim1=-2, dim2=-1)


def _correlation_matrix(kernel: torch.nn.Module) -> torch.Tensor:
    """``D^-1/2 B D^-1/2``, ``D = diag(B)``, shape ``batch x 2 x 2``."""
    b = kernel._eval_covar_matrix()
    sd = b.diagonal(dim1=-2, dim2=-1).sqrt()
    return b / (sd.unsqueeze(-1) * sd.unsqueeze(-2))


def _set_task_covariance(kernel: torch.nn.Module, var: torch.Tensor, r: torch.Tensor) -> None:
    """Sets ``B`` to variances ``var`` (``batch x 2``) and correlation ``r`` (``batch``), with
    ``v = var / 100`` so that ``F F^T = B - diag(v)`` stays positive definite (``|r| < 0.98``).
    """
    import torch

    r = r.clamp(-0.98, 0.98)
    sd = var.sqrt()
    target = torch.stack(
        [
            torch.stack([0.99 * var[..., 0], r * sd[..., 0] * sd[..., 1]], -1),
            torch.stack([r * sd[..., 0] * sd[..., 1], 0.99 * var[..., 1]], -1),
        ],
        -2,
    )
    with torch.no_grad():
        kernel.covar_factor.copy_(torch.linalg.cholesky(target))
        kernel.var = var / 100


def _set_correlation_matrix(kernel: torch.nn.Module, value: torch.Tensor) -> None:
    """Prior sampling (BoTorch's fit retries): keeps the variances, sets the correlation."""
    r = value[..., 0, 1].expand(kernel.batch_shape)
    _set_task_covariance(kernel, _task_variances(kernel).detach(), r)


def _set_task_variances(kernel: torch.nn.Module, value: torch.Tensor) -> None:
    """Prior sampling: keeps the correlation, sets the variances."""
    r = _correlation_matrix(kernel).detach()[..., 0, 1]
    _set_task_covariance(kernel, value.reshape(*kernel.batch_shape, 2), r)


def log_parametrise(module: torch.nn.Module) -> None:
    """Lets the optimiser move lengthscales and noise variances in log space: ``value = bound +
    exp(raw)`` in place of BoTorch's ``value = raw`` with a box bound.

    The objective (marginal likelihood plus priors on the values) is unchanged; only L-BFGS's
    coordinates are. Lengthscales between 0.1 and 6 in one kernel make the raw scale badly
    conditioned: on six two-task domains at 100 candidates a cold fit took 663-1816 L-BFGS
    iterations raw and 63-315 in log space, with the same optimum in five domains (marginal
    likelihood equal to 4 decimals, external means within 0.02 posterior sd) and another local
    optimum in one. The values, bounds and priors are kept.
    """
    import torch
    from gpytorch.constraints import GreaterThan

    for m in module.modules():
        for name in ("lengthscale", "noise"):
            raw = f"raw_{name}"
            constraint = getattr(m, f"{raw}_constraint", None)
            if not isinstance(constraint, GreaterThan) or constraint.enforced:
                continue
            # Strictly above the bound: log(value - bound) must exist.
            bound = constraint.lower_bound
            value = torch.maximum(getattr(m, name).detach(), 2 * bound + 1e-9)
            m.register_constraint(
                raw,
                GreaterThan(bound, transform=torch.exp, inv_transform=torch.log),
            )
            setattr(m, name, value)


def _simplex_transform(groups: Sequence[Sequence[int]]):  # -> botorch InputTransform
    """An input transform that projects each mixture group of coordinates onto the simplex."""
    import torch
    from botorch.models.transforms.input import InputTransform

    class SimplexProjection(InputTransform, torch.nn.Module):
        """Maps ``x[..., g]`` to ``x[..., g] / sum(x[..., g])`` for each group ``g``.

        Idempotent, so stored (already projected) training inputs are unchanged; a raw point
        proposed by the optimiser is valued as the recipe it decodes to.
        """

        def __init__(self) -> None:
            super().__init__()
            self.transform_on_train = True
            self.transform_on_eval = True
            self.transform_on_fantasize = True
            self.groups = [list(g) for g in groups]

        def transform(self, X: torch.Tensor) -> torch.Tensor:
            # X: batch x n x D (D = d, or d + 1 with the task column last)
            out = X.clone()
            for g in self.groups:
                block = X[..., g].clamp_min(0.0)
                total = block.sum(dim=-1, keepdim=True)
                out[..., g] = torch.where(
                    total > 1e-9, block / total.clamp_min(1e-9), torch.full_like(block, 1 / len(g))
                )
            return out

        def equals(self, other: object) -> bool:
            return isinstance(other, SimplexProjection) and other.groups == self.groups

    return SimplexProjection()


class DomainSurrogate:
    """The dev/external GP of one domain, refitted each round and warm-started.

    Args:
        dim: Number of recipe coordinates ``d``.
        simplex_groups: Coordinate indices of mixture groups (projected onto the simplex).
        resolution: The external target's display resolution; scores are floored to it.
        seed: Seeds the fit's random draws (BoTorch's fit retries from sampled priors), so a study
            is reproducible from its seed; the draw also depends on the data size.
        form: How external is coupled to dev (:class:`SurrogateForm`).
    """

    def __init__(
        self,
        *,
        dim: int,
        simplex_groups: Sequence[Sequence[int]] = (),
        resolution: float = 0.0,
        seed: int = 0,
        form: SurrogateForm = SurrogateForm.ICM,
    ) -> None:
        self.dim = dim
        self.form = SurrogateForm(form)
        #: How the last fit ended: ``"converged"``, ``"stopped"`` (the warm run's iteration cap),
        #: ``"warm run not converged, kept: ..."`` or ``"failed, kept the starting ...: ..."``.
        self.fit_status = "not fitted"
        self.simplex_groups = [list(g) for g in simplex_groups]
        self.resolution = resolution
        self.seed = seed
        self.model: Model | None = None
        self.two_task = False
        self._warm: dict[str, torch.Tensor] = {}

    @property
    def num_outputs(self) -> int:
        return 2 if self.two_task else 1

    def fit(
        self,
        x_dev: np.ndarray,
        y_dev: np.ndarray,
        x_ext: np.ndarray,
        y_ext: np.ndarray,
    ) -> None:
        """Fits the GP to the domain's observations.

        With fewer than two external observations the model is a single-task GP on dev (the
        external task would be unidentified).

        Args:
            x_dev: ``n x d`` encoded recipes with a dev score.
            y_dev: ``n`` dev accuracies.
            x_ext: ``m x d`` encoded recipes with an external score.
            y_ext: ``m`` external scores as reported (floored).
        """
        with self.seeded(len(y_dev), len(y_ext)):
            model, warm = self.build(x_dev, y_dev, x_ext, y_ext)
            self.adopt(model, self.optimise(model, warm=warm))

    @contextmanager
    def seeded(self, n_dev: int, n_ext: int) -> Iterator[None]:
        """A block whose random draws (the task kernel's initial factor, BoTorch's fit retries)
        come from a private generator seeded by the surrogate's seed and the data size, so a
        study is reproducible from its seed; numerics warnings are recorded, not printed."""
        import torch

        with torch.random.fork_rng(), quiet_numerics():
            torch.manual_seed(self.seed * 1_000_003 + 1009 * n_dev + n_ext)
            yield

    def build(
        self, x_dev: np.ndarray, y_dev: np.ndarray, x_ext: np.ndarray, y_ext: np.ndarray
    ) -> tuple[Model, bool]:
        """The model for these observations, not yet fitted (arguments as :meth:`fit`).

        Returns:
            The model, from the previous fit's hyperparameters where its shape is the same,
            and whether it was (a warm start).
        """
        import torch
        from botorch.models import MultiTaskGP, SingleTaskGP
        from botorch.models.transforms.outcome import Standardize

        dtype = torch.float64
        xd = torch.as_tensor(x_dev, dtype=dtype)
        yd = torch.as_tensor(y_dev, dtype=dtype).reshape(-1, 1)
        self.two_task = len(y_ext) >= 2
        if not self.two_task:
            model = SingleTaskGP(
                xd,
                yd,
                outcome_transform=Standardize(m=1),
                input_transform=_simplex_transform(self.simplex_groups),
            )
        else:
            xe = torch.as_tensor(x_ext, dtype=dtype)
            ye = torch.as_tensor(y_ext, dtype=dtype).reshape(-1, 1) + self.resolution / 2
            train_x = torch.cat(
                [
                    torch.cat([xd, torch.full((len(xd), 1), float(DEV), dtype=dtype)], -1),
                    torch.cat([xe, torch.full((len(xe), 1), float(EXTERNAL), dtype=dtype)], -1),
                ]
            )
            train_y = torch.cat([yd, ye])
            model = MultiTaskGP(
                train_x,
                train_y,
                task_feature=self.dim,
                task_covar_prior=None,
                all_tasks=[DEV, EXTERNAL],
                # One standardisation for both tasks: their levels differ (MultitaskMean has a
                # constant per task) and so may their scales (B's diagonal). A per-task
                # StratifiedStandardize cannot untransform a posterior over both tasks at once.
                outcome_transform=Standardize(m=1),
                input_transform=_simplex_transform(self.simplex_groups),
            )
            if self.form is SurrogateForm.AUTOREGRESSIVE:
                model.covar_module = _autoregressive_kernel(self.dim).to(dtype)
            else:
                # Replace the positive-only task kernel by an unconstrained full-rank one.
                data_kernel = model.covar_module.kernels[0]
                model.covar_module = data_kernel * icm_task_kernel(self.dim).to(dtype)
        if self.two_task:
            log_parametrise(model)
        return model, self._warm_start(model)

    def adopt(self, model: Model, status: str) -> None:
        """Keeps a fitted model (from :meth:`build`) and how its fit ended."""
        import torch

        self.fit_status = status
        model.eval()
        self.model = model
        self._warm = {
            k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(_WARM_KEYS)
        }
        self._warm["__two_task__"] = torch.tensor(float(self.two_task))

    @staticmethod
    def optimise(model: Model, *, warm: bool) -> str:
        """Fits a built model's hyperparameters; returns how the fit ended (:attr:`fit_status`)."""
        from botorch.exceptions.errors import ModelFittingError
        from botorch.fit import fit_gpytorch_mll
        from botorch.optim.core import OptimizationStatus
        from botorch.optim.fit import fit_gpytorch_mll_scipy
        from gpytorch.mlls import ExactMarginalLogLikelihood

        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        if warm:
            # From the previous round's optimum a capped L-BFGS run is enough; BoTorch's default
            # retry policy would restart from random hyperparameters on a maxiter warning.
            mll.train()
            result = fit_gpytorch_mll_scipy(mll, options={"maxiter": WARM_MAXITER})
            if result.status is OptimizationStatus.FAILURE:
                # Kept (a cold refit here would change every later round of a study that
                # never failed); the next round's warm start goes on from this point.
                return f"warm run not converged, kept: {result.message}"[:200]
            # STOPPED is the iteration cap: the next round goes on from there too.
            return "converged" if result.status is OptimizationStatus.SUCCESS else "stopped"
        try:
            fit_gpytorch_mll(mll, max_attempts=2)
        except ModelFittingError as exc:
            # Every attempt failed (BoTorch restores the starting state): say so, go on.
            return f"failed, kept the starting hyperparameters: {exc}"[:200]
        return "converged"

    def _warm_start(self, model: Model) -> bool:
        """Starts from the previous fit's hyperparameters when the model shape is the same."""
        if not self._warm or bool(self._warm["__two_task__"]) != self.two_task:
            return False
        own = model.state_dict()
        compatible = {k: v for k, v in self._warm.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(compatible, strict=False)
        return True

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Posterior mean and standard deviation of dev and external.

        Args:
            x: ``n x d`` encoded recipes.

        Returns:
            ``dev_mean``, ``dev_sd``, ``ext_mean``, ``ext_sd``, each ``n`` (external entries are
            NaN while the model is single-task).
        """
        import torch

        if self.model is None:
            raise RuntimeError("predict() before fit()")
        with torch.no_grad(), quiet_numerics():
            post = self.model.posterior(torch.as_tensor(x, dtype=torch.float64))
            mean = post.mean.reshape(len(x), -1).numpy()
            sd = post.variance.clamp_min(0).sqrt().reshape(len(x), -1).numpy()
        nan = np.full(len(x), np.nan)
        return {
            "dev_mean": mean[:, DEV],
            "dev_sd": sd[:, DEV],
            "ext_mean": mean[:, EXTERNAL] if self.two_task else nan,
            "ext_sd": sd[:, EXTERNAL] if self.two_task else nan,
        }

    def task_correlation(self) -> float:
        """rho = B01 / sqrt(B00 B11) of the fitted task covariance (NaN if single-task).

        A point estimate: it shrinks and saturates, so the validity test never thresholds it;
        it is recorded as context.
        """
        import torch

        if not self.two_task or self.model is None:
            return float("nan")
        if self.form is SurrogateForm.AUTOREGRESSIVE:
            with torch.no_grad():
                return self.model.covar_module.task_correlation()
        with torch.no_grad():
            return float(_correlation_matrix(self.model.covar_module.kernels[1])[0, 1])
