"""The acquisition objective's coefficients over the stacked per-domain outputs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import six_domain_surrogates

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


@pytest.mark.parametrize("objective", ["weighted", "pareto"])
def test_a_share_floor_keeps_the_domains_data_share(objective: str) -> None:
    from searchlab.acquisition import ShareFloor, propose_batch
    from searchlab.objective import ObjectiveType
    from searchlab.simulation import DOMAINS as SIX

    # Dev only: what is tested is the constraint, and single-task fits are quick.
    h, space, surrogates = six_domain_surrogates(16, external=False)
    where = space.share_coordinates("equations")
    assert where is not None and space.keys[where[0]].endswith(".equations")
    assert space.share_coordinates("not-a-domain") is None
    for min_share in (0.5, 0.9):
        batch = propose_batch(
            surrogates=surrogates,
            weights=[1 / 6] * 6,
            modes=[Mode.PROXY] * 6,
            dev_penalty=0.5,
            x_baseline=h["x"],
            x_pending=None,
            q=1,
            discrete_dims=space.discrete_dims(),
            seed=3,
            objective=ObjectiveType(objective),
            domains=SIX,
            share_floor=ShareFloor(where[0], tuple(where[1]), min_share),
        )
        recipe = space.decode(batch.x[0])
        assert recipe["mixture.equations"] >= min_share - 1e-6
