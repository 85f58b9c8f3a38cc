"""The acquisition objective's coefficients over the stacked per-domain outputs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from searchlab.acquisition import objective_coefficients
from searchlab.store import Mode


def _surrogate(two_task: bool) -> SimpleNamespace:
    return SimpleNamespace(two_task=two_task, num_outputs=2 if two_task else 1)


def test_proxy_domains_climb_dev_and_decoupled_ones_penalise_the_proxy_gap() -> None:
    coef = objective_coefficients(
        [_surrogate(True), _surrogate(True), _surrogate(False)],
        [0.5, 0.3, 0.2],
        [Mode.PROXY, Mode.DECOUPLED, Mode.DECOUPLED],
        dev_penalty=0.5,
    )
    # [dev, ext] of a proxy domain; [dev, ext] of a decoupled one: ext - 0.5 (dev - ext);
    # a decoupled domain with no external model yet falls back to its dev.
    assert coef == pytest.approx([0.5, 0.0, -0.15, 0.45, 0.2])
    # Genuine progress (dev and ext up by 1 and s = 0.85) keeps most of its value; a hack that
    # raises dev alone by 1 is penalised.
    dev, ext = coef[2], coef[3]
    assert dev * 1.0 + ext * 0.85 == pytest.approx(0.3 * (1.5 * 0.85 - 0.5))
    assert dev * 1.0 + ext * 0.0 < 0
    assert np.all(np.isfinite(coef))
