"""Objectives: batch -> loss. `build_objective(model_cfg, objective_cfg)` returns a module
owning the model (`.model`, for export) whose forward(batch) gives {"loss", counts, metrics}."""
from __future__ import annotations

from typing import Any

from ptft_engine.models.config import ConfigError, parse_model_config
from ptft_engine.objectives.config import (
    ARCH_FOR,
    CLIPObjectiveConfig,
    CLMObjectiveConfig,
    MLMObjectiveConfig,
    ObjectiveConfig,
    SimCLRObjectiveConfig,
    parse_objective_config,
)

__all__ = [
    "CLIPObjectiveConfig", "CLMObjectiveConfig", "MLMObjectiveConfig", "ObjectiveConfig", "SimCLRObjectiveConfig",
    "build_objective", "parse_objective_config",
]


def build_objective(model_cfg: Any, objective_cfg: Any, model=None):
    """Build the task for `objective_cfg` around a model built from `model_cfg` (or the
    given `model`, e.g. one made under deepspeed.zero.Init or imported from HF)."""
    from ptft_engine.models import build_model
    from ptft_engine.objectives.clip import CLIPObjective
    from ptft_engine.objectives.clm import CausalLMObjective
    from ptft_engine.objectives.mlm import MaskedLMObjective
    from ptft_engine.objectives.simclr import SimCLRObjective

    mcfg = parse_model_config(model_cfg)
    ocfg = parse_objective_config(objective_cfg)
    if ARCH_FOR[ocfg.name] != mcfg.arch:
        raise ConfigError(f"objective.name: {ocfg.name} trains a model with arch: {ARCH_FOR[ocfg.name]}, "
                          f"but model.arch is {mcfg.arch}")
    if model is None:
        model = build_model(mcfg)
    if ocfg.name == "mlm":
        return MaskedLMObjective(model)
    if ocfg.name == "clm":
        return CausalLMObjective(model)
    if ocfg.name == "simclr":
        return SimCLRObjective(model, ocfg)
    return CLIPObjective(model, ocfg)
