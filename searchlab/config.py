"""The study file: a YAML document, validated into a :class:`StudyConfig`.

Every error names the field path (``space.learning_rate.low``, ``domains[2].weight``) and the
file, on one line. Unknown keys are errors, not silently ignored: a misspelt ``alhpa`` would
otherwise run a study with a default the user did not choose.

Example (``studies/goodhart-sim.yaml`` is the full one)::

    name: goodhart-sim
    seed: 0
    domains: [{name: cipher, weight: 0.5}, {name: equations, weight: 0.5}]
    space:
      mixture: {type: mixture, domains: [cipher, equations]}
      learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
    backend: {name: simulated, options: {variant: goodhart}}
    rounds: {candidates: 8, count: 8}
    external: {per_round: 2, total: 16}
    policy: {alpha: 0.05, dev_penalty: 0.5}
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from searchlab.errors import StudyFileError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Pydantic puts the discriminator value into error locations; drop it from field paths.
_SPACE_TAGS = {"float", "int", "categorical", "mixture"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value}")
    return value


def _check_range(low: float, high: float, log: bool) -> None:
    if not low < high:
        raise ValueError(f"empty or inverted bounds: low={low} must be < high={high}")
    if log and low <= 0:
        raise ValueError(f"log scale needs low > 0, got low={low}")


class DomainConfig(_Strict):
    """A scored domain of the study and its weight in the objective."""

    name: str
    weight: float | None = None

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"domain name {value!r} must match {_NAME.pattern}")
        return value

    @field_validator("weight")
    @classmethod
    def _weight_ok(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or value < 0):
            raise ValueError(f"weight must be a finite number >= 0, got {value}")
        return value


class FloatParam(_Strict):
    """A real-valued knob, optionally searched on a log scale."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> FloatParam:
        _check_range(_finite(self.low, "low"), _finite(self.high, "high"), self.log)
        return self


class IntParam(_Strict):
    """An integer knob (epochs, steps)."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> IntParam:
        _check_range(self.low, self.high, self.log)
        return self


class CategoricalParam(_Strict):
    """A choice among listed values (strings, numbers or booleans)."""

    type: Literal["categorical"]
    choices: list[str | int | float | bool]

    @field_validator("choices")
    @classmethod
    def _choices(cls, value: list[Any]) -> list[Any]:
        if len(value) < 2:
            raise ValueError(f"needs at least 2 choices, got {len(value)}")
        if len({repr(v) for v in value}) != len(value):
            raise ValueError("choices must be distinct")
        for v in value:
            if isinstance(v, float):
                _finite(v, "a choice")
        return value


class MixtureParam(_Strict):
    """Training-data mixture weights over domains; a proposal lands on the simplex."""

    type: Literal["mixture"]
    domains: list[str]

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        if len(value) < 2:
            raise ValueError(f"a mixture needs at least 2 domains, got {len(value)}")
        if len(set(value)) != len(value):
            raise ValueError("mixture domains must be distinct")
        return value


ParamConfig = Annotated[
    FloatParam | IntParam | CategoricalParam | MixtureParam, Field(discriminator="type")
]


class BackendConfig(_Strict):
    """A built-in back end by name (``simulated``) or a user's class as ``module:Class``."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    # Seconds one candidate's train + evaluate may take before it is failed (None: no limit).
    timeout_s: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)


class RoundsConfig(_Strict):
    """A round trains ``candidates`` recipes as one batch; a study runs ``count`` rounds."""

    candidates: int = Field(ge=1, le=1024)
    count: int = Field(ge=1, le=10_000)


class ExternalConfig(_Strict):
    """The external budget: submissions allowed per round and over the whole study."""

    per_round: int = Field(ge=0, le=1024)
    total: int = Field(ge=0, le=1_000_000)
    # The target floors its display to this (the challenge: 2 decimals); modelled as noise.
    resolution: float = Field(default=0.01, ge=0, lt=1)


class HysteresisConfig(_Strict):
    """How a decoupled domain may return to proxy mode."""

    min_dwell: int = Field(default=8, ge=0, le=10_000)
    return_alpha: float = Field(default=0.05, gt=0, lt=1)


class PolicyConfig(_Strict):
    """Warm-up, detector level, dev penalty and acquisition settings."""

    warmup_rounds: int = Field(default=1, ge=1)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    # lambda: a decoupled domain contributes external - lambda * (dev - external) (acquisition).
    dev_penalty: float = Field(default=0.5, ge=0, le=100)
    # Knots of the validity test: quantiles of warm-up dev, and offsets from the warm-up
    # maximum in warm-up sds (searchlab.validity.DetectorSettings explains the defaults).
    knot_quantiles: tuple[float, ...] = ()
    knot_offsets: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5)
    hysteresis: HysteresisConfig = Field(default_factory=HysteresisConfig)
    # Per-domain alarm threshold on the e-value. None: n_domains / alpha (Ville + Bonferroni,
    # anytime-valid whatever the data, conservative). A number: a threshold calibrated by
    # simulation (`searchlab validity calibrate --threshold T`), valid as far as the streams are.
    threshold: float | None = Field(default=None, gt=1, le=1e12)
    switch: bool = True  # False: never leave proxy mode (the dev-only baseline)
    ucb_beta: float = Field(default=1.0, ge=0, le=100)

    @field_validator("knot_quantiles")
    @classmethod
    def _quantiles(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < q < 1 for q in value):
            raise ValueError("knot_quantiles must be numbers in (0, 1)")
        return value

    @field_validator("knot_offsets")
    @classmethod
    def _offsets(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not math.isfinite(c) or abs(c) > 100 for c in value):
            raise ValueError("knot_offsets must be finite numbers within [-100, 100]")
        return value

    @model_validator(mode="after")
    def _some_knot(self) -> PolicyConfig:
        if not self.knot_quantiles and not self.knot_offsets:
            raise ValueError("the validity test needs at least one knot_quantile or knot_offset")
        return self


class StudyConfig(_Strict):
    """A validated study file."""

    name: str
    seed: int = 0
    domains: list[DomainConfig]
    space: dict[str, ParamConfig]
    backend: BackendConfig
    rounds: RoundsConfig
    external: ExternalConfig
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"study name {value!r} must be 1-100 characters of letters, digits, '.', '_', '-'"
            )
        return value

    @field_validator("domains")
    @classmethod
    def _domains_ok(cls, value: list[DomainConfig]) -> list[DomainConfig]:
        if not value:
            raise ValueError("at least one domain is needed")
        names = [d.name for d in value]
        if len(set(names)) != len(names):
            raise ValueError(f"domain names must be distinct, got {names}")
        given = [d.weight for d in value if d.weight is not None]
        if given and len(given) != len(value):
            raise ValueError("give a weight for every domain or for none (equal weights)")
        if given and abs(sum(given) - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, they sum to {sum(given):.6g}")
        return value

    @field_validator("space")
    @classmethod
    def _space_ok(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("the search space is empty")
        for key in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", key):
                raise ValueError(f"parameter name {key!r} must be an identifier")
        return value

    @model_validator(mode="after")
    def _cross(self) -> StudyConfig:
        names = set(self.domain_names)
        for key, param in self.space.items():
            if isinstance(param, MixtureParam):
                unknown = [d for d in param.domains if d not in names]
                if unknown:
                    raise _FieldError(
                        f"space.{key}.domains",
                        f"unknown domain(s) {unknown}; known: {sorted(names)}",
                    )
        if self.external.per_round > self.rounds.candidates:
            raise _FieldError(
                "external.per_round",
                f"{self.external.per_round} exceeds rounds.candidates={self.rounds.candidates}",
            )
        if self.policy.warmup_rounds >= self.rounds.count and self.rounds.count > 1:
            raise _FieldError(
                "policy.warmup_rounds",
                f"{self.policy.warmup_rounds} leaves no model-based round of {self.rounds.count}",
            )
        return self

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.domains]

    @property
    def weights(self) -> dict[str, float]:
        """Objective weights per domain; equal when the file gives none."""
        if self.domains[0].weight is None:
            return {d.name: 1.0 / len(self.domains) for d in self.domains}
        return {d.name: float(d.weight) for d in self.domains}  # type: ignore[arg-type]

    @property
    def total_candidates(self) -> int:
        return self.rounds.candidates * self.rounds.count

    def with_overrides(self, *, name: str | None = None, seed: int | None = None) -> StudyConfig:
        """Returns a copy with the name and/or seed replaced (validated like the file)."""
        data = self.model_dump()
        if name is not None:
            data["name"] = name
        if seed is not None:
            data["seed"] = seed
        return validate_study(data, source="command line")


class _FieldError(ValueError):
    """A cross-field error that knows its own field path."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(message)


def _format_location(loc: tuple[Any, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _SPACE_TAGS and i >= 2 and loc[0] == "space":
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def validate_study(data: Any, *, source: str) -> StudyConfig:
    """Validates a parsed study document.

    Args:
        data: The parsed YAML (a mapping).
        source: Where it came from, for error messages (a file path).

    Returns:
        The validated configuration.

    Raises:
        StudyFileError: On the first problem, naming the field path.
    """
    if not isinstance(data, dict):
        raise StudyFileError(
            source, "", f"expected a mapping at top level, got {type(data).__name__}"
        )
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _FieldError):
            raise StudyFileError(source, ctx_error.path, str(ctx_error)) from None
        path = _format_location(tuple(err["loc"]))
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required field is missing"
        elif "input" in err and err["type"] not in ("value_error",):
            message += f" (got {err['input']!r})"
        raise StudyFileError(source, path, message) from None


def load_study_file(path: str | Path) -> StudyConfig:
    """Reads and validates a study file.

    Args:
        path: The YAML file.

    Raises:
        StudyFileError: If the file is missing, unreadable, not YAML, or invalid.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StudyFileError(source, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyFileError(source, "", f"cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)  # safe_load: a study file never constructs Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StudyFileError(source, "", f"malformed YAML: {where}{problem}") from None
    return validate_study(data, source=source)
