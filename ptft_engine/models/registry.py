"""build_model(cfg): typed config (or dict) -> model; parameter counts without allocating."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ptft_engine.models.config import (
    DecoderConfig,
    DualEncoderConfig,
    EncoderConfig,
    ViTConfig,
    Wav2Vec2Config,
    parse_model_config,
)


def _builders() -> dict[type, type]:
    from ptft_engine.models.decoder import CausalDecoder
    from ptft_engine.models.dual_encoder import DualEncoder
    from ptft_engine.models.encoder import TransformerEncoder
    from ptft_engine.models.vit import VisionTransformer
    from ptft_engine.models.wav2vec2 import Wav2Vec2

    return {EncoderConfig: TransformerEncoder, DecoderConfig: CausalDecoder, ViTConfig: VisionTransformer,
            DualEncoderConfig: DualEncoder, Wav2Vec2Config: Wav2Vec2}


def build_model(cfg: Any, device: torch.device | str | None = None) -> nn.Module:
    """Build the model for `cfg` (a ModelConfig or a dict with `arch`), initialised
    GPT-2/BERT style from torch's current seed. device="meta" allocates nothing."""
    cfg = parse_model_config(cfg)
    cls = _builders()[type(cfg)]
    if device is None:
        return cls(cfg)
    with torch.device(device):
        return cls(cfg)


def count_parameters(cfg: Any) -> int:
    """Exact parameter count (tied weights once), built on the meta device: no memory."""
    return build_model(cfg, device="meta").num_parameters()
