"""The search space: recipes <-> points of the unit cube, and Optuna distributions.

A recipe is a flat mapping from parameter name to value. A mixture group ``mixture`` over
domains ``a, b`` contributes the keys ``mixture.a`` and ``mixture.b``, whose values sum to one.

Encoding (one coordinate in [0, 1] per recipe key):

- float: ``(v - low) / (high - low)``, on ``log v`` when ``log`` is set;
- int: the same on the integer range, rounded on decoding;
- categorical: choice ``i`` of ``n`` at ``i / (n - 1)``. This is an ordinal encoding: the GP
  sees the choices in the order the study file lists them, which suits ordered choices such as
  LoRA ranks and is a known limitation for unordered ones;
- mixture: the weights themselves. A proposed point is projected onto the simplex by
  ``x / sum(x)``; the models apply the same projection (:meth:`SearchSpace.simplex_groups`), so
  the acquisition value of a raw point is the value of the recipe it decodes to.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from searchlab.config import CategoricalParam, FloatParam, IntParam, MixtureParam, choice_key

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

    from searchlab.config import ParamConfig


@dataclass(frozen=True)
class _Dim:
    key: str  # recipe key
    param: Any  # FloatParam | IntParam | CategoricalParam | MixtureParam
    group: str | None = None  # mixture group name, for mixture coordinates


class SearchSpace:
    """Maps recipes to the unit cube and back.

    Args:
        params: The ``space`` section of a validated study file.
    """

    def __init__(self, params: Mapping[str, ParamConfig]) -> None:
        dims: list[_Dim] = []
        for name, param in params.items():
            if isinstance(param, MixtureParam):
                dims += [_Dim(f"{name}.{d}", param, group=name) for d in param.domains]
            else:
                dims.append(_Dim(name, param))
        self._dims = tuple(dims)
        self._params = dict(params)

    @property
    def dim(self) -> int:
        return len(self._dims)

    @property
    def keys(self) -> list[str]:
        """Recipe keys in coordinate order."""
        return [d.key for d in self._dims]

    def param(self, key: str) -> Any:
        """The study-file parameter behind recipe key ``key`` (a mixture for ``name.domain``)."""
        return next(d.param for d in self._dims if d.key == key)

    def simplex_groups(self) -> list[list[int]]:
        """Coordinate indices of each mixture group."""
        groups: dict[str, list[int]] = {}
        for i, d in enumerate(self._dims):
            if d.group is not None:
                groups.setdefault(d.group, []).append(i)
        return list(groups.values())

    def share_coordinates(self, domain: str) -> tuple[int, list[int]] | None:
        """Where ``domain``'s data share lives: its coordinate and its mixture group's, in the
        first mixture group that lists the domain; None when no mixture does."""
        for idx in self.simplex_groups():
            for i in idx:
                if self._dims[i].key == f"{self._dims[i].group}.{domain}":
                    return i, idx
        return None

    def discrete_dims(self) -> dict[int, list[float]]:
        """Allowed encoded values of each integer and categorical coordinate.

        Every integer of a range is listed, which is why a study file's ``int`` range spans at
        most :data:`searchlab.config.MAX_INT_SPAN` values and a categorical has at most
        :data:`searchlab.config.MAX_CHOICES` choices.
        """
        out: dict[int, list[float]] = {}
        for i, d in enumerate(self._dims):
            p = d.param
            if isinstance(p, CategoricalParam):
                n = len(p.choices)
                out[i] = [j / (n - 1) for j in range(n)]
            elif isinstance(p, IntParam):
                values = range(p.low, p.high + 1)
                out[i] = sorted({self._encode_one(d, v) for v in values})
        return out

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna distributions of the recipe keys, for storing recipes as trial params."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        out: dict[str, BaseDistribution] = {}
        for d in self._dims:
            p = d.param
            if isinstance(p, FloatParam):
                out[d.key] = FloatDistribution(p.low, p.high, log=p.log)
            elif isinstance(p, IntParam):
                out[d.key] = IntDistribution(p.low, p.high, log=p.log)
            elif isinstance(p, CategoricalParam):
                out[d.key] = CategoricalDistribution(p.choices)
            else:
                out[d.key] = FloatDistribution(0.0, 1.0)
        return out

    # -- encoding ------------------------------------------------------------------------------

    @staticmethod
    def _encode_one(d: _Dim, value: Any) -> float:
        p = d.param
        if isinstance(p, CategoricalParam):
            return p.choices.index(value) / (len(p.choices) - 1)
        if isinstance(p, MixtureParam):
            return float(value)
        lo, hi, v = float(p.low), float(p.high), float(value)
        if p.log:
            lo, hi, v = math.log(lo), math.log(hi), math.log(v)
        return min(1.0, max(0.0, (v - lo) / (hi - lo)))

    def encode(self, recipe: Mapping[str, Any]) -> np.ndarray:
        """Encodes a recipe.

        Args:
            recipe: A complete recipe (every key of :attr:`keys`).

        Returns:
            ``d`` coordinates in [0, 1].
        """
        return np.array([self._encode_one(d, recipe[d.key]) for d in self._dims], dtype=float)

    def project(self, x: np.ndarray) -> np.ndarray:
        """Projects mixture coordinates onto the simplex.

        Args:
            x: ``n x d`` or ``d`` points of the unit cube.
        """
        x = np.array(x, dtype=float, copy=True)
        for idx in self.simplex_groups():
            block = np.clip(x[..., idx], 0.0, None)
            total = block.sum(axis=-1, keepdims=True)
            uniform = np.full_like(block, 1.0 / len(idx))
            x[..., idx] = np.where(total > 1e-12, block / np.maximum(total, 1e-12), uniform)
        return x

    def decode(self, x: Sequence[float] | np.ndarray) -> dict[str, Any]:
        """Decodes a point of the unit cube into a recipe.

        Args:
            x: ``d`` coordinates; values outside [0, 1] are clipped.
        """
        x = self.project(np.clip(np.asarray(x, dtype=float), 0.0, 1.0))
        recipe: dict[str, Any] = {}
        for xi, d in zip(x, self._dims, strict=True):
            p = d.param
            if isinstance(p, MixtureParam):
                recipe[d.key] = float(xi)
            elif isinstance(p, CategoricalParam):
                recipe[d.key] = p.choices[round(xi * (len(p.choices) - 1))]
            else:
                lo, hi = float(p.low), float(p.high)
                if p.log:
                    value = math.exp(math.log(lo) + xi * (math.log(hi) - math.log(lo)))
                else:
                    value = lo + xi * (hi - lo)
                if isinstance(p, IntParam):
                    recipe[d.key] = int(min(max(round(value), p.low), p.high))
                else:
                    recipe[d.key] = float(min(max(value, lo), hi))
        return recipe

    def check(self, recipe: Any) -> dict[str, Any]:
        """A recipe from outside (an agent's, an imported run's), checked against the space.

        Every key of :attr:`keys` and no other; a float or int within its bounds (an int
        whole), a categorical one of its choices, a mixture's weights non-negative and summing
        to 1 within 1e-6.

        Returns:
            The recipe with ints as ``int`` and floats as ``float``.

        Raises:
            RecipeError: Naming the first key at fault and its bound.
        """
        from searchlab.errors import RecipeError

        if not isinstance(recipe, Mapping):
            raise RecipeError(f"a recipe is an object of knobs, got {type(recipe).__name__}")
        unknown = [str(k) for k in recipe if k not in self.keys]
        if unknown:
            raise RecipeError(
                f"recipe key {unknown[0]!r} is not in the space ({', '.join(self.keys)})"
            )
        out: dict[str, Any] = {}
        sums: dict[str, float] = {}
        for d in self._dims:
            if d.key not in recipe:
                raise RecipeError(f"recipe key {d.key!r} is missing")
            value, p = recipe[d.key], d.param
            if isinstance(p, CategoricalParam):
                same = [c for c in p.choices if _same_choice(c, value)]
                if not same:
                    raise RecipeError(
                        f"recipe key {d.key!r} = {value!r} is not one of its choices {p.choices}"
                    )
                out[d.key] = same[0]
                continue
            number = (
                value if isinstance(value, int | float) and not isinstance(value, bool) else None
            )
            # An int is finite however long (math.isfinite would overflow converting it).
            if number is None or not (isinstance(number, int) or math.isfinite(number)):
                raise RecipeError(f"recipe key {d.key!r} = {value!r} is not a finite number")
            if isinstance(p, MixtureParam):
                if not 0 <= number <= 1:
                    raise RecipeError(f"recipe key {d.key!r} = {value!r} is outside [0, 1]")
                sums[d.group or ""] = sums.get(d.group or "", 0.0) + float(number)
                out[d.key] = float(number)
                continue
            if not p.low <= number <= p.high:
                raise RecipeError(
                    f"recipe key {d.key!r} = {value!r} is outside its bounds [{p.low}, {p.high}]"
                )
            if isinstance(p, IntParam):
                if number != int(number):
                    raise RecipeError(f"recipe key {d.key!r} = {value!r} is not a whole number")
                out[d.key] = int(number)
            else:
                out[d.key] = float(number)
        for group, total in sums.items():
            if abs(total - 1.0) > 1e-6:
                raise RecipeError(f"recipe mixture {group!r} sums to {total:g}, not 1")
        return out

    def canonical(self, recipe: Mapping[str, Any]) -> dict[str, Any]:
        """Round-trips a recipe through the encoding (what the GP sees is what is stored)."""
        return self.decode(self.encode(recipe))

    def quasi_random(self, n: int, *, seed: int) -> list[dict[str, Any]]:
        """Scrambled Sobol recipes for the warm-up round.

        Mixture coordinates are mapped through ``-log(1 - u)`` before normalising, which makes
        them uniform on the simplex (Dirichlet(1)) instead of crowding its centre.

        Args:
            n: How many recipes.
            seed: The scrambling seed.
        """
        from scipy.stats import qmc

        with warnings.catch_warnings():
            # A warm-up of any size is allowed; n not a power of 2 only loses Sobol's balance.
            warnings.filterwarnings("ignore", message="The balance properties of Sobol")
            u = qmc.Sobol(d=self.dim, scramble=True, seed=seed).random(n)
        for idx in self.simplex_groups():
            e = -np.log1p(-np.clip(u[:, idx], 0.0, 1.0 - 1e-12))
            u[:, idx] = e / np.maximum(e.sum(axis=1, keepdims=True), 1e-12)
        return [self.decode(row) for row in u]


def _same_choice(choice: Any, value: Any) -> bool:
    """Whether ``value`` is ``choice``: equal as stored, and of its kind (text, boolean or
    number), so that neither ``"16"`` nor ``true`` passes for ``16`` or ``1``."""

    def kind(v: Any) -> type:
        return bool if isinstance(v, bool) else str if isinstance(v, str) else float

    return kind(choice) is kind(value) and choice_key(choice) == choice_key(value)
