"""Typed run config (pydantic) and its YAML loader with dotted `key=value` overrides."""
from ptft_engine.config.loader import ConfigError, apply_overrides, load_config, read_yaml, validate
from ptft_engine.config.schema import (
    BadStepSection,
    CheckpointSection,
    DeepSpeedSection,
    RunConfig,
    RunSection,
    SyntheticDataConfig,
    TrainSection,
)


def load_run_config(path, overrides=None) -> RunConfig:
    """`ptft pretrain`'s config: YAML file + overrides → RunConfig (ConfigError on problems)."""
    return load_config(RunConfig, path, overrides)


__all__ = [
    "BadStepSection", "CheckpointSection", "ConfigError", "DeepSpeedSection", "RunConfig", "RunSection",
    "SyntheticDataConfig", "TrainSection", "apply_overrides", "load_config", "load_run_config", "read_yaml",
    "validate",
]
