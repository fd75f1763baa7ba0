"""Models built from typed configs; every attention goes through ptft_engine.ops.attention."""
from ptft_engine.models.config import (
    ConfigError,
    DecoderConfig,
    DualEncoderConfig,
    EncoderConfig,
    ModelConfig,
    ViTConfig,
    Wav2Vec2Config,
    format_validation_error,
    load_model_config,
    parse_model_config,
)
from ptft_engine.models.registry import build_model, count_parameters

__all__ = [
    "ConfigError", "DecoderConfig", "DualEncoderConfig", "EncoderConfig", "ModelConfig", "ViTConfig", "Wav2Vec2Config",
    "build_model", "count_parameters", "format_validation_error", "load_model_config", "parse_model_config",
]
