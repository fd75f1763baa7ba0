"""Objectives: batch -> loss. Each objectives/<name>.py declares its config class and its
`SPEC` (objectives.spec.ObjectiveSpec) next to its loss module; importing this package
registers the built-in ones. `build_objective(model_cfg, objective_cfg)` returns a module
owning the model (`.model`, for export) whose forward(batch) gives {"loss", counts, metrics}."""
from __future__ import annotations

from typing import Any

from ptft_engine.errors import ConfigError
from ptft_engine.models.config import parse_model_config
from ptft_engine.objectives.spec import (
    ObjectiveConfig,
    ObjectiveConfigBase,
    ObjectiveSpec,
    get_spec,
    names,
    parse_objective_config,
    register,
    spec_of,
    unregister,
)

# Importing registers; this order is the one config errors list them in.
# isort: off
from ptft_engine.objectives.mlm import MLMObjectiveConfig
from ptft_engine.objectives.clm import CLMObjectiveConfig
from ptft_engine.objectives.simclr import SimCLRObjectiveConfig
from ptft_engine.objectives.clip import CLIPObjectiveConfig
from ptft_engine.objectives.wav2vec2 import Wav2Vec2ObjectiveConfig
from ptft_engine.objectives.hubert import HubertObjectiveConfig
# isort: on

__all__ = [
    "CLIPObjectiveConfig", "CLMObjectiveConfig", "HubertObjectiveConfig", "MLMObjectiveConfig", "ObjectiveConfig",
    "ObjectiveConfigBase", "ObjectiveSpec", "SimCLRObjectiveConfig", "build_objective", "get_spec", "names",
    "parse_objective_config", "register", "spec_of", "unregister", "Wav2Vec2ObjectiveConfig",
]


def build_objective(model_cfg: Any, objective_cfg: Any, model=None):
    """Build the task for `objective_cfg` around a model built from `model_cfg` (or the
    given `model`, e.g. one made under deepspeed.zero.Init or imported from HF)."""
    from ptft_engine.models import build_model

    mcfg = parse_model_config(model_cfg)
    ocfg = parse_objective_config(objective_cfg)
    spec = spec_of(ocfg)
    if spec.arch != mcfg.arch:
        raise ConfigError(f"objective.name: {ocfg.name} trains a model with arch: {spec.arch}, "
                          f"but model.arch is {mcfg.arch}")
    if model is None:
        model = build_model(mcfg)
    return spec.build(model, ocfg)
