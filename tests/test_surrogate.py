"""The per-domain two-task GP, in both forms: a flipped proxy (negative task correlation) is
representable, and the autoregressive kernel is the covariance its docstring writes."""

from __future__ import annotations

import numpy as np
import pytest

from searchlab.surrogate import DomainSurrogate, SurrogateForm, _autoregressive_kernel

FORMS = pytest.mark.parametrize("form", list(SurrogateForm))


def _data(rho_sign: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((40, 3))
    f = np.sin(4 * x[:, 0]) + x[:, 1]
    dev = 0.5 + 0.1 * f + 0.005 * rng.standard_normal(40)
    idx = rng.choice(40, 12, replace=False)
    ext = 0.5 + rho_sign * 0.1 * f[idx] + 0.005 * rng.standard_normal(12)
    return x, dev, x[idx], np.floor(ext * 100) / 100


@FORMS
def test_negative_task_correlation_is_fitted_negative(form: SurrogateForm) -> None:
    s = DomainSurrogate(dim=3, resolution=0.01, form=form)
    s.fit(*_data(-1.0))
    assert s.two_task
    assert s.task_correlation() < -0.5
    # External is then predicted to fall where dev rises.
    x = np.linspace(0, 1, 20)[:, None] * np.array([[1.0, 0.0, 0.0]])
    p = s.predict(x)
    assert np.corrcoef(p["dev_mean"], p["ext_mean"])[0, 1] < -0.5


@FORMS
def test_positive_task_correlation_and_warm_refit(form: SurrogateForm) -> None:
    s = DomainSurrogate(dim=3, resolution=0.01, form=form)
    x, dev, xe, ext = _data(+1.0)
    s.fit(x, dev, xe, ext)
    assert s.task_correlation() > 0.5
    s.fit(x, dev, xe, ext)  # warm-started from the first fit
    assert s.task_correlation() > 0.5
    assert s.fit_status in ("converged", "stopped"), s.fit_status


@pytest.mark.parametrize("n_ext, sign", [(2, 1.0), (3, -1.0), (12, 1.0), (12, -1.0)])
def test_icm_task_correlation_has_a_prior_and_does_not_saturate(n_ext: int, sign: float) -> None:
    # Without the LKJ prior every one of these fits gave |r| = 1.00000 to five decimals.
    for seed in range(3):
        x, dev, xe, ext = _data(sign, seed)
        s = DomainSurrogate(dim=3, resolution=0.01, seed=seed)
        s.fit(x, dev, xe[:n_ext], ext[:n_ext])
        r = s.task_correlation()
        assert abs(r) < 0.999, (seed, r)
        if n_ext >= 3:  # two points barely inform the sign; three flipped ones do
            assert sign * r > 0.5, (seed, r)
        priors = {name for name, *_ in s.model.named_priors()}
        assert {"covar_module.kernels.1.task_correlation_prior"} <= priors, priors
        # External keeps variance of its own where it was not shown.
        p = s.predict(x)
        assert (p["ext_sd"] > 0.2 * p["dev_sd"]).all()


def test_icm_task_prior_can_be_sampled_as_botorch_retries_do() -> None:
    import torch
    from botorch.optim.utils.model_utils import sample_all_priors

    from searchlab.surrogate import _correlation_matrix, icm_task_kernel

    torch.manual_seed(0)
    kernel = icm_task_kernel(3, torch.Size([5])).double()
    for _ in range(4):
        sample_all_priors(kernel)
        b = kernel._eval_covar_matrix().detach()
        assert torch.linalg.eigvalsh(b).min() > 0
        r = _correlation_matrix(kernel).detach()[..., 0, 1]
        assert (r.abs() <= 0.98 + 1e-9).all() and r.std() > 0


def test_single_task_until_two_external_scores() -> None:
    s = DomainSurrogate(dim=3)
    x, dev, xe, ext = _data(+1.0)
    s.fit(x, dev, xe[:1], ext[:1])
    assert not s.two_task and np.isnan(s.predict(x[:2])["ext_mean"]).all()
    assert np.isnan(s.task_correlation())


def test_autoregressive_kernel_is_the_documented_covariance() -> None:
    """c_i c_j k_f + [i = j = 1] k_delta, c = (1, rho), for a rho of either sign."""
    import torch

    torch.manual_seed(0)
    kernel = _autoregressive_kernel(2).to(torch.float64)
    kernel.rho.data.fill_(-0.7)
    z = torch.rand(5, 2, dtype=torch.float64)
    task = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    x = torch.cat([z, task[:, None]], -1)
    with torch.no_grad():
        got = kernel(x, x).to_dense()
        kf = kernel.dev_kernel(z, z).to_dense()
        kd = kernel.gap_kernel(z, z).to_dense()
        diag = kernel(x, x, diag=True)
    c = torch.where(task == 1, torch.tensor(-0.7, dtype=torch.float64), 1.0)
    ext = (task == 1).to(torch.float64)
    want = c[:, None] * c[None, :] * kf + ext[:, None] * ext[None, :] * kd
    assert torch.allclose(got, want)
    assert torch.allclose(diag, torch.diagonal(want))
    assert torch.linalg.eigvalsh(got).min() > -1e-10  # positive semi-definite


def test_accuracy_replay_scores_both_forms_before_and_after_the_alarm(tmp_path) -> None:
    """`bench surrogate` on a stored study: every form scored on the same held-out points."""
    from conftest import run_cli
    from studybuild import build_study

    from searchlab.model_accuracy import surrogate_accuracy

    url = f"sqlite:///{tmp_path / 's.db'}"
    record = build_study(url, rounds=6, candidates=4)
    result = surrogate_accuracy(url, forms=list(SurrogateForm))
    rows = {(r["form"], r["phase"]): r for r in result["table"]}
    # Held out after round r: the candidates so far that were not submitted by then, from the
    # first round with two external scores (the built study submits 3 a round).
    externals = record.submissions()
    first_alarm = next(e for e in record.audit_log() if e["kind"] == "mode_switch")["round"]
    held = {
        r: 4 * (r + 1) - sum(1 for e in externals.values() if e["round"] <= r) for r in range(6)
    }
    after = sum(n for r, n in held.items() if r >= first_alarm)
    for form in SurrogateForm:
        every = rows[(str(form), "all")]
        assert every["points"] == sum(held.values())
        assert rows[(str(form), "after")]["points"] == after > 0
        assert np.isfinite(every["rmse"]) and 0.0 <= every["coverage90"] <= 1.0
    shown = run_cli("bench", "surrogate", "--storage", url)
    assert shown.returncode == 0, shown.stderr
    assert "autoregressive" in shown.stdout and "coverage" in shown.stdout
    one = run_cli("bench", "surrogate", "--storage", url, "--form", "icm")
    assert one.returncode == 0, one.stderr
    assert "icm" in one.stdout and "autoregressive" not in one.stdout
    missing = run_cli("bench", "surrogate", "--storage", url, "--study", "nope")
    assert missing.returncode == 2 and "nope" in missing.stderr
