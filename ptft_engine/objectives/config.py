"""Typed objective configs: a union on `name` (mlm | clm | simclr | clip), extra keys forbidden."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ptft_engine.models.config import ConfigError, format_validation_error


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MLMObjectiveConfig(_Base):
    """Cross-entropy over the tokens the data pipeline selected (labels != -100)."""

    name: Literal["mlm"] = "mlm"


class CLMObjectiveConfig(_Base):
    """Next-token cross-entropy; labels are shifted here, never across packed documents."""

    name: Literal["clm"] = "clm"


class SimCLRObjectiveConfig(_Base):
    """ViT features -> projection MLP -> NT-Xent over the two views."""

    name: Literal["simclr"] = "simclr"
    temperature: float = Field(0.1, gt=0)
    projection_dim: int = Field(128, gt=0)
    projection_hidden_dim: Optional[int] = Field(None, gt=0, description="default: the encoder's hidden size")
    gather: bool = Field(False, description="negatives from every rank (torch.distributed's default group)")
    chunk_size: Optional[int] = Field(None, gt=0, description="rows per block of the fused contrastive kernel")


class CLIPObjectiveConfig(_Base):
    """Symmetric InfoNCE between image and text embeddings with the model's learnable scale."""

    name: Literal["clip"] = "clip"
    gather: bool = Field(False, description="negatives from every rank (torch.distributed's default group)")
    chunk_size: Optional[int] = Field(None, gt=0, description="rows per block of the fused contrastive kernel")


ObjectiveConfig = Annotated[
    Union[MLMObjectiveConfig, CLMObjectiveConfig, SimCLRObjectiveConfig, CLIPObjectiveConfig],
    Field(discriminator="name"),
]
NAMES = ("mlm", "clm", "simclr", "clip")
# the model arch each objective trains
ARCH_FOR = {"mlm": "encoder", "clm": "decoder", "simclr": "vit", "clip": "dual_encoder"}
_adapter = TypeAdapter(ObjectiveConfig)


def parse_objective_config(data: Any, prefix: str = "objective"):
    if isinstance(data, (MLMObjectiveConfig, CLMObjectiveConfig, SimCLRObjectiveConfig, CLIPObjectiveConfig)):
        return data
    if isinstance(data, str):  # shorthand: objective: mlm
        data = {"name": data}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping with name: one of {', '.join(NAMES)}, got {type(data).__name__}")
    if "name" not in data:
        raise ConfigError(f"{prefix}.name: missing; choose one of {', '.join(NAMES)}")
    if data["name"] not in NAMES:
        raise ConfigError(f"{prefix}.name: must be one of {', '.join(NAMES)}, got {data['name']!r}")
    try:
        return _adapter.validate_python(data)
    except ValidationError as exc:
        msg = format_validation_error(exc, prefix)
        raise ConfigError(msg.replace(f"{prefix}.{data['name']}.", f"{prefix}.")) from None
