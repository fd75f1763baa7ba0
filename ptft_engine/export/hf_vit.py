"""ViT <-> transformers ViTModel (a pure renaming; the patch projection is a Conv2d in both).

ViTModel has no notion of mean pooling, so a mean-pooled engine ViT exports natively only.
ViTModel always builds a pooler, tanh(dense(h[CLS])): the export writes an identity dense
with pooler_act="linear" (writer.py), so pooler_output is the engine's [CLS] feature rather
than random. Pooler and classifier weights of ViTModel / ViTForImageClassification are not
part of the engine's encoder and are skipped on import (a fine-tuned head: task_heads.py).
"""
from __future__ import annotations

from typing import Any

from ptft_engine.export.errors import ExportError
from ptft_engine.export.layout import Layout, expect

_LAYER = "encoder.layer.{i}"


class ViTLayout(Layout):
    name = "hf-vit"
    rules = [
        ("embeddings.patch_proj", "embeddings.patch_embeddings.projection"),
        ("embeddings.cls_token", "embeddings.cls_token"),
        ("embeddings.position_embeddings", "embeddings.position_embeddings"),
        ("layers.{i}.attn_norm", f"{_LAYER}.layernorm_before"),
        ("layers.{i}.attn.q_proj", f"{_LAYER}.attention.attention.query"),
        ("layers.{i}.attn.k_proj", f"{_LAYER}.attention.attention.key"),
        ("layers.{i}.attn.v_proj", f"{_LAYER}.attention.attention.value"),
        ("layers.{i}.attn.o_proj", f"{_LAYER}.attention.output.dense"),
        ("layers.{i}.mlp_norm", f"{_LAYER}.layernorm_after"),
        ("layers.{i}.mlp.fc_in", f"{_LAYER}.intermediate.dense"),
        ("layers.{i}.mlp.fc_out", f"{_LAYER}.output.dense"),
        ("final_norm", "layernorm"),
    ]
    ignore = (r"^pooler\.", r"^classifier\.")

    def normalise_import_name(self, name: str) -> str:
        return name.removeprefix("vit.")  # ViTForImageClassification nests the encoder under "vit."

    def target_config(self, cfg) -> dict[str, Any]:
        if cfg.pooling != "cls":
            raise ExportError(f"model.pooling={cfg.pooling!r} has no ViTModel equivalent; export with --format native")
        return {
            "architectures": ["ViTModel"],
            "model_type": "vit",
            "image_size": cfg.image_size,
            "patch_size": cfg.patch_size,
            "num_channels": cfg.num_channels,
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "intermediate_size": cfg.intermediate_size,
            "hidden_act": cfg.hidden_act,
            "hidden_dropout_prob": cfg.hidden_dropout_prob,
            "attention_probs_dropout_prob": 0.0,
            "layer_norm_eps": cfg.layer_norm_eps,
            "initializer_range": cfg.initializer_range,
            "qkv_bias": True,
        }

    def engine_config(self, hf: dict[str, Any], source: str = "config.json"):
        from ptft_engine.models import ViTConfig

        expect(hf, "qkv_bias", [True], source)
        keys = ["image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "hidden_act", "hidden_dropout_prob", "layer_norm_eps", "initializer_range"]
        return ViTConfig(**{k: hf[k] for k in keys if hf.get(k) is not None})
