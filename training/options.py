"""The options of the post-training back end (``backend.options`` of a study file), validated.

:func:`parse_options` checks them like the study file itself (strict pydantic models: an unknown
key, a wrong type or an impossible value is one :class:`~searchlab.errors.BackendError` naming its
field path, ``backend.options.generation.batch_size: ...``). The nested settings are the
dataclasses the training and evaluation modules already define (:class:`TinyBaseSpec`,
:class:`GenerationSettings`, :class:`VllmSettings`), validated field by field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    with_config,
)

from searchlab.config import first_error
from searchlab.errors import BackendError
from searchlab_evaluation.generate import GenerationSettings
from searchlab_evaluation.vllm_generator import VllmSettings
from searchlab_training.tiny_model import TinyBaseSpec

__all__ = ["DataFiles", "LeaderboardOptions", "PostTrainingOptions", "parse_options"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataFiles(_Strict):
    """Per split, one file per domain (JSON lines or CSV; see :mod:`searchlab_training.data`)."""

    train: dict[str, str]
    dev: dict[str, str]
    external: dict[str, str]


class LeaderboardOptions(_Strict):
    """The local leaderboard: the shown score's resolution and its own submission limit."""

    resolution: float | None = Field(default=None, gt=0, le=1)
    total: int | None = Field(default=None, ge=1)


def _strict_dataclass(cls: type) -> Any:
    """A validator of a settings dataclass that refuses unknown keys (pydantic otherwise drops
    them silently for a standard-library dataclass)."""
    return with_config(ConfigDict(extra="forbid"))(
        dataclasses.dataclass(frozen=True)(type(cls.__name__, (cls,), {}))
    )


# ``data`` is "puzzles" or the files: a string goes to the first, anything else to the second,
# so a mapping's error names its own field. The tags are left out of error paths.
_TAGS = frozenset({"<puzzles>", "<files>"})
_Data = Annotated[
    Annotated[Literal["puzzles"], Tag("<puzzles>")] | Annotated[DataFiles, Tag("<files>")],
    Discriminator(lambda v: "<puzzles>" if isinstance(v, str) else "<files>"),
]

_Tiny = _strict_dataclass(TinyBaseSpec)
_Generation = _strict_dataclass(GenerationSettings)
_Vllm = _strict_dataclass(VllmSettings)


class PostTrainingOptions(_Strict):
    """``backend.options`` of the post-training back end (``PostTrainingBackend`` has each)."""

    model: str = "tiny"
    tiny: _Tiny = Field(default_factory=_Tiny)
    cache_dir: str = ".searchlab-cache"
    data: _Data = "puzzles"
    examples: int = Field(default=512, ge=1)
    dev_items: int = Field(default=64, ge=1)
    external_items: int = Field(default=128, ge=2)
    data_seed: int = 0
    template_domains: list[str] | None = None
    defaults: dict[str, Any] = Field(default_factory=dict)
    evaluator: Literal["transformers", "vllm"] = "transformers"
    vllm: _Vllm = Field(default_factory=_Vllm)
    generation: _Generation = Field(default_factory=_Generation)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: str = "auto"
    leaderboard: LeaderboardOptions = Field(default_factory=LeaderboardOptions)

    @property
    def tiny_spec(self) -> TinyBaseSpec:
        return TinyBaseSpec(**dataclasses.asdict(self.tiny))

    @property
    def generation_settings(self) -> GenerationSettings:
        # The engine field follows the evaluator, whatever the file says.
        return GenerationSettings(
            **{**dataclasses.asdict(self.generation), "engine": self.evaluator}
        )

    @property
    def vllm_settings(self) -> VllmSettings:
        return VllmSettings(**dataclasses.asdict(self.vllm))


_ADAPTER = TypeAdapter(PostTrainingOptions)


def parse_options(options: Mapping[str, Any]) -> PostTrainingOptions:
    """Validates ``backend.options``.

    Raises:
        BackendError: On the first problem, ``backend.options.<path>: <what>``.
    """
    try:
        return _ADAPTER.validate_python(dict(options))
    except ValidationError as exc:
        path, message = first_error(exc, hidden=_TAGS)
        raise BackendError(f"backend.options.{path}: {message}" if path else message) from None
