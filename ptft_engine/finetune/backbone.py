"""The backbone every fine-tuning task starts from, text, image and audio alike: an export or
a transformers directory read by load_export (sha256 checked, safetensors only, never the
network), or a fresh model from model.config."""
from __future__ import annotations

from typing import Any

import torch

from ptft_engine.finetune.config import FinetuneConfig


def load_backbone(cfg: FinetuneConfig) -> tuple[torch.nn.Module, str | None, dict[str, Any]]:
    """(engine model, tokenizer path or None, source info)."""
    if cfg.model.pretrained is not None:
        from ptft_engine.export import load_export

        loaded = load_export(cfg.model.pretrained)
        tok = cfg.data.tokenizer or (str(loaded.path / "tokenizer.json")
                                     if (loaded.path / "tokenizer.json").is_file() else None)
        manifest = loaded.manifest or {}
        return loaded.model, tok, {"pretrained": str(loaded.path), "layout": loaded.layout,
                                   "config_sha256": manifest.get("config_sha256")}
    from ptft_engine.models import build_model

    return build_model(cfg.model.config), cfg.data.tokenizer, {"pretrained": None, "from_scratch": True}
