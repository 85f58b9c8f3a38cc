"""The search space: encoding round trips, the simplex, discrete values, Optuna distributions."""

from __future__ import annotations

import numpy as np
import pytest

from searchlab.config import validate_study
from searchlab.simulation import canonical_space
from searchlab.space import SearchSpace


@pytest.fixture
def space() -> SearchSpace:
    data = {
        "name": "s",
        "domains": [{"name": d} for d in ("cipher", "gravity", "equations")],
        "space": canonical_space(("cipher", "gravity", "equations")),
        "backend": {"name": "simulated"},
        "rounds": {"candidates": 2, "count": 2},
        "external": {"per_round": 1, "total": 2},
        "policy": {"switch": False},  # too few submissions for the test
    }
    return SearchSpace(validate_study(data, source="test").space)


def test_keys_and_dimension(space: SearchSpace) -> None:
    assert space.keys[:3] == ["mixture.cipher", "mixture.gravity", "mixture.equations"]
    assert space.dim == 3 + 5
    assert space.simplex_groups() == [[0, 1, 2]]


def test_decode_lands_on_the_simplex_and_in_bounds(space: SearchSpace) -> None:
    rng = np.random.default_rng(0)
    for x in rng.random((200, space.dim)):
        r = space.decode(x)
        total = r["mixture.cipher"] + r["mixture.gravity"] + r["mixture.equations"]
        assert total == pytest.approx(1.0)
        assert 3.16e-6 <= r["learning_rate"] <= 3.17e-4
        assert isinstance(r["epochs"], int) and 1 <= r["epochs"] <= 10
        assert r["lora_rank"] in (8, 16, 32, 64, 128)
        # What is stored is what the GP sees: decoding the encoding gives the same recipe.
        assert space.canonical(r) == pytest.approx(r)


def test_all_zero_mixture_is_uniform(space: SearchSpace) -> None:
    r = space.decode(np.zeros(space.dim))
    assert r["mixture.cipher"] == pytest.approx(1 / 3)


def test_discrete_dims_span_the_unit_interval(space: SearchSpace) -> None:
    dims = space.discrete_dims()
    epochs = space.keys.index("epochs")
    rank = space.keys.index("lora_rank")
    assert set(dims) == {epochs, rank}
    assert dims[rank] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert dims[epochs][0] == 0 and dims[epochs][-1] == 1 and len(dims[epochs]) == 10


def test_distributions_accept_decoded_recipes(space: SearchSpace) -> None:
    dists = space.distributions()
    for recipe in space.quasi_random(16, seed=1):
        for key, value in recipe.items():
            assert dists[key]._contains(dists[key].to_internal_repr(value))


def test_quasi_random_is_seeded_and_spread(space: SearchSpace) -> None:
    a = space.quasi_random(32, seed=5)
    assert a == space.quasi_random(32, seed=5)
    assert a != space.quasi_random(32, seed=6)
    shares = np.array([r["template_share"] for r in a])
    assert shares.min() < 0.1 and shares.max() > 0.9
