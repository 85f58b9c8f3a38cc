"""A simulated post-training response surface with a known optimum.

The surface maps a post-training *recipe* to per-domain accuracies on a cheap **dev** proxy and
on a scarce **external** target (a leaderboard with a public and a private half). In the *weak*
domains a "hack knob" (``template_share``: the share of the domain's training data that imitates
the dev templates) buys dev score that external only follows up to a point: Goodhart. Everything
is deterministic given the instance seed, the recipe and the run seed, so tests, demos and
benchmarks can measure regret against the exactly known optimum.

Recipe (the *canonical space*, :func:`canonical_space`): mixture weights ``mixture.<domain>``
(normalised to the simplex ``w``; all zero means uniform), ``learning_rate`` (log scale in
[10^-5.5, 10^-3.5]), ``epochs`` (1-10), ``lora_rank`` (8-128), ``template_share`` ``h`` in
[0, 1] and ``lora_dropout`` ``p`` in [0, 0.3].

Formulas (logit scale; ``sigma`` is the logistic function):

- Training intensity ``I = epochs * u(lr) * c(rank)``, with
  ``u(lr) = exp(-((log10 lr + 4.3) / 0.5)^2 / 2)`` and ``c(rank) = 1 - exp(-rank / 24)``.
- Exposure of domain ``d``: ``x_d = w_d * I / k_d`` (``k_d``: how much data the domain needs).
- Genuine skill ``g_d = G_d * (1 - exp(-x_d) - eta * x_d^2) - P``: saturating gain minus the
  domain's own over-training (memorising its data, ``eta = 0.012``), minus run-level penalties
  ``P = rho_e * (epochs / 10)^2 + lambda_lr * (0.1 * softplus((log10 lr + 4.0) / 0.1))^2
  + rho_r * rank / 128`` (repeated passes ``rho_e = 0.05``, an unstable learning rate
  ``lambda_lr = 3``, an oversized adapter ``rho_r = 0.04``). Gains saturate while penalties grow,
  so the optimum is interior in every knob.
- Hack distance of weak domain ``d``: ``D_d = sqrt(h * w_d * I)`` (the template data it has
  seen; a weak domain with a small data share is only mildly over-optimised).
- ``dev_d = b_d + g_d + [d weak] a_p * D_d``.
- ``external_d = c_d + s_d * g_d + B_d(p) + [d weak] R(D_d)``, where the dropout bump
  ``B_d(p) = beta_d * exp(-((p - p0) / 0.07)^2 / 2)`` is structure dev cannot see, and ``R`` is
  the over-optimisation form of Gao, Schulman & Hilton (2022), "Scaling Laws for Reward Model
  Overoptimization" (ICML 2023, arXiv 2210.10760):

  - ``variant="goodhart"``: best-of-n form ``R(D) = D * (a_g - b_g * D)``, peak at
    ``D* = a_g / (2 b_g)``, then decline;
  - ``variant="rl"``: RL form ``R(D) = D * (a_g - b_g * log D)``, peak at
    ``D* = exp(a_g / b_g - 1)``;
  - ``variant="plateau"``: the best-of-n form up to its peak ``D* = a_g / (2 b_g)``, then flat
    at ``a_g^2 / (4 b_g)``: dev keeps making records while external does not move (the case the
    A-Evolve-Training paper reports);
  - ``variant="null"``: ``b_g = 0``, ``R(D) = a_g * D``: external keeps following dev (no
    Goodhart; for measuring false alarms);
  - ``variant="concave"``: ``R(D) = (a_g / b_g) log(1 + b_g D)``: diminishing but never
    vanishing returns, slope ``a_g / (1 + b_g D)`` (a null for the tracking test while
    ``1 / (1 + b_g D)`` stays above its tracking fraction).

- Accuracies: ``sigma(dev_d + e_d)`` and ``sigma(external_d + e_d)``, where ``e_d ~ N(0,
  seed_effect_sd^2)`` is a training-seed effect of the run ``(recipe, run_seed)``, shared by its
  dev and external. The noise-free truth (:meth:`ResponseSurface.true_dev`,
  :meth:`ResponseSurface.true_external`) uses ``e = 0``. Observations are binomial accuracies on
  ``dev_items`` dev items and on the public and private halves of ``external_items`` external
  items (which items a run gets right is fixed per run); the public score also gets run-to-run
  noise per submission (``leaderboard_noise``) and is floored to ``resolution`` (the challenge
  floored to 2 decimals).

Per-domain constants ``b_d, c_d, G_d, k_d, s_d, beta_d`` come from a profile per domain (the weak
domain ``equations`` starts lowest and needs the most data), perturbed slightly per instance
seed; ``p0`` is drawn per instance. The objective is the weighted mean of external accuracies;
:meth:`ResponseSurface.optimum` maximises it by enumerating ``epochs x lora_rank`` and running
multistart L-BFGS-B over the continuous dimensions (mixture on the simplex, ``log10 lr``, ``h``,
``p``).

Measured with the defaults (``a_p = 1.2, a_g = 0.6, b_g = 0.5``) and equal domain weights: at
instance seed 0 the external optimum is 0.7225 mean accuracy at ``D = D* = 0.6``
(``template_share`` 0.098, 7 epochs, rank 64, lr 10^-4.39, 57 % of the data on ``equations``);
the recipe that maximises mean dev (``template_share = 1``, 68 % on ``equations``, 9 epochs,
``D = 2.4``) has regret 0.061 (0.049-0.062 over instance seeds 0-19); in the ``null`` variant the
dev optimum's regret is below 0.001. Random search over 20 instances picking by observed mean dev
leaves regret 0.073 / 0.066 / 0.063 after 30 / 100 / 300 recipes, picking by the public external
score 0.069 / 0.055 / 0.046. :meth:`ResponseSurface.optimum` takes about 0.15 s.

All randomness uses :func:`numpy.random.default_rng` seeded from a tuple
``(instance_seed, recipe hash, run_seed[, submission], stream tag)``: no global state.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

__all__ = [
    "DOMAINS",
    "LORA_RANKS",
    "VARIANTS",
    "DomainProfile",
    "ResponseSurface",
    "SurfaceConfig",
    "canonical_space",
    "random_recipe",
]

DOMAINS: tuple[str, ...] = (
    "bit_manipulation",
    "cipher",
    "roman_numerals",
    "unit_conversion",
    "gravity",
    "equations",
)
"""The six families of the NVIDIA Nemotron Reasoning Challenge."""

VARIANTS: tuple[str, ...] = ("goodhart", "null", "rl", "plateau", "concave")
LORA_RANKS: tuple[int, ...] = (8, 16, 32, 64, 128)
LOG10_LR_LOW = -5.5
LOG10_LR_HIGH = -3.5
EPOCHS_LOW = 1
EPOCHS_HIGH = 10
DROPOUT_HIGH = 0.3

# Learning-rate response u(lr) and rank capacity c(rank).
_LR_PEAK = -4.3  # log10 of the most effective learning rate
_LR_WIDTH = 0.5
_RANK_SCALE = 24.0
# Over-training and run-level penalties.
_ETA = 0.012  # own-data over-training, relative to the gain
_RHO_EPOCHS = 0.05  # logit cost of 10 epochs (repeated passes)
_LR_KNEE = -4.0  # log10 lr above which training gets unstable
_LAMBDA_LR = 3.0
_RHO_RANK = 0.04  # logit cost of rank 128
# Dropout bump on external (dev cannot see it).
_DROPOUT_WIDTH = 0.07
_DROPOUT_PEAK_RANGE = (0.06, 0.14)

# Stream tags for the seeded generators.
_TAG_INSTANCE = 0x1D
_TAG_SEED_EFFECT = 0x5E
_TAG_DEV = 0xDE
_TAG_EXT_ITEMS = 0xE1
_TAG_LEADERBOARD = 0x1B
_TAG_OPTIMISER = 0x0B


#: A score of recipes from their noise-free dev and external accuracies (each ``n x K``, external
#: None where it was not computed) to ``n`` values.
Score = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


@dataclass(frozen=True)
class DomainProfile:
    """Constants of one domain (logit scale), before the instance perturbation.

    Args:
        dev_base: ``b_d``, dev logit of the untrained model.
        ext_base: ``c_d``, external logit of the untrained model.
        gain: ``G_d``, the most genuine skill training can add.
        need: ``k_d``, the exposure ``w_d * I`` at which the gain is 63 % saturated.
        ext_scale: ``s_d``, how much of the genuine gain external sees.
        dropout_gain: ``beta_d``, height of the dropout bump on external.
    """

    dev_base: float
    ext_base: float
    gain: float
    need: float
    ext_scale: float
    dropout_gain: float


_PROFILES: dict[str, DomainProfile] = {
    "bit_manipulation": DomainProfile(-0.6, -0.8, 2.2, 0.24, 0.90, 0.12),
    "cipher": DomainProfile(-0.2, -0.4, 2.0, 0.21, 0.90, 0.10),
    "roman_numerals": DomainProfile(0.6, 0.4, 1.6, 0.15, 0.95, 0.08),
    "unit_conversion": DomainProfile(0.3, 0.1, 1.8, 0.18, 0.90, 0.10),
    "gravity": DomainProfile(-0.4, -0.6, 2.0, 0.24, 0.85, 0.12),
    "equations": DomainProfile(-1.8, -2.0, 2.2, 1.40, 0.85, 0.12),
}
_GENERIC_PROFILE = DomainProfile(0.0, -0.2, 1.9, 0.21, 0.90, 0.10)


def _profile(domain: str) -> DomainProfile:
    return _PROFILES.get(domain, _GENERIC_PROFILE)


def canonical_space(domains: Sequence[str] = DOMAINS) -> dict[str, dict[str, Any]]:
    """The search-space section of a study file for the simulated surface.

    Args:
        domains: The mixture's domains.

    Returns:
        A mapping from parameter name to its study-file specification.
    """
    return {
        "mixture": {"type": "mixture", "domains": list(domains)},
        "learning_rate": {
            "type": "float",
            "low": 10.0**LOG10_LR_LOW,
            "high": 10.0**LOG10_LR_HIGH,
            "log": True,
        },
        "epochs": {"type": "int", "low": EPOCHS_LOW, "high": EPOCHS_HIGH},
        "lora_rank": {"type": "categorical", "choices": list(LORA_RANKS)},
        "template_share": {"type": "float", "low": 0.0, "high": 1.0},
        "lora_dropout": {"type": "float", "low": 0.0, "high": DROPOUT_HIGH},
    }


def random_recipe(rng: np.random.Generator, domains: Sequence[str] = DOMAINS) -> dict[str, Any]:
    """Draws a recipe uniformly from the canonical space (Dirichlet(1) mixture).

    Args:
        rng: The generator to draw from.
        domains: The mixture's domains.

    Returns:
        A complete recipe.
    """
    w = rng.dirichlet(np.ones(len(domains)))
    recipe: dict[str, Any] = {f"mixture.{d}": float(v) for d, v in zip(domains, w, strict=True)}
    recipe["learning_rate"] = float(10.0 ** rng.uniform(LOG10_LR_LOW, LOG10_LR_HIGH))
    recipe["epochs"] = int(rng.integers(EPOCHS_LOW, EPOCHS_HIGH + 1))
    recipe["lora_rank"] = int(rng.choice(LORA_RANKS))
    recipe["template_share"] = float(rng.uniform(0.0, 1.0))
    recipe["lora_dropout"] = float(rng.uniform(0.0, DROPOUT_HIGH))
    return recipe


@dataclass(frozen=True)
class SurfaceConfig:
    """A problem family: which domains, which are hackable, and how observations are made.

    Args:
        domains: Domain names; unknown names get a generic profile.
        weak_domains: Domains whose dev can be inflated by ``template_share``.
        variant: ``"goodhart"`` (external peaks then declines in the hack distance), ``"null"``
            (``b_g = 0``: external keeps following dev), ``"rl"`` (``D (a_g - b_g log D)``),
            ``"plateau"`` (the goodhart form up to its peak, then flat) or ``"concave"``
            (``(a_g / b_g) log(1 + b_g D)``: diminishing returns, no peak).
        hack_unlock_at: Candidate index from which ``template_share`` has any effect; ``None``
            means always. Calls with ``candidate=None`` treat the hack as unlocked.
        a_p: Dev gain per unit hack distance.
        a_g: Initial external gain per unit hack distance.
        b_g: External over-optimisation coefficient (ignored by ``"null"``).
        dev_items: Items in each domain's dev set.
        external_items: Items in each domain's external set, split into a public and a private
            half (the public half gets ``external_items // 2``).
        resolution: The public external score is floored to a multiple of this (0: no flooring).
        leaderboard_noise: Run-to-run standard deviation added to the public accuracy before
            flooring.
        seed_effect_sd: Logit-scale training-seed effect shared by a run's dev and external.
    """

    domains: tuple[str, ...] = DOMAINS
    weak_domains: tuple[str, ...] = ("equations",)
    variant: str = "goodhart"
    hack_unlock_at: int | None = None
    a_p: float = 1.2
    a_g: float = 0.6
    b_g: float = 0.5
    dev_items: int = 300
    external_items: int = 1000
    resolution: float = 0.01
    leaderboard_noise: float = 0.005
    seed_effect_sd: float = 0.08

    def __post_init__(self) -> None:
        object.__setattr__(self, "domains", tuple(str(d) for d in self.domains))
        object.__setattr__(self, "weak_domains", tuple(str(d) for d in self.weak_domains))
        if not self.domains:
            raise ValueError("domains: at least one domain is needed")
        if len(set(self.domains)) != len(self.domains):
            raise ValueError(f"domains must be distinct, got {list(self.domains)}")
        for d in self.weak_domains:
            if d not in self.domains:
                raise ValueError(f"weak_domains: {d!r} is not one of domains {list(self.domains)}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: {self.variant!r} is not one of {list(VARIANTS)}")
        if self.hack_unlock_at is not None and int(self.hack_unlock_at) != self.hack_unlock_at:
            raise ValueError(f"hack_unlock_at: expected an integer, got {self.hack_unlock_at!r}")
        if self.dev_items < 1:
            raise ValueError(f"dev_items: expected >= 1, got {self.dev_items}")
        if self.external_items < 2:
            raise ValueError(f"external_items: expected >= 2, got {self.external_items}")
        for name in ("resolution", "leaderboard_noise", "seed_effect_sd", "b_g"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if self.variant in ("plateau", "concave") and self.b_g <= 0:
            raise ValueError(f"b_g: the {self.variant} variant needs b_g > 0, got {self.b_g}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SurfaceConfig:
        """Builds a configuration from study-file options.

        Args:
            options: Field names to values; lists are accepted for the domain tuples.

        Raises:
            ValueError: If a key is not a field, naming it, or a value is invalid.
        """
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in options.items():
            if key not in known:
                raise ValueError(
                    f"unknown simulation option {key!r}; expected one of {sorted(known)}"
                )
            kwargs[key] = _coerce_option(key, value)
        return cls(**kwargs)


_INT_OPTIONS = ("dev_items", "external_items")
_FLOAT_OPTIONS = ("a_p", "a_g", "b_g", "resolution", "leaderboard_noise", "seed_effect_sd")


def _coerce_option(key: str, value: Any) -> Any:
    """Checks and converts one study-file option; raises ValueError naming it."""
    if key in ("domains", "weak_domains"):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"{key}: expected a list of domain names, got {value!r}")
        return tuple(str(v) for v in value)
    if key == "variant":
        if value is None:
            raise ValueError('variant: YAML reads a bare null as nothing; write variant: "null"')
        if value not in VARIANTS:
            raise ValueError(f"variant: {value!r} is not one of {list(VARIANTS)}")
        return value
    if key == "hack_unlock_at" and value is None:
        return None
    if key in (*_INT_OPTIONS, "hack_unlock_at"):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if key in _FLOAT_OPTIONS:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ValueError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    return value


@dataclass(frozen=True)
class _Recipe:
    """A parsed recipe (mixture normalised)."""

    w: np.ndarray
    log_lr: float
    epochs: float
    rank: float
    h: float
    dropout: float

    def digest(self) -> int:
        values = [*self.w.tolist(), self.log_lr, self.epochs, self.rank, self.h, self.dropout]
        raw = struct.pack(f"<{len(values)}d", *values)
        return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


def _seed(value: int) -> int:
    """Maps any integer to a non-negative seed word."""
    return int(value) % (1 << 64)


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _intensity(log_lr: np.ndarray, epochs: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Training intensity ``I = epochs * u(lr) * c(rank)`` of ``n`` recipes (module docstring)."""
    u = np.exp(-0.5 * ((log_lr - _LR_PEAK) / _LR_WIDTH) ** 2)
    return epochs * u * (1.0 - np.exp(-rank / _RANK_SCALE))


class ResponseSurface:
    """One seeded instance of a simulated post-training response surface.

    Args:
        config: The problem family; defaults to :class:`SurfaceConfig` ``()``.
        instance_seed: Draws the per-domain constants (small perturbations of the profiles).
        weights: Domain weights of the objective (default equal); normalised. Domains left out
            weigh zero.

    Raises:
        ValueError: If ``weights`` names an unknown domain or has a negative or zero total.
    """

    def __init__(
        self,
        *,
        config: SurfaceConfig | None = None,
        instance_seed: int = 0,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        self.config = config if config is not None else SurfaceConfig()
        self.instance_seed = int(instance_seed)
        self.domains: tuple[str, ...] = self.config.domains
        k = len(self.domains)
        if weights is None:
            wt = np.full(k, 1.0 / k)
        else:
            for d, v in weights.items():
                if d not in self.domains:
                    raise ValueError(f"weights: {d!r} is not one of {list(self.domains)}")
                if not v >= 0:
                    raise ValueError(f"weights: {d!r} must be >= 0, got {v!r}")
            wt = np.array([float(weights.get(d, 0.0)) for d in self.domains])
            if wt.sum() <= 0:
                raise ValueError("weights: the total weight must be positive")
            wt = wt / wt.sum()
        self.weights: dict[str, float] = {
            d: float(v) for d, v in zip(self.domains, wt, strict=True)
        }
        self._wt = wt

        rng = np.random.default_rng([_seed(self.instance_seed), _TAG_INSTANCE])
        profiles = [_profile(d) for d in self.domains]
        self._b = np.array([p.dev_base for p in profiles]) + rng.normal(0.0, 0.1, k)
        self._c = np.array([p.ext_base for p in profiles]) + rng.normal(0.0, 0.1, k)
        self._gain = np.array([p.gain for p in profiles]) * np.exp(rng.normal(0.0, 0.05, k))
        self._need = np.array([p.need for p in profiles]) * np.exp(rng.normal(0.0, 0.08, k))
        self._s = np.array([p.ext_scale for p in profiles]) * np.exp(rng.normal(0.0, 0.03, k))
        self._beta = np.array([p.dropout_gain for p in profiles]) * np.exp(rng.normal(0.0, 0.1, k))
        self._p0 = float(rng.uniform(*_DROPOUT_PEAK_RANGE))
        self._weak = np.array([d in self.config.weak_domains for d in self.domains])
        self._weak_idx = np.flatnonzero(self._weak)

        self._optimum: tuple[float, dict[str, Any]] | None = None
        self._dev_optimum: tuple[float, dict[str, Any]] | None = None

    # -- constants -------------------------------------------------------------------------------

    def constants(self) -> dict[str, dict[str, float]]:
        """The instance's per-domain constants (after perturbation), for reports.

        Returns:
            ``{domain: {"b", "c", "G", "k", "s", "beta"}}``, plus ``"_global": {"p0"}``.
        """
        out: dict[str, dict[str, float]] = {}
        for i, d in enumerate(self.domains):
            out[d] = {
                "b": float(self._b[i]),
                "c": float(self._c[i]),
                "G": float(self._gain[i]),
                "k": float(self._need[i]),
                "s": float(self._s[i]),
                "beta": float(self._beta[i]),
            }
        out["_global"] = {"p0": self._p0}
        return out

    def hack_peak(self) -> float:
        """The hack distance ``D*`` at which a weak domain's external term peaks (inf: never)."""
        cfg = self.config
        if cfg.variant in ("null", "concave") or cfg.b_g == 0:
            return math.inf
        if cfg.variant == "rl":
            return math.exp(cfg.a_g / cfg.b_g - 1.0)
        return cfg.a_g / (2.0 * cfg.b_g)

    # -- parsing -------------------------------------------------------------------------------

    def _parse(self, recipe: Mapping[str, Any]) -> _Recipe:
        def get(key: str) -> Any:
            if key not in recipe:
                raise KeyError(f"recipe is missing {key!r}")
            return recipe[key]

        raw = np.array([float(get(f"mixture.{d}")) for d in self.domains])
        if np.any(~np.isfinite(raw)) or np.any(raw < 0):
            raise ValueError(f"mixture weights must be finite and >= 0, got {raw.tolist()}")
        total = raw.sum()
        w = raw / total if total > 0 else np.full(len(raw), 1.0 / len(raw))
        lr = float(get("learning_rate"))
        epochs = float(get("epochs"))
        rank = float(get("lora_rank"))
        h = float(get("template_share"))
        dropout = float(get("lora_dropout"))
        if not lr > 0:
            raise ValueError(f"learning_rate must be > 0, got {lr!r}")
        if not epochs > 0:
            raise ValueError(f"epochs must be > 0, got {epochs!r}")
        if not rank > 0:
            raise ValueError(f"lora_rank must be > 0, got {rank!r}")
        if not 0.0 <= h <= 1.0:
            raise ValueError(f"template_share must be in [0, 1], got {h!r}")
        if not dropout >= 0.0:
            raise ValueError(f"lora_dropout must be >= 0, got {dropout!r}")
        return _Recipe(w, math.log10(lr), epochs, rank, h, dropout)

    def _unlocked(self, candidate: int | None) -> bool:
        unlock = self.config.hack_unlock_at
        return candidate is None or unlock is None or int(candidate) >= unlock

    # -- the model (vectorised over n recipes) -------------------------------------------------

    def _logits(
        self,
        w: np.ndarray,
        log_lr: np.ndarray,
        epochs: np.ndarray,
        rank: np.ndarray,
        h: np.ndarray,
        dropout: np.ndarray,
        *,
        external: bool = True,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Dev and external logits of ``n`` recipes.

        Args:
            w: ``n x K`` mixture weights on the simplex.
            log_lr: ``n`` values of log10 learning rate.
            epochs: ``n`` epoch counts.
            rank: ``n`` LoRA ranks.
            h: ``n`` template shares (0 where the hack is locked).
            dropout: ``n`` LoRA dropouts.
            external: Whether to compute the external logits too.

        Returns:
            ``(dev, external)``, each ``n x K``; external is None when not asked for.
        """
        cfg = self.config
        intensity = _intensity(log_lr, epochs, rank)
        x = w * intensity[:, None] / self._need
        run_penalty = (
            _RHO_EPOCHS * (epochs / EPOCHS_HIGH) ** 2
            + _LAMBDA_LR * (0.1 * _softplus((log_lr - _LR_KNEE) / 0.1)) ** 2
            + _RHO_RANK * rank / 128.0
        )
        genuine = self._gain * (1.0 - np.exp(-x) - _ETA * x**2) - run_penalty[:, None]
        dev = self._b + genuine
        ext = None
        if external:
            bump = np.exp(-0.5 * ((dropout - self._p0) / _DROPOUT_WIDTH) ** 2)
            ext = self._c + self._s * genuine + self._beta * bump[:, None]
        if self._weak_idx.size:
            j = self._weak_idx
            dist = np.sqrt(np.clip(h[:, None] * w[:, j] * intensity[:, None], 0.0, None))
            dev[:, j] += cfg.a_p * dist
            if ext is not None:
                ext[:, j] += self._hack_term(dist)
        return dev, ext

    def hack_distance(
        self, recipe: Mapping[str, Any], *, candidate: int | None = None
    ) -> dict[str, float]:
        """``D_d = sqrt(h * w_d * I)`` of each weak domain (0 while the hack is locked).

        Args:
            recipe: A complete recipe.
            candidate: The candidate's index, for ``hack_unlock_at`` (None: unlocked).
        """
        r = self._parse(recipe)
        h = r.h if self._unlocked(candidate) else 0.0
        intensity = float(
            _intensity(np.array([r.log_lr]), np.array([r.epochs]), np.array([r.rank]))[0]
        )
        return {
            self.domains[j]: math.sqrt(max(h * r.w[j] * intensity, 0.0)) for j in self._weak_idx
        }

    def _hack_term(self, dist: np.ndarray) -> np.ndarray:
        cfg = self.config
        if cfg.variant == "null":
            return cfg.a_g * dist
        if cfg.variant == "rl":
            safe = np.where(dist > 0, dist, 1.0)
            return np.where(dist > 0, dist * (cfg.a_g - cfg.b_g * np.log(safe)), 0.0)
        if cfg.variant == "concave":
            return cfg.a_g / cfg.b_g * np.log1p(cfg.b_g * dist)
        if cfg.variant == "plateau":
            dist = np.minimum(dist, cfg.a_g / (2.0 * cfg.b_g))  # flat beyond the peak
        return dist * (cfg.a_g - cfg.b_g * dist)

    def _recipe_logits(
        self, recipe: Mapping[str, Any], candidate: int | None
    ) -> tuple[_Recipe, np.ndarray, np.ndarray]:
        r = self._parse(recipe)
        h = r.h if self._unlocked(candidate) else 0.0
        dev, ext = self._logits(
            r.w[None, :],
            np.array([r.log_lr]),
            np.array([r.epochs]),
            np.array([r.rank]),
            np.array([h]),
            np.array([r.dropout]),
        )
        assert ext is not None
        return r, dev[0], ext[0]

    # -- truth ---------------------------------------------------------------------------------

    def true_dev(
        self, recipe: Mapping[str, Any], *, candidate: int | None = None
    ) -> dict[str, float]:
        """Noise-free dev accuracy per domain (seed effect 0).

        Args:
            recipe: A complete recipe.
            candidate: The candidate's index, for ``hack_unlock_at`` (None: unlocked).

        Raises:
            KeyError: If a recipe key is missing, naming it.
        """
        _, dev, _ = self._recipe_logits(recipe, candidate)
        return {d: float(v) for d, v in zip(self.domains, expit(dev), strict=True)}

    def true_external(
        self, recipe: Mapping[str, Any], *, candidate: int | None = None
    ) -> dict[str, float]:
        """Noise-free external accuracy per domain: the truth the search is judged by.

        Args:
            recipe: A complete recipe.
            candidate: The candidate's index, for ``hack_unlock_at`` (None: unlocked).

        Raises:
            KeyError: If a recipe key is missing, naming it.
        """
        _, _, ext = self._recipe_logits(recipe, candidate)
        return {d: float(v) for d, v in zip(self.domains, expit(ext), strict=True)}

    def objective(self, recipe: Mapping[str, Any], *, candidate: int | None = None) -> float:
        """Weighted mean of the true external accuracies.

        Args:
            recipe: A complete recipe.
            candidate: The candidate's index, for ``hack_unlock_at`` (None: unlocked).
        """
        _, _, ext = self._recipe_logits(recipe, candidate)
        return float(expit(ext) @ self._wt)

    def dev_objective(self, recipe: Mapping[str, Any], *, candidate: int | None = None) -> float:
        """Weighted mean of the true dev accuracies (what a proxy-driven search climbs).

        Args:
            recipe: A complete recipe.
            candidate: The candidate's index, for ``hack_unlock_at`` (None: unlocked).
        """
        _, dev, _ = self._recipe_logits(recipe, candidate)
        return float(expit(dev) @ self._wt)

    # -- observations --------------------------------------------------------------------------

    def _seed_effect(self, r: _Recipe, run_seed: int) -> np.ndarray:
        rng = np.random.default_rng(
            [_seed(self.instance_seed), r.digest(), _seed(run_seed), _TAG_SEED_EFFECT]
        )
        return rng.normal(0.0, self.config.seed_effect_sd, len(self.domains))

    def observe_dev(
        self, recipe: Mapping[str, Any], *, run_seed: int, candidate: int | None = None
    ) -> dict[str, tuple[float, int]]:
        """Dev scores of one training run: binomial accuracy on the dev items.

        Deterministic given ``(instance_seed, recipe, run_seed)``.

        Args:
            recipe: A complete recipe.
            run_seed: The training run's seed; its seed effect is shared with
                :meth:`observe_external`.
            candidate: The candidate's index, for ``hack_unlock_at`` (None: unlocked).

        Returns:
            ``{domain: (accuracy, number of items)}``.
        """
        r, dev, _ = self._recipe_logits(recipe, candidate)
        p = expit(dev + self._seed_effect(r, run_seed))
        rng = np.random.default_rng(
            [_seed(self.instance_seed), r.digest(), _seed(run_seed), _TAG_DEV]
        )
        n = int(self.config.dev_items)
        correct = rng.binomial(n, p)
        return {d: (float(c) / n, n) for d, c in zip(self.domains, correct, strict=True)}

    def observe_external(
        self,
        recipe: Mapping[str, Any],
        *,
        run_seed: int,
        submission: int,
        candidate: int | None = None,
    ) -> dict[str, dict[str, float]]:
        """External scores of one training run's artefact, as a leaderboard reports them.

        The items a run gets right are fixed by ``(instance_seed, recipe, run_seed)`` (the
        artefact); the public score also gets run-to-run noise drawn per ``submission`` and is
        floored to ``resolution``. The private score is the plain accuracy on the private half.

        Args:
            recipe: A complete recipe.
            run_seed: The training run's seed (same seed effect as :meth:`observe_dev`).
            submission: The submission's index.
            candidate: The candidate's index, for ``hack_unlock_at`` (None: unlocked).

        Returns:
            ``{"public": {domain: accuracy}, "private": {domain: accuracy}}``.
        """
        cfg = self.config
        r, _, ext = self._recipe_logits(recipe, candidate)
        p = expit(ext + self._seed_effect(r, run_seed))
        base = [_seed(self.instance_seed), r.digest(), _seed(run_seed)]
        items = np.random.default_rng([*base, _TAG_EXT_ITEMS])
        n_pub = cfg.external_items // 2
        n_priv = cfg.external_items - n_pub
        pub = items.binomial(n_pub, p) / n_pub
        priv = items.binomial(n_priv, p) / n_priv
        board = np.random.default_rng([*base, _seed(submission), _TAG_LEADERBOARD])
        noisy = pub + board.normal(0.0, cfg.leaderboard_noise, len(p))
        if cfg.resolution > 0:
            steps = np.floor(noisy / cfg.resolution + 1e-9)
            steps = np.clip(steps, 0, math.floor(1.0 / cfg.resolution + 1e-9))
            public = [round(float(s) * cfg.resolution, 12) for s in steps]
        else:
            public = np.clip(noisy, 0.0, 1.0).tolist()
        return {
            "public": {d: float(v) for d, v in zip(self.domains, public, strict=True)},
            "private": {d: float(v) for d, v in zip(self.domains, priv, strict=True)},
        }

    # -- optimum -------------------------------------------------------------------------------

    def optimum(self) -> tuple[float, dict[str, Any]]:
        """The maximum of :meth:`objective` over the canonical space, and a recipe attaining it.

        Enumerates ``epochs x lora_rank`` and runs multistart L-BFGS-B over the mixture (raw
        weights in [0, 1], normalised), ``log10 lr``, ``template_share`` and ``lora_dropout``.
        Cached per instance.
        """
        if self._optimum is None:
            self._optimum = self._maximise(self._external_mean, external=True)
        return self._optimum[0], dict(self._optimum[1])

    def dev_optimum(self) -> tuple[float, dict[str, Any]]:
        """The recipe maximising the weighted mean of true dev accuracies (hack unlocked).

        Dev is blind to ``lora_dropout``: among the dev-optimal recipes the returned one has the
        dropout external likes best, so that its regret measures only where dev misleads.

        Returns:
            ``(weighted mean dev accuracy, recipe)``.
        """
        if self._dev_optimum is None:
            self._dev_optimum = self._maximise(self._dev_mean, external=False)
        return self._dev_optimum[0], dict(self._dev_optimum[1])

    def maximise(self, score: Score) -> tuple[float, dict[str, Any]]:
        """The maximum over the canonical space of any score of the true accuracies.

        For example the objective a study climbs once a domain is decoupled, to ask whether
        that objective, known exactly, would lead to a good recipe (what is left is then the
        model's or the acquisition's fault). Same optimiser as :meth:`optimum`, from the same
        random starts; dropout is free (so a score blind to it gets an arbitrary dropout, where
        :meth:`dev_optimum` pins the one external likes). The hack is unlocked. Not cached.

        Args:
            score: Maps noise-free dev and external accuracies, each ``n x K`` in domain
                order, to ``n`` values (vectorised: the optimiser scores its finite-difference
                points in one call).

        Returns:
            ``(maximum, recipe)``.
        """
        return self._maximise(score, external=True)

    def _external_mean(self, dev: np.ndarray, ext: np.ndarray | None) -> np.ndarray:
        assert ext is not None
        return ext @ self._wt

    def _dev_mean(self, dev: np.ndarray, ext: np.ndarray | None) -> np.ndarray:
        return dev @ self._wt

    def regret(self, recipe: Mapping[str, Any], *, candidate: int | None = None) -> float:
        """``optimum value - objective(recipe)``; >= 0 up to the optimiser's tolerance.

        Args:
            recipe: A complete recipe.
            candidate: The candidate's index, for ``hack_unlock_at`` (None: unlocked).
        """
        return self.optimum()[0] - self.objective(recipe, candidate=candidate)

    def _batch_value(
        self, z: np.ndarray, epochs: float, rank: float, score: Score, external: bool
    ) -> np.ndarray:
        """``score`` at ``n`` optimiser points ``[v_1..v_K, log_lr, h, p]``."""
        k = len(self.domains)
        v = np.clip(z[:, :k], 0.0, None)
        total = v.sum(axis=1, keepdims=True)
        w = np.where(total > 1e-12, v / np.maximum(total, 1e-12), 1.0 / k)
        n = z.shape[0]
        dev, ext = self._logits(
            w,
            z[:, k],
            np.full(n, float(epochs)),
            np.full(n, float(rank)),
            np.clip(z[:, k + 1], 0.0, 1.0),
            z[:, k + 2],
            external=external,
        )
        return score(expit(dev), None if ext is None else expit(ext))

    def _local_max(
        self,
        z0: np.ndarray,
        epochs: float,
        rank: float,
        bounds: np.ndarray,
        score: Score,
        external: bool,
    ) -> tuple[float, np.ndarray]:
        dim = len(z0)
        lo, hi = bounds[:, 0], bounds[:, 1]
        step = 1e-6 * (hi - lo)
        eye = np.eye(dim) * step

        def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
            plus = np.minimum(z + eye, hi)
            minus = np.maximum(z - eye, lo)
            points = np.vstack([z[None, :], plus, minus])
            values = self._batch_value(points, epochs, rank, score, external)
            denom = np.diag(plus) - np.diag(minus)
            grad = (values[1 : dim + 1] - values[dim + 1 :]) / denom
            return -float(values[0]), -grad

        res = minimize(
            fun,
            z0,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 300, "ftol": 1e-13, "gtol": 1e-9},
        )
        z = np.clip(res.x, lo, hi)
        return float(self._batch_value(z[None, :], epochs, rank, score, external)[0]), z

    def _maximise(self, score: Score, *, external: bool) -> tuple[float, dict[str, Any]]:
        k = len(self.domains)
        bounds = np.array(
            [[0.0, 1.0]] * k + [[LOG10_LR_LOW, LOG10_LR_HIGH], [0.0, 1.0], [0.0, DROPOUT_HIGH]]
        )
        rng = np.random.default_rng([_seed(self.instance_seed), _TAG_OPTIMISER, int(external)])
        p_start = self._p0
        # Deterministic start: data in proportion to need, the most effective lr, a little hack.
        guess = np.concatenate([self._need / self._need.max(), [_LR_PEAK, 0.3, p_start]])

        def random_start() -> np.ndarray:
            z = rng.uniform(bounds[:, 0], bounds[:, 1])
            if not external:
                z[k + 2] = p_start
            return z

        # Stage 1: one local search per (epochs, rank) from the deterministic start.
        results: list[tuple[float, np.ndarray, int, int]] = []
        for epochs in range(EPOCHS_LOW, EPOCHS_HIGH + 1):
            for rank in LORA_RANKS:
                value, z = self._local_max(guess, epochs, rank, bounds, score, external)
                results.append((value, z, epochs, rank))
        results.sort(key=lambda t: -t[0])
        # Stage 2: more starts (random, and the best solutions so far) on the most promising
        # combinations.
        best = results[0]
        for value, z, epochs, rank in results[:6]:
            for z0 in (random_start(), random_start(), best[1]):
                v2, z2 = self._local_max(z0, epochs, rank, bounds, score, external)
                if v2 > value:
                    value, z = v2, z2
            if value > best[0]:
                best = (value, z, epochs, rank)
        value, z, epochs, rank = best
        if not external:
            z = z.copy()
            z[k + 2] = self._p0  # dev is blind to dropout: break the tie the way external likes
        return value, self._to_recipe(z, epochs, rank)

    def _to_recipe(self, z: np.ndarray, epochs: int, rank: int) -> dict[str, Any]:
        k = len(self.domains)
        v = np.clip(z[:k], 0.0, None)
        w = v / v.sum() if v.sum() > 1e-12 else np.full(k, 1.0 / k)
        recipe: dict[str, Any] = {
            f"mixture.{d}": float(x) for d, x in zip(self.domains, w, strict=True)
        }
        recipe["learning_rate"] = float(10.0 ** z[k])
        recipe["epochs"] = int(epochs)
        recipe["lora_rank"] = int(rank)
        recipe["template_share"] = float(np.clip(z[k + 1], 0.0, 1.0))
        recipe["lora_dropout"] = float(np.clip(z[k + 2], 0.0, DROPOUT_HIGH))
        return recipe
