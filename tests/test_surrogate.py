"""The per-domain two-task GP: a flipped proxy (negative task correlation) is representable."""

from __future__ import annotations

import numpy as np

from searchlab.surrogate import DomainSurrogate


def _data(rho_sign: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((40, 3))
    f = np.sin(4 * x[:, 0]) + x[:, 1]
    dev = 0.5 + 0.1 * f + 0.005 * rng.standard_normal(40)
    idx = rng.choice(40, 12, replace=False)
    ext = 0.5 + rho_sign * 0.1 * f[idx] + 0.005 * rng.standard_normal(12)
    return x, dev, x[idx], np.floor(ext * 100) / 100


def test_negative_task_correlation_is_fitted_negative() -> None:
    s = DomainSurrogate(dim=3, resolution=0.01)
    s.fit(*_data(-1.0))
    assert s.two_task
    assert s.task_correlation() < -0.5
    # External is then predicted to fall where dev rises.
    x = np.linspace(0, 1, 20)[:, None] * np.array([[1.0, 0.0, 0.0]])
    p = s.predict(x)
    assert np.corrcoef(p["dev_mean"], p["ext_mean"])[0, 1] < -0.5


def test_positive_task_correlation_and_warm_refit() -> None:
    s = DomainSurrogate(dim=3, resolution=0.01)
    x, dev, xe, ext = _data(+1.0)
    s.fit(x, dev, xe, ext)
    assert s.task_correlation() > 0.5
    s.fit(x, dev, xe, ext)  # warm-started from the first fit
    assert s.task_correlation() > 0.5


def test_single_task_until_two_external_scores() -> None:
    s = DomainSurrogate(dim=3)
    x, dev, xe, ext = _data(+1.0)
    s.fit(x, dev, xe[:1], ext[:1])
    assert not s.two_task and np.isnan(s.predict(x[:2])["ext_mean"]).all()
    assert np.isnan(s.task_correlation())
