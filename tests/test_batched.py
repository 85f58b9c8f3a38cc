"""The batched posterior of all domains equals the ModelList's it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import six_domain_surrogates

from searchlab.batched import batched_model
from searchlab.surrogate import DomainSurrogate, SurrogateForm


@pytest.fixture(scope="module")
def fitted() -> tuple:
    return six_domain_surrogates(16)


def test_the_batched_posterior_is_the_model_lists(fitted: tuple) -> None:
    from botorch.models.model import ModelList

    _, space, surrogates = fitted
    batch, listed = batched_model(surrogates), ModelList(*[s.model for s in surrogates])
    assert batch is not None and batch.num_outputs == 2 * len(surrogates)
    x = torch.rand(3, 4, space.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = batch.posterior(x), listed.posterior(x)
        torch.testing.assert_close(ours.mean, theirs.mean, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(ours.variance, theirs.variance, rtol=1e-8, atol=1e-12)
        joint = ours.distribution.covariance_matrix  # 3 x 4*12 x 4*12, outputs task-major
        block = 2 * x.shape[-2]
        for k, s in enumerate(surrogates):
            own = s.model.posterior(x).distribution.covariance_matrix
            rows = slice(k * block, (k + 1) * block)
            torch.testing.assert_close(joint[..., rows, rows], own, rtol=1e-8, atol=1e-12)
            rest = torch.ones(joint.shape[-1], dtype=torch.bool)
            rest[rows] = False
            assert joint[..., rows, rest].abs().max() == 0  # domains independent a posteriori
        samples = ours.rsample(torch.Size([2]))
    assert samples.shape == (2, 3, 4, 2 * len(surrogates))


def test_the_batch_takes_gradients_through_the_inputs(fitted: tuple) -> None:
    _, space, surrogates = fitted
    x = torch.full((1, 2, space.dim), 0.4, dtype=torch.float64, requires_grad=True)
    batched_model(surrogates).posterior(x).mean.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_domains_that_cannot_share_a_batch_keep_the_model_list(fitted: tuple) -> None:
    h, space, surrogates = fitted
    x, rows = h["x"], h["ext_rows"]
    dev = h["dev"]["cipher"]

    def fitted_one(x_ext: np.ndarray, y_ext: np.ndarray, **kw: object) -> DomainSurrogate:
        s = DomainSurrogate(dim=space.dim, simplex_groups=space.simplex_groups(), **kw)
        s.fit(x, dev, x_ext, y_ext)
        return s

    single = fitted_one(x[rows][:1], h["ext"]["cipher"][:1])  # one external score: single-task
    other_rows = fitted_one(x[rows][1:], h["ext"]["cipher"][1:])  # other training inputs
    autoregressive = fitted_one(x[rows], h["ext"]["cipher"], form=SurrogateForm.AUTOREGRESSIVE)
    for odd in (single, other_rows, autoregressive):
        assert batched_model([*surrogates[:-1], odd]) is None
    assert batched_model(surrogates[:1]) is None


def _fresh(space, seed: int) -> DomainSurrogate:
    return DomainSurrogate(
        dim=space.dim, simplex_groups=space.simplex_groups(), resolution=0.01, seed=seed
    )


def test_each_domains_batched_objective_is_its_own(fitted: tuple) -> None:
    from botorch.optim.closures import get_loss_closure
    from gpytorch.mlls import ExactMarginalLogLikelihood

    from searchlab.batched import _stack

    h, space, surrogates = fitted
    x, rows = h["x"], h["ext_rows"]
    models = []
    for i, (d, s) in enumerate(zip(h["dev"], surrogates, strict=True)):
        fresh = _fresh(space, i)
        model, _ = fresh.build(x, h["dev"][d], x[rows], h["ext"][d])
        model.load_state_dict(s.model.state_dict())  # the fitted point, not the start
        models.append(model.train())
    gp = _stack(models, space.dim)
    together = ExactMarginalLogLikelihood(gp.likelihood, gp).train()
    with torch.no_grad():
        joint = get_loss_closure(together)()  # K negative log marginal likelihoods (+ priors)
        assert joint.shape == (len(models),)
        for k, model in enumerate(models):
            own = ExactMarginalLogLikelihood(model.likelihood, model)
            assert joint[k].item() == pytest.approx(get_loss_closure(own)().item(), rel=1e-9)


def test_fitting_the_domains_together_finds_each_ones_own_fit(fitted: tuple) -> None:
    from searchlab.batched import fit_domains

    h, space, surrogates = fitted
    x, rows = h["x"], h["ext_rows"]
    together = [_fresh(space, i) for i in range(len(surrogates))]
    fit_domains(together, x, list(h["dev"].values()), x[rows], list(h["ext"].values()))
    assert [s.fit_status for s in together] == ["converged"] * len(together)
    probe = np.random.default_rng(3).random((50, space.dim))
    for alone, batched in zip(surrogates, together, strict=True):
        a, b = alone.predict(probe), batched.predict(probe)
        # Each domain runs its own L-BFGS-B; only rounding differs (measured: < 0.01 sd).
        assert np.abs(a["ext_mean"] - b["ext_mean"]).max() < 0.05 * a["ext_sd"].mean()
        assert np.abs(a["dev_mean"] - b["dev_mean"]).max() < 0.05 * a["dev_sd"].mean()
