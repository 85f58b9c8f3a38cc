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

A study file may come from someone else, so its size is bounded where the engine would otherwise
hang, overflow or produce NaN (each limit is a module constant):

- the file is at most ``MAX_FILE_BYTES`` (1 MiB) and nested at most ``MAX_DEPTH`` (32) levels;
  YAML anchors, aliases (``&a``/``*a``: a 1 KB alias bomb expands to gigabytes) and merge keys
  are refused, and so is a key given twice in one mapping (YAML would silently keep the last);
- names (study, domains) are 1-100 letters, digits, ``.``, ``_``, ``-``: no control characters,
  no trailing newline; the description is at most 10,000 characters;
- at most ``MAX_DOMAINS`` (32) domains: each domain costs one GP fit and one validity test per
  round; at most ``MAX_PARAMS`` (64) parameters;
- ``int`` parameters span at most ``MAX_INT_SPAN`` (10,000) values (log scale included: every
  integer is an allowed value of the mixed optimiser, and an unbounded range has no grid), with
  bounds within ±1e9; use a ``float`` with ``log: true`` and round in the back end for wider
  ranges;
- ``float`` bounds are finite and within ±``MAX_FLOAT_BOUND`` (1e6): the encoding divides by
  ``high - low``, which overflows to ``inf`` for ±1e308 and made every proposal NaN;
- at most ``MAX_CHOICES`` (1,000) categorical choices, no two of which compare equal or print
  alike (``0``/``false``, ``1``/``1.0``/``"1"``/``true``): storage, exports and the choice index
  could not tell them apart;
- ``seed`` is in 0..2**32-1 (NumPy's and torch's seed range, with room for derived seeds);
- ``rounds.candidates`` is at least 2: the validity test fixes its knots from the spread of at
  least two warm-up candidates.
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
    ValidationInfo,
    field_validator,
    model_validator,
)

from searchlab.errors import StudyFileError
from searchlab.objective import FloorTask, ObjectiveType
from searchlab.surrogate import SurrogateForm
from searchlab.validity import MIN_PAIRS, DetectorSettings, HingeForm

# Matched with fullmatch: "$" alone would accept a trailing newline ("small\n").
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# Pydantic puts the discriminator value into error locations; drop it from field paths.
_SPACE_TAGS = {"float", "int", "categorical", "mixture"}

MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_DOMAINS = 32
MAX_PARAMS = 64
MAX_INT_SPAN = 10_000
MAX_INT_BOUND = 10**9
MAX_FLOAT_BOUND = 1e6
MAX_CHOICES = 1_000
MAX_SEED = 2**32 - 1
MAX_DESCRIPTION = 10_000
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # \t and \n are text


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


def _within(value: float, limit: float, what: str) -> None:
    if abs(value) > limit:
        raise ValueError(f"{what}={value!r:.40} is outside [-{limit:g}, {limit:g}]")


def choice_key(value: Any) -> str:
    """How a categorical choice prints in storage, exports and the dashboard.

    Two choices with one key cannot be told apart there (and ``0 == False``, ``1 == 1.0`` also
    collide in ``list.index``): ``1``, ``1.0``, ``"1"`` and ``" 1 "`` share the key ``1``;
    ``true`` and ``"True"`` share ``true``.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return text.lower()
    try:
        number = float(text)
    except ValueError:
        return str(value)
    return choice_key(number) if math.isfinite(number) else str(value)


def _check_text(value: str, what: str, limit: int, *, lines: bool = False) -> None:
    """At most ``limit`` characters, no control characters (tabs and newlines if ``lines``)."""
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters long, at most {limit} are allowed")
    if (_CONTROL_BUT_LINES if lines else _CONTROL).search(value):
        raise ValueError(f"{what} contains control characters")


class DomainConfig(_Strict):
    """A scored domain of the study and its weight in the objective."""

    name: str
    weight: float | None = None

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                f"domain name {value[:120]!r} must be 1-100 characters of letters, digits, "
                "'.', '_', '-'"
            )
        return value

    @field_validator("weight")
    @classmethod
    def _weight_ok(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or value < 0):
            raise ValueError(f"weight must be a finite number >= 0, got {value}")
        return value


class FloatParam(_Strict):
    """A real-valued knob, optionally searched on a log scale.

    Bounds are finite and within ±``MAX_FLOAT_BOUND`` (1e6), ``low < high``, and ``low > 0`` on
    a log scale: the encoding divides by ``high - low``, which is ``inf`` for ±1e308.
    """

    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> FloatParam:
        for what, value in (("low", self.low), ("high", self.high)):
            _within(_finite(value, what), MAX_FLOAT_BOUND, what)
        _check_range(self.low, self.high, self.log)
        return self


class IntParam(_Strict):
    """An integer knob (epochs, steps).

    ``high - low`` is at most ``MAX_INT_SPAN`` (10,000), on a log scale too: every integer in
    the range is an allowed value of the mixed optimiser (:meth:`SearchSpace.discrete_dims`),
    so a range of 1e12 would never finish listing them. Bounds are within ±1e9 (exact as
    floats). A wider knob is a ``float`` with ``log: true``, rounded by the back end.
    """

    type: Literal["int"]
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> IntParam:
        for what, value in (("low", self.low), ("high", self.high)):
            _within(value, MAX_INT_BOUND, what)
        _check_range(self.low, self.high, self.log)
        if self.high - self.low > MAX_INT_SPAN:
            raise ValueError(
                f"high - low = {self.high - self.low} is over {MAX_INT_SPAN} values; use a "
                "float with log: true for a wider range"
            )
        return self


class CategoricalParam(_Strict):
    """A choice among listed values (strings, numbers or booleans).

    2 to ``MAX_CHOICES`` (1,000) choices, no two of which compare equal or print alike
    (:func:`choice_key`), and booleans not mixed with numbers (``true == 1``).
    """

    type: Literal["categorical"]
    choices: list[str | int | float | bool]

    @field_validator("choices")
    @classmethod
    def _choices(cls, value: list[Any]) -> list[Any]:
        if not 2 <= len(value) <= MAX_CHOICES:
            raise ValueError(f"needs 2 to {MAX_CHOICES} choices, got {len(value)}")
        for v in value:
            if isinstance(v, float):
                _finite(v, "a choice")
            elif isinstance(v, str):
                _check_text(v, "a choice", 1000)
        kinds = {type(v) for v in value}
        if bool in kinds and kinds & {int, float}:
            raise ValueError("choices mix booleans with numbers (true == 1, false == 0)")
        seen: dict[str, Any] = {}
        for v in value:
            key = choice_key(v)
            if key in seen:
                raise ValueError(
                    f"choices {seen[key]!r} and {v!r} collide: they compare equal or print "
                    "alike; list each value once"
                )
            seen[key] = v
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
    """A back end: a built-in name (``simulated``), an installed entry-point name, or
    ``module:Class`` (imported only with ``--trust-backend``: :mod:`searchlab.backends`)."""

    name: str = Field(min_length=1, max_length=200)
    options: dict[str, Any] = Field(default_factory=dict)
    # Seconds one candidate's train + evaluate may take before it is failed (None: no limit).
    timeout_s: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        _check_text(value, "the back-end name", 200)
        return value


class RoundsConfig(_Strict):
    """A round trains ``candidates`` recipes as one batch; a study runs ``count`` rounds.

    At least 2 candidates: the validity test fixes its knots from the spread (a standard
    deviation) of the warm-up candidates' dev, which needs two of them.
    """

    candidates: int = Field(ge=2, le=1024)
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

    warmup_rounds: int = Field(default=1, ge=1, le=10_000)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    # lambda: a decoupled domain contributes external - lambda * (dev - external) (acquisition).
    dev_penalty: float = Field(default=0.5, ge=0, le=100)
    # Knots of the validity test: quantiles of warm-up dev, and offsets from the warm-up
    # maximum in warm-up sds (searchlab.validity.DetectorSettings explains the defaults).
    knot_quantiles: tuple[float, ...] = ()
    knot_offsets: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5)
    # The regression per knot and the prior scale g of its mixture e-value (the slope's prior
    # variance in residual variances per squared warm-up dev sd); searchlab.validity explains.
    hinge_form: HingeForm = HingeForm.LINEAR
    prior_scale: float = Field(default=8.0, gt=0, le=1e4)
    hysteresis: HysteresisConfig = Field(default_factory=HysteresisConfig)
    # Per-domain alarm threshold on the e-value. None: n_domains / alpha (Ville + Bonferroni,
    # anytime-valid whatever the data, conservative). A number: a threshold calibrated by
    # simulation, best end to end on the engine's own null studies (`searchlab validity corpus`,
    # `validity replay --threshold T`), valid as far as those studies are.
    threshold: float | None = Field(default=None, gt=1, le=1e12)
    # kappa: a domain's proxy is valid while external rises with dev, in the dev-record region,
    # at no less than this fraction of the rate just below it (plateau and fall are both below).
    # (0 only in a stored study from before kappa: its test was "slope above >= 0"; see
    # stored_config.)
    tracking: float = Field(default=0.25, ge=0, lt=1)
    switch: bool = True  # False: never leave proxy mode (the dev-only baseline)
    # After a switch, one proposal and submission a round per decoupled domain that keeps the
    # domain's data share at its dev-record holder's (searchlab.policy, "Share probes").
    share_probes: bool = True
    # How each domain's GP couples external to dev (searchlab.surrogate): "icm" (one shared input
    # kernel) or "autoregressive" (external = rho * dev + its own GP).
    surrogate: SurrogateForm = SurrogateForm.ICM
    ucb_beta: float = Field(default=1.0, ge=0, le=100)

    @field_validator("tracking")
    @classmethod
    def _tracking(cls, value: float, info: ValidationInfo) -> float:
        if value == 0 and not (info.context or {}).get("stored"):
            raise ValueError("Input should be greater than 0")
        return value

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


class FloorConfig(_Strict):
    """A no-regression floor on one domain's score (searchlab.objective explains its use)."""

    domain: str
    task: FloorTask = FloorTask.EXTERNAL
    at_least: float | None = Field(default=None, ge=0, le=1)
    # The baseline candidate's measured score minus this (needs objective.baseline).
    below_baseline: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _one_rule(self) -> FloorConfig:
        if (self.at_least is None) == (self.below_baseline is None):
            raise ValueError("a floor takes exactly one of at_least and below_baseline")
        return self


class ObjectiveConfig(_Strict):
    """Weighted sum or Pareto front over domains, per-domain floors, and a baseline recipe."""

    type: ObjectiveType = ObjectiveType.WEIGHTED
    floors: list[FloorConfig] = Field(default_factory=list, max_length=MAX_DOMAINS * 2)
    # A recipe trained first and submitted in the first round: the reference of below_baseline.
    baseline: dict[str, Any] | None = None
    # One-sided level of the lower bound a recommended candidate must keep above every floor.
    confidence: float = Field(default=0.9, ge=0.5, lt=1)


class StudyConfig(_Strict):
    """A validated study file (the module docstring lists its limits)."""

    name: str
    # NumPy's seed range; derived seeds (seed * 100_003 + candidate) stay within torch's.
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    domains: list[DomainConfig]
    space: dict[str, ParamConfig]
    backend: BackendConfig
    rounds: RoundsConfig
    external: ExternalConfig
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                f"study name {value[:120]!r} must be 1-100 characters of letters, digits, '.', "
                "'_', '-'"
            )
        return value

    @field_validator("description")
    @classmethod
    def _description_ok(cls, value: str) -> str:
        _check_text(value, "the description", MAX_DESCRIPTION, lines=True)
        return value

    @field_validator("domains")
    @classmethod
    def _domains_ok(cls, value: list[DomainConfig]) -> list[DomainConfig]:
        if not value:
            raise ValueError("at least one domain is needed")
        if len(value) > MAX_DOMAINS:
            # Each domain costs one GP fit and one validity test per round.
            raise ValueError(f"at most {MAX_DOMAINS} domains are allowed, got {len(value)}")
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
        if len(value) > MAX_PARAMS:
            raise ValueError(f"at most {MAX_PARAMS} parameters are allowed, got {len(value)}")
        for key in value:
            if not _PARAM_NAME.fullmatch(key):
                raise ValueError(
                    f"parameter name {key[:80]!r} must be an identifier of at most 64 characters"
                )
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
        self._check_objective(names)
        if self.policy.warmup_rounds >= self.rounds.count and self.rounds.count > 1:
            raise _FieldError(
                "policy.warmup_rounds",
                f"{self.policy.warmup_rounds} leaves no model-based round of {self.rounds.count}",
            )
        return self

    def _check_objective(self, names: set[str]) -> None:
        objective = self.objective
        if objective.type == ObjectiveType.PARETO and len(names) < 2:
            raise _FieldError("objective.type", "pareto needs at least two domains")
        for i, floor in enumerate(objective.floors):
            if floor.domain not in names:
                raise _FieldError(
                    f"objective.floors[{i}].domain",
                    f"unknown domain {floor.domain[:100]!r}; known: {sorted(names)}",
                )
            if floor.below_baseline is not None and objective.baseline is None:
                raise _FieldError(
                    f"objective.floors[{i}].below_baseline",
                    "needs objective.baseline, the recipe it is measured against",
                )
        if objective.baseline is not None and self.external.per_round < 1:
            raise _FieldError(
                "objective.baseline",
                "the baseline is submitted in the first round: external.per_round must be >= 1",
            )

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

    def detector_settings(self) -> DetectorSettings:
        """The validity test's settings this study runs with (the one mapping from the file)."""
        policy = self.policy
        return DetectorSettings(
            alpha=policy.alpha,
            n_domains=len(self.domains),
            knot_quantiles=tuple(policy.knot_quantiles),
            knot_offsets=tuple(policy.knot_offsets),
            threshold_override=policy.threshold,
            return_alpha=policy.hysteresis.return_alpha,
            min_dwell=policy.hysteresis.min_dwell,
            tracking=policy.tracking,
            hinge_form=policy.hinge_form,
            prior_scale=policy.prior_scale,
        )

    def with_overrides(self, *, name: str | None = None, seed: int | None = None) -> StudyConfig:
        """Returns a copy with the name and/or seed replaced (validated like the file)."""
        data = self.model_dump()
        if name is not None:
            data["name"] = name
        if seed is not None:
            data["seed"] = seed
        return validate_study(data, source="command line")


# Policy keys added after studies were first stored, with the value a study stored without the
# key ran with (not today's default): a resumed or re-analysed old study keeps its test.
_STORED_BEFORE = {
    "tracking": 0.0,  # before kappa: the test of "slope above the knot >= 0"
    "hinge_form": HingeForm.QUAD.value,  # the quadratic hinge, the default before the key
    "share_probes": False,  # after a switch, the acquisition's batch alone
}


def stored_config(data: Any) -> StudyConfig:
    """A stored study's config (``StudyRecord.config_data``), validated.

    Raises:
        StudyFileError: If it is not a study config this searchlab reads (one line, naming the
            field).
    """
    data = dict(data)
    data["policy"] = {**_STORED_BEFORE, **(data.get("policy") or {})}
    try:
        return StudyConfig.model_validate(data, context={"stored": True})
    except ValidationError as exc:
        raise StudyFileError("the study's stored config", *first_error(exc)) from None


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


def _short_repr(value: Any, limit: int = 120) -> str:
    """``repr`` cut to ``limit`` characters: a hostile value must not flood the error line."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        config = StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise StudyFileError(source, *first_error(exc)) from None
    _check_testable(config, source)
    return _checked_baseline(config, source)


def first_error(exc: ValidationError, *, hidden: frozenset[str] = frozenset()) -> tuple[str, str]:
    """The first problem of a pydantic validation as ``(field path, message)``: the path
    dotted with ``[i]`` for list items (``space.lr.low``, ``domains[2].name``), the message in
    words, with the offending value cut short. Parts of the path in ``hidden`` (the tags of a
    tagged union) are left out."""
    err = exc.errors()[0]
    ctx_error = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_error, _FieldError):
        return ctx_error.path, str(ctx_error)
    path = _format_location(tuple(p for p in err["loc"] if p not in hidden))
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        message = "unknown key"
    elif err["type"] == "missing":
        message = "required field is missing"
    elif "input" in err and err["type"] not in ("value_error",):
        message += f" (got {_short_repr(err['input'])})"
    return path, message


def _checked_baseline(config: StudyConfig, source: str) -> StudyConfig:
    """The config with its baseline recipe checked against the space (ints as ``int``)."""
    baseline = config.objective.baseline
    if baseline is None:
        return config
    from searchlab.errors import RecipeError
    from searchlab.space import SearchSpace  # built on this module's parameter types

    try:
        checked = SearchSpace(config.space).check(baseline)
    except RecipeError as exc:
        raise StudyFileError(source, "objective.baseline", str(exc)) from None
    objective = config.objective.model_copy(update={"baseline": checked})
    return config.model_copy(update={"objective": objective})


def _check_testable(config: StudyConfig, source: str) -> None:
    """Refuses a new study whose switch can never happen: too few submissions for the test.

    Checked here, for new study files, and not in :class:`StudyConfig`: a study stored before
    the rule existed must still load (status, resume, analyze).
    """
    reachable = min(config.external.total, config.external.per_round * config.rounds.count)
    if config.policy.switch and reachable < MIN_PAIRS:
        raise StudyFileError(
            source,
            "external.total",
            f"{reachable} submissions can be made (total {config.external.total}, per_round "
            f"{config.external.per_round} x {config.rounds.count} rounds); the validity test "
            f"needs at least {MIN_PAIRS}: raise them, or set policy.switch: false for a "
            "dev-only search",
        )


class _RefusedYAML(yaml.YAMLError):
    """YAML that parses but a study file may not use (an alias, a duplicate key, deep nesting)."""

    def __init__(self, message: str, mark: Any, path: str = "") -> None:
        self.message = message
        self.mark = mark
        self.path = path
        super().__init__(message)


class _StudyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without anchors, aliases, merge keys or duplicate keys.

    The safe loader constructs no Python objects, but it still expands aliases (a 1.2 KB
    "billion laughs" file becomes gigabytes once validated) and keeps the last of two equal
    keys silently. Anchors are refused when composed, before any alias could be expanded.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._paths: dict[int, str] = {}  # id(mapping node) -> its field path, for errors

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _RefusedYAML(
                f"YAML aliases (*{event.anchor}) are not allowed in a study file", event.start_mark
            )
        if getattr(event, "anchor", None) is not None:
            raise _RefusedYAML(
                f"YAML anchors (&{event.anchor}) are not allowed in a study file", event.start_mark
            )
        # The composer recurses once per level: bound it before Python's recursion limit.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _RefusedYAML(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        # Record each mapping's field path, so that construct_mapping can name it.
        stack: list[tuple[Any, str]] = [(node, "")]
        while stack:
            current, path = stack.pop()
            if isinstance(current, yaml.MappingNode):
                self._paths[id(current)] = path
                for key, value in current.value:
                    name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
                    stack.append((value, f"{path}.{name}" if path else name))
            elif isinstance(current, yaml.SequenceNode):
                stack.extend((item, f"{path}[{i}]") for i, item in enumerate(current.value))
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            path = self._paths.get(id(node), "")
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise _RefusedYAML(
                        "YAML merge keys (<<) are not allowed in a study file",
                        key_node.start_mark,
                        path,
                    )
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the safe loader reports it
                    continue
                if first is not None:
                    field = f"{path}.{key}" if path else str(key)
                    raise _RefusedYAML(
                        f"duplicate key {key!r} (first given on line {first})",
                        key_node.start_mark,
                        field,
                    )
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str) -> Any:
    """Parses a study file's text with :class:`_StudyLoader`; errors name line and column."""
    loader = _StudyLoader(text)
    try:
        return loader.get_single_data()
    except _RefusedYAML as exc:
        where = f"line {exc.mark.line + 1}, column {exc.mark.column + 1}: " if exc.mark else ""
        raise StudyFileError(source, exc.path, f"{where}{exc.message}") from None
    except ValueError as exc:  # an integer past Python's digit limit, say
        raise StudyFileError(source, "", f"malformed YAML: {exc}") from None
    finally:
        loader.dispose()


def load_study_file(path: str | Path) -> StudyConfig:
    """Reads and validates a study file.

    Args:
        path: The YAML file (at most ``MAX_FILE_BYTES``).

    Raises:
        StudyFileError: If the file is missing, unreadable, too large, not YAML, uses YAML a
            study file may not (anchors, aliases, merge or duplicate keys), or is invalid.
    """
    source = str(path)
    try:
        with Path(path).open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)  # read no more than the limit, whatever the file
        if len(raw) > MAX_FILE_BYTES:
            raise StudyFileError(source, "", f"larger than {MAX_FILE_BYTES} bytes")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise StudyFileError(source, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyFileError(source, "", f"cannot read: {exc}") from None
    try:
        # A safe loader: a study file never constructs Python objects.
        data = _parse_yaml(text, source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StudyFileError(source, "", f"malformed YAML: {where}{problem}") from None
    return validate_study(data, source=source)
