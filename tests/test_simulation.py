"""Tests of the simulated post-training response surface (searchlab.simulation)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from searchlab.simulation import (
    DOMAINS,
    ResponseSurface,
    SurfaceConfig,
    canonical_space,
    random_recipe,
)

HEALTHY = [d for d in DOMAINS if d != "equations"]


def intensity(recipe: dict) -> float:
    """Training intensity I as the module docstring defines it."""
    u = math.exp(-0.5 * ((math.log10(recipe["learning_rate"]) + 4.3) / 0.5) ** 2)
    return recipe["epochs"] * u * (1.0 - math.exp(-recipe["lora_rank"] / 24.0))


def hack_distance(recipe: dict, domain: str = "equations") -> float:
    return math.sqrt(recipe["template_share"] * recipe[f"mixture.{domain}"] * intensity(recipe))


def with_(recipe: dict, **changes: float) -> dict:
    out = dict(recipe)
    out.update(changes)
    return out


@pytest.fixture(scope="module")
def surface() -> ResponseSurface:
    return ResponseSurface(instance_seed=0)


@pytest.fixture(scope="module")
def opt(surface: ResponseSurface) -> tuple[float, dict]:
    return surface.optimum()


# -- space and configuration ---------------------------------------------------------------------


def test_canonical_space_matches_study_schema() -> None:
    assert canonical_space(DOMAINS) == {
        "mixture": {"type": "mixture", "domains": list(DOMAINS)},
        "learning_rate": {
            "type": "float",
            "low": 3.1622776601683794e-06,
            "high": 3.1622776601683794e-04,
            "log": True,
        },
        "epochs": {"type": "int", "low": 1, "high": 10},
        "lora_rank": {"type": "categorical", "choices": [8, 16, 32, 64, 128]},
        "template_share": {"type": "float", "low": 0.0, "high": 1.0},
        "lora_dropout": {"type": "float", "low": 0.0, "high": 0.3},
    }
    assert canonical_space(["cipher", "gravity"])["mixture"]["domains"] == ["cipher", "gravity"]


def test_from_options_builds_and_rejects_unknown_keys() -> None:
    cfg = SurfaceConfig.from_options(
        {"domains": ["cipher", "equations"], "weak_domains": ["equations"], "variant": "rl"}
    )
    assert cfg.domains == ("cipher", "equations")
    assert cfg.weak_domains == ("equations",)
    assert cfg.variant == "rl"
    assert SurfaceConfig.from_options({}) == SurfaceConfig()
    with pytest.raises(ValueError, match="bogus_knob"):
        SurfaceConfig.from_options({"bogus_knob": 1})
    with pytest.raises(ValueError, match="variant"):
        SurfaceConfig.from_options({"variant": "nonsense"})
    with pytest.raises(ValueError, match="weak_domains"):
        SurfaceConfig.from_options({"domains": ["cipher", "gravity"]})  # equations not a domain
    with pytest.raises(ValueError, match="dev_items"):
        SurfaceConfig.from_options({"dev_items": "many"})


@pytest.mark.parametrize(
    "key",
    [
        "mixture.equations",
        "mixture.cipher",
        "learning_rate",
        "epochs",
        "lora_rank",
        "template_share",
        "lora_dropout",
    ],
)
def test_missing_recipe_key_raises_key_error_naming_it(
    surface: ResponseSurface, opt: tuple[float, dict], key: str
) -> None:
    recipe = dict(opt[1])
    del recipe[key]
    for call in (surface.true_dev, surface.true_external, surface.objective):
        with pytest.raises(KeyError, match=key):
            call(recipe)
    with pytest.raises(KeyError, match=key):
        surface.observe_dev(recipe, run_seed=0)


def test_mixture_is_normalised_and_all_zero_is_uniform(
    surface: ResponseSurface, opt: tuple[float, dict]
) -> None:
    recipe = opt[1]
    scaled = with_(recipe, **{f"mixture.{d}": 7.0 * recipe[f"mixture.{d}"] for d in DOMAINS})
    assert surface.objective(scaled) == pytest.approx(surface.objective(recipe), abs=1e-12)
    zeros = with_(recipe, **{f"mixture.{d}": 0.0 for d in DOMAINS})
    ones = with_(recipe, **{f"mixture.{d}": 1.0 for d in DOMAINS})
    assert surface.true_external(zeros) == pytest.approx(surface.true_external(ones), abs=1e-12)
    with pytest.raises(ValueError, match="mixture"):
        surface.objective(with_(recipe, **{"mixture.cipher": -0.1}))


def test_objective_is_weighted_mean_of_true_external(opt: tuple[float, dict]) -> None:
    weights = {"equations": 3.0, "cipher": 1.0}
    s = ResponseSurface(instance_seed=0, weights=weights)
    ext = s.true_external(opt[1])
    assert s.objective(opt[1]) == pytest.approx(0.75 * ext["equations"] + 0.25 * ext["cipher"])
    with pytest.raises(ValueError, match="nope"):
        ResponseSurface(weights={"nope": 1.0})


# -- optimum and regret --------------------------------------------------------------------------


def test_goodhart_optimum_is_interior_and_at_the_hack_peak(
    surface: ResponseSurface, opt: tuple[float, dict]
) -> None:
    value, recipe = opt
    assert 0.02 < recipe["template_share"] < 0.98
    assert 1 < recipe["epochs"] < 10
    assert math.log10(3.2e-6) < math.log10(recipe["learning_rate"]) < math.log10(3.1e-4)
    assert hack_distance(recipe) == pytest.approx(surface.hack_peak(), abs=0.01)
    assert surface.hack_peak() == pytest.approx(0.6)
    assert surface.regret(recipe) == pytest.approx(0.0, abs=1e-9)
    assert value == pytest.approx(surface.objective(recipe), abs=1e-9)
    assert sum(recipe[f"mixture.{d}"] for d in DOMAINS) == pytest.approx(1.0)
    # Cached: the same answer again, and a copy that callers may mutate.
    again = surface.optimum()
    assert again[0] == value and again[1] == recipe
    again[1]["epochs"] = 99
    assert surface.optimum()[1]["epochs"] == recipe["epochs"]


def test_optimum_is_a_local_maximum_under_perturbation(
    surface: ResponseSurface, opt: tuple[float, dict]
) -> None:
    value, recipe = opt
    rng = np.random.default_rng(0)
    for _ in range(100):
        r = dict(recipe)
        for d in DOMAINS:
            r[f"mixture.{d}"] = max(0.0, r[f"mixture.{d}"] + rng.normal(0.0, 0.01))
        r["learning_rate"] *= math.exp(rng.normal(0.0, 0.05))
        r["template_share"] = min(1.0, max(0.0, r["template_share"] + rng.normal(0.0, 0.01)))
        r["lora_dropout"] = min(0.3, max(0.0, r["lora_dropout"] + rng.normal(0.0, 0.01)))
        r["epochs"] = int(
            rng.choice([recipe["epochs"] - 1, recipe["epochs"], recipe["epochs"] + 1])
        )
        r["lora_rank"] = int(rng.choice([32, 64, 128]))
        assert surface.objective(r) <= value + 1e-9


def test_random_recipes_have_nonnegative_regret(surface: ResponseSurface) -> None:
    rng = np.random.default_rng(1)
    regrets = [surface.regret(random_recipe(rng)) for _ in range(200)]
    assert min(regrets) >= -1e-6
    assert np.median(regrets) > 0.05  # random recipes are far from the optimum


def test_dev_optimum_costs_external(surface: ResponseSurface) -> None:
    dev_value, dev_recipe = surface.dev_optimum()
    assert dev_recipe["template_share"] > 0.95
    assert surface.regret(dev_recipe) > 0.03
    assert dev_value == pytest.approx(
        float(np.mean(list(surface.true_dev(dev_recipe).values()))), abs=1e-9
    )
    # The dev optimum is what maximises dev: the external optimum has lower mean dev.
    assert np.mean(list(surface.true_dev(surface.optimum()[1]).values())) < dev_value


@pytest.mark.parametrize("seed", [1, 2])
def test_goodhart_holds_for_other_instances(seed: int) -> None:
    s = ResponseSurface(instance_seed=seed)
    _, recipe = s.optimum()
    assert 0.02 < recipe["template_share"] < 0.98
    assert s.regret(s.dev_optimum()[1]) > 0.03


def test_null_variant_dev_optimum_is_near_external_optimum() -> None:
    s = ResponseSurface(config=SurfaceConfig(variant="null"), instance_seed=0)
    assert s.hack_peak() == math.inf
    _, dev_recipe = s.dev_optimum()
    assert 0.0 <= s.regret(dev_recipe) < 0.01


def test_rl_variant_peaks_at_its_own_distance() -> None:
    s = ResponseSurface(config=SurfaceConfig(variant="rl"), instance_seed=0)
    _, recipe = s.optimum()
    assert s.hack_peak() == pytest.approx(math.exp(0.6 / 0.5 - 1.0))
    assert 0.02 < recipe["template_share"] < 0.98
    assert hack_distance(recipe) == pytest.approx(s.hack_peak(), abs=0.02)


def test_optimum_is_fast_and_reproducible() -> None:
    start = time.perf_counter()
    value, recipe = ResponseSurface(instance_seed=5).optimum()
    assert time.perf_counter() - start < 3.0
    assert ResponseSurface(instance_seed=5).optimum() == (value, recipe)
    assert ResponseSurface(instance_seed=6).optimum()[0] != value


# -- shape of the surface ------------------------------------------------------------------------


def test_weak_dev_rises_while_external_peaks_then_falls(
    surface: ResponseSurface, opt: tuple[float, dict]
) -> None:
    shares = np.linspace(0.0, 1.0, 41)
    dev = np.array([surface.true_dev(with_(opt[1], template_share=h))["equations"] for h in shares])
    ext = np.array(
        [surface.true_external(with_(opt[1], template_share=h))["equations"] for h in shares]
    )
    assert np.all(np.diff(dev) > 0)
    peak = int(np.argmax(ext))
    assert 0 < peak < len(shares) - 1
    assert np.all(np.diff(ext[: peak + 1]) > 0)
    assert np.all(np.diff(ext[peak:]) < 0)
    assert ext[0] - ext[-1] > 0.1  # full hacking costs a lot on the weak domain
    # The hack knob leaves healthy domains alone.
    for d in HEALTHY:
        assert surface.true_external(with_(opt[1], template_share=1.0))[d] == pytest.approx(
            surface.true_external(with_(opt[1], template_share=0.0))[d], abs=1e-12
        )


@pytest.mark.parametrize("domain", HEALTHY)
def test_healthy_dev_and_external_rise_with_their_weight(
    surface: ResponseSurface, opt: tuple[float, dict], domain: str
) -> None:
    grid = [0.0, 0.005, 0.01, 0.02, 0.04]
    dev = [surface.true_dev(with_(opt[1], **{f"mixture.{domain}": w}))[domain] for w in grid]
    ext = [surface.true_external(with_(opt[1], **{f"mixture.{domain}": w}))[domain] for w in grid]
    assert np.all(np.diff(dev) > 0)
    assert np.all(np.diff(ext) > 0)


def test_healthy_external_tracks_dev_across_recipes(surface: ResponseSurface) -> None:
    rng = np.random.default_rng(2)
    recipes = [random_recipe(rng) for _ in range(200)]
    for d in HEALTHY:
        dev = [surface.true_dev(r)[d] for r in recipes]
        ext = [surface.true_external(r)[d] for r in recipes]
        assert np.corrcoef(dev, ext)[0, 1] > 0.95


def test_dropout_moves_external_but_not_dev(
    surface: ResponseSurface, opt: tuple[float, dict]
) -> None:
    grid = np.linspace(0.0, 0.3, 31)
    dev = [surface.true_dev(with_(opt[1], lora_dropout=p)) for p in grid]
    obj = [surface.objective(with_(opt[1], lora_dropout=p)) for p in grid]
    assert all(x == dev[0] for x in dev)
    peak = int(np.argmax(obj))
    assert 0 < peak < len(grid) - 1  # a bump inside the range
    assert 0.005 < max(obj) - min(obj) < 0.05  # mild


def test_several_weak_domains() -> None:
    cfg = SurfaceConfig(weak_domains=("equations", "gravity"))
    s = ResponseSurface(config=cfg, instance_seed=0)
    _, recipe = s.optimum()
    assert 0.02 < recipe["template_share"] < 0.98
    shares = np.linspace(0.0, 1.0, 21)
    for d in ("equations", "gravity"):
        dev = [s.true_dev(with_(recipe, template_share=h))[d] for h in shares]
        ext = [s.true_external(with_(recipe, template_share=h))[d] for h in shares]
        assert np.all(np.diff(dev) > 0)
        assert 0 < int(np.argmax(ext)) < len(shares) - 1  # peaks, then falls
    # The hack distance grows with the domain's data share: a domain that needs little data
    # (gravity) is over-optimised far less than equations at the dev optimum.
    dev_recipe = s.dev_optimum()[1]
    loss = {
        d: s.true_external(recipe)[d] - s.true_external(dev_recipe)[d]
        for d in ("equations", "gravity")
    }
    assert loss["equations"] > 0.2 and loss["gravity"] > 0.0
    untouched = s.true_dev(with_(recipe, template_share=1.0))["cipher"]
    assert untouched == pytest.approx(s.true_dev(with_(recipe, template_share=0.0))["cipher"])
    assert s.regret(s.dev_optimum()[1]) > 0.03


def test_subset_and_unknown_domains() -> None:
    cfg = SurfaceConfig(domains=("cipher", "my_domain", "equations"))
    s = ResponseSurface(config=cfg, instance_seed=3)
    value, recipe = s.optimum()
    assert set(s.true_external(recipe)) == {"cipher", "my_domain", "equations"}
    assert 0.0 < value < 1.0
    assert s.regret(recipe) == pytest.approx(0.0, abs=1e-9)


def test_hack_unlock_at(opt: tuple[float, dict]) -> None:
    s = ResponseSurface(config=SurfaceConfig(hack_unlock_at=10), instance_seed=0)
    hacked, clean = with_(opt[1], template_share=0.9), with_(opt[1], template_share=0.0)
    for candidate in (0, 5, 9):
        assert s.true_dev(hacked, candidate=candidate) == s.true_dev(clean, candidate=candidate)
        assert s.true_external(hacked, candidate=candidate) == s.true_external(clean)
    for candidate in (10, 11, None):
        assert (
            s.true_dev(hacked, candidate=candidate)["equations"]
            > s.true_dev(clean, candidate=candidate)["equations"] + 0.05
        )
    # A locked hack only costs the recipe its hack gain: regret before >= regret after.
    assert s.regret(opt[1], candidate=0) > s.regret(opt[1], candidate=10) - 1e-12


# -- observations --------------------------------------------------------------------------------


def test_observations_are_deterministic(surface: ResponseSurface, opt: tuple[float, dict]) -> None:
    recipe = opt[1]
    dev = surface.observe_dev(recipe, run_seed=3)
    assert dev == surface.observe_dev(dict(recipe), run_seed=3)
    assert dev == ResponseSurface(instance_seed=0).observe_dev(recipe, run_seed=3)
    assert dev != surface.observe_dev(recipe, run_seed=4)
    assert all(n == 300 for _, n in dev.values())
    assert all(abs(a * 300 - round(a * 300)) < 1e-9 for a, _ in dev.values())
    ext = surface.observe_external(recipe, run_seed=3, submission=0)
    assert ext == surface.observe_external(dict(recipe), run_seed=3, submission=0)
    assert ext != surface.observe_external(recipe, run_seed=4, submission=0)
    assert set(ext) == {"public", "private"}
    assert set(ext["public"]) == set(DOMAINS) == set(ext["private"])
    # Another instance gives other numbers.
    assert ResponseSurface(instance_seed=1).observe_dev(recipe, run_seed=3) != dev


def test_public_is_floored_and_private_differs(
    surface: ResponseSurface, opt: tuple[float, dict]
) -> None:
    differs = 0
    for run_seed in range(20):
        ext = surface.observe_external(opt[1], run_seed=run_seed, submission=run_seed)
        for d in DOMAINS:
            pub, priv = ext["public"][d], ext["private"][d]
            assert abs(pub / 0.01 - round(pub / 0.01)) < 1e-9
            assert 0.0 <= pub <= 1.0
            assert abs(priv * 500 - round(priv * 500)) < 1e-9
            differs += pub != priv
    assert differs > 100
    # Resubmitting the same artefact: same private half, leaderboard noise on the public half.
    subs = [surface.observe_external(opt[1], run_seed=0, submission=k) for k in range(10)]
    assert all(s["private"] == subs[0]["private"] for s in subs)
    assert len({tuple(s["public"].values()) for s in subs}) > 1


def test_public_flooring_is_downward() -> None:
    cfg = SurfaceConfig(leaderboard_noise=0.0, resolution=0.05, external_items=2000)
    s = ResponseSurface(config=cfg, instance_seed=0)
    recipe = s.optimum()[1]
    floored = s.observe_external(recipe, run_seed=1, submission=0)["public"]
    exact = ResponseSurface(
        config=SurfaceConfig(leaderboard_noise=0.0, resolution=0.0, external_items=2000),
        instance_seed=0,
    ).observe_external(recipe, run_seed=1, submission=0)["public"]
    for d in DOMAINS:
        assert floored[d] <= exact[d] + 1e-12 < floored[d] + 0.05


def test_observations_average_to_the_truth(
    surface: ResponseSurface, opt: tuple[float, dict]
) -> None:
    recipe = opt[1]
    runs = 300
    dev = np.mean(
        [[a for a, _ in surface.observe_dev(recipe, run_seed=i).values()] for i in range(runs)], 0
    )
    priv = np.mean(
        [
            list(surface.observe_external(recipe, run_seed=i, submission=0)["private"].values())
            for i in range(runs)
        ],
        0,
    )
    assert dev == pytest.approx(list(surface.true_dev(recipe).values()), abs=0.01)
    assert priv == pytest.approx(list(surface.true_external(recipe).values()), abs=0.01)


@pytest.mark.parametrize(("sd", "shared"), [(0.08, True), (0.0, False)])
def test_seed_effect_is_shared_by_dev_and_external(
    opt: tuple[float, dict], sd: float, shared: bool
) -> None:
    s = ResponseSurface(config=SurfaceConfig(seed_effect_sd=sd), instance_seed=0)
    recipe = opt[1]
    dev, ext = [], []
    for i in range(400):
        dev.append([a for a, _ in s.observe_dev(recipe, run_seed=i).values()])
        ext.append(list(s.observe_external(recipe, run_seed=i, submission=0)["private"].values()))
    dev_c = np.asarray(dev) - np.mean(dev, 0)
    ext_c = np.asarray(ext) - np.mean(ext, 0)
    r = np.corrcoef(dev_c.ravel(), ext_c.ravel())[0, 1]
    if shared:
        assert r > 0.2
    else:
        assert abs(r) < 0.1


def test_plateau_variant_rises_to_the_goodhart_peak_then_stays_flat(
    opt: tuple[float, dict],
) -> None:
    cfg = {"b_g": 1.5}
    flat = ResponseSurface(config=SurfaceConfig(variant="plateau", **cfg), instance_seed=0)
    fall = ResponseSurface(config=SurfaceConfig(variant="goodhart", **cfg), instance_seed=0)
    shares = np.linspace(0.0, 1.0, 41)
    dev = np.array([flat.true_dev(with_(opt[1], template_share=h))["equations"] for h in shares])
    ext = np.array(
        [flat.true_external(with_(opt[1], template_share=h))["equations"] for h in shares]
    )
    ext_fall = np.array(
        [fall.true_external(with_(opt[1], template_share=h))["equations"] for h in shares]
    )
    assert np.all(np.diff(dev) > 0)  # dev keeps making records
    dist = np.array([hack_distance(with_(opt[1], template_share=h)) for h in shares])
    before, after = dist <= flat.hack_peak(), dist > flat.hack_peak()
    assert before.sum() >= 1 and after.sum() >= 10
    # Up to the peak the two variants agree; beyond it the plateau is flat at the peak value.
    assert np.allclose(ext[before], ext_fall[before], atol=1e-12)
    assert np.ptp(ext[after]) == pytest.approx(0.0, abs=1e-12)
    assert np.all(ext[after] > ext_fall[after])
    assert flat.hack_peak() == pytest.approx(fall.hack_peak())


def test_concave_variant_keeps_rising_with_diminishing_returns(opt: tuple[float, dict]) -> None:
    s = ResponseSurface(config=SurfaceConfig(variant="concave", b_g=0.5), instance_seed=0)
    shares = np.linspace(0.0, 1.0, 41)
    ext = np.array([s.true_external(with_(opt[1], template_share=h))["equations"] for h in shares])
    assert np.all(np.diff(ext) > 0)
    assert s.hack_peak() == math.inf
    with pytest.raises(ValueError, match="b_g"):
        SurfaceConfig(variant="plateau", b_g=0.0)
