"""One declared spec per objective (as torchtitan's ModelSpec): everything the rest of the
engine needs to know about it, looked up by its config's `name`.

Each objectives/<name>.py declares `SPEC = register(ObjectiveSpec(...))` next to its loss
module. Config validation, the data loader, synthetic batches, setup and the trainer's
metrics read the spec; none of them branches on an objective's name.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, SerializeAsAny, TypeAdapter, ValidationError
from torch import nn

from ptft_engine.data.needs import DataNeeds
from ptft_engine.errors import ConfigError, format_validation_error
from ptft_engine.models.config import ARCHS


class ObjectiveConfigBase(BaseModel):
    """Every objective's config: `name` (a Literal in each subclass) picks the spec;
    unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")

    name: str

    def check_data(self, data: Any) -> None:
        """Raise ValueError (worded "objective.<key>: why") if this objective cannot train on
        the run's data section (shards or synthetic); RunConfig calls it. Default: any."""


@dataclass(frozen=True)
class ObjectiveSpec:
    """name: the config's `name`. config: its config class. arch: the model arch it trains
    (models.config.ARCHS). data: what it needs from the data stream. synthetic_batch(cfg, g):
    a learnable batch from a SyntheticDataConfig and a seeded torch.Generator. unit: what
    its throughput counts ("tokens" | "samples"; forward(batch) reports `num_<unit>`).
    flops_per_unit(objective, seq_len): training FLOPs per unit of a built objective
    (seq_len: the data's, None if it has none). build(model, cfg): the objective module
    around a model of `arch`."""

    name: str
    config: type[ObjectiveConfigBase]
    arch: str
    data: DataNeeds
    synthetic_batch: Callable[[Any, torch.Generator], dict]
    unit: Literal["tokens", "samples"]
    flops_per_unit: Callable[[nn.Module, int | None], float]
    build: Callable[[nn.Module, ObjectiveConfigBase], nn.Module]

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"objective {self.name!r}: arch {self.arch!r} is not one of {', '.join(ARCHS)}")
        if self.unit not in ("tokens", "samples"):
            raise ValueError(f"objective {self.name!r}: unit must be 'tokens' or 'samples', got {self.unit!r}")
        if self.config.model_fields["name"].default != self.name:
            raise ValueError(f"objective {self.name!r}: {self.config.__name__}.name defaults to "
                             f"{self.config.model_fields['name'].default!r}, not {self.name!r}")


_SPECS: dict[str, ObjectiveSpec] = {}
_adapters: dict[tuple[type, ...], TypeAdapter] = {}  # per set of registered config classes


def register(spec: ObjectiveSpec) -> ObjectiveSpec:
    if spec.name in _SPECS and _SPECS[spec.name] is not spec:
        raise ValueError(f"objective {spec.name!r} is already registered")
    _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _SPECS.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(_SPECS)


def get_spec(name: str, prefix: str = "objective") -> ObjectiveSpec:
    if name not in _SPECS:
        raise ConfigError(f"{prefix}.name: must be one of {', '.join(_SPECS)}, got {name!r}")
    return _SPECS[name]


def spec_of(cfg: ObjectiveConfigBase) -> ObjectiveSpec:
    return get_spec(cfg.name)


def config_adapter() -> TypeAdapter:
    """The discriminated union (on `name`) of every registered objective's config."""
    configs = tuple(spec.config for spec in _SPECS.values())
    if configs not in _adapters:
        # Union[tuple] spreads a runtime tuple of classes; ruff's UP007 fix would drop the Union
        union = configs[0] if len(configs) == 1 else Annotated[Union[configs], Field(discriminator="name")]  # noqa: UP007
        _adapters[configs] = TypeAdapter(union)
    return _adapters[configs]


def parse_objective_config(data: Any, prefix: str = "objective") -> ObjectiveConfigBase:
    """dict (or `name` alone, or a built config) -> typed config; ConfigError with one line otherwise."""
    if isinstance(data, ObjectiveConfigBase):
        return data
    if isinstance(data, str):  # shorthand: objective: mlm
        data = {"name": data}
    valid = ", ".join(_SPECS)
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping with name: one of {valid}, got {type(data).__name__}")
    if "name" not in data:
        raise ConfigError(f"{prefix}.name: missing; choose one of {valid}")
    get_spec(data["name"], prefix)
    try:
        return config_adapter().validate_python(data)
    except ValidationError as exc:
        msg = format_validation_error(exc, prefix)
        raise ConfigError(msg.replace(f"{prefix}.{data['name']}.", f"{prefix}.")) from None


def _validate_in_schema(data: Any) -> ObjectiveConfigBase:
    # inside RunConfig: pydantic's own errors pass through, so the config loader names the key
    if isinstance(data, ObjectiveConfigBase):
        return data
    return config_adapter().validate_python(data)


# RunConfig's `objective:` field: validated against the objectives registered when the
# config is read (so one registered later, e.g. in a test, is accepted), dumped with its fields.
ObjectiveConfig = Annotated[SerializeAsAny[ObjectiveConfigBase], PlainValidator(_validate_in_schema)]
