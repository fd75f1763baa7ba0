"""Encoder <-> transformers BertForMaskedLM (BERT layout; a pure renaming).

The MLM decoder weight is tied to the word embeddings (as in BERT) and its bias is
cls.predictions.bias, so neither `cls.predictions.decoder.*` tensor is written
(safetensors refuses shared tensors); transformers re-ties them on load.
"""
from __future__ import annotations

from typing import Any

from ptft_engine.export.errors import ExportError
from ptft_engine.export.layout import Layout, expect

_LAYER = "bert.encoder.layer.{i}"


class BertLayout(Layout):
    name = "hf-bert"
    rules = [
        ("embeddings.word_embeddings", "bert.embeddings.word_embeddings"),
        ("embeddings.position_embeddings", "bert.embeddings.position_embeddings"),
        ("embeddings.token_type_embeddings", "bert.embeddings.token_type_embeddings"),
        ("embeddings.norm", "bert.embeddings.LayerNorm"),
        ("layers.{i}.attn.q_proj", f"{_LAYER}.attention.self.query"),
        ("layers.{i}.attn.k_proj", f"{_LAYER}.attention.self.key"),
        ("layers.{i}.attn.v_proj", f"{_LAYER}.attention.self.value"),
        ("layers.{i}.attn.o_proj", f"{_LAYER}.attention.output.dense"),
        ("layers.{i}.attn_norm", f"{_LAYER}.attention.output.LayerNorm"),
        ("layers.{i}.mlp.fc_in", f"{_LAYER}.intermediate.dense"),
        ("layers.{i}.mlp.fc_out", f"{_LAYER}.output.dense"),
        ("layers.{i}.mlp_norm", f"{_LAYER}.output.LayerNorm"),
        ("mlm_head.dense", "cls.predictions.transform.dense"),
        ("mlm_head.norm", "cls.predictions.transform.LayerNorm"),
        ("mlm_head.bias", "cls.predictions.bias"),
    ]
    tied = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
            "cls.predictions.decoder.bias": "cls.predictions.bias"}
    # buffers of old checkpoints and heads of other Bert* classes: not part of the encoder
    ignore = (r"\.position_ids$", r"^bert\.pooler\.", r"^classifier\.", r"^qa_outputs\.", r"^cls\.seq_relationship\.")

    def normalise_import_name(self, name: str) -> str:
        # BertModel saves without the "bert." prefix; BertForMaskedLM with it
        if not name.startswith(("bert.", "cls.", "classifier.", "qa_outputs.")):
            return "bert." + name
        return name

    def target_config(self, cfg) -> dict[str, Any]:
        if cfg.type_vocab_size == 0:
            raise ExportError("model.type_vocab_size=0 has no BERT equivalent; export with --format native")
        return {
            "architectures": ["BertForMaskedLM"],
            "model_type": "bert",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "intermediate_size": cfg.intermediate_size,
            "hidden_act": cfg.hidden_act,
            "hidden_dropout_prob": cfg.hidden_dropout_prob,
            "attention_probs_dropout_prob": 0.0,
            "max_position_embeddings": cfg.max_position_embeddings,
            "type_vocab_size": cfg.type_vocab_size,
            "initializer_range": cfg.initializer_range,
            "layer_norm_eps": cfg.layer_norm_eps,
            "pad_token_id": cfg.pad_token_id,
            "position_embedding_type": "absolute",
            "tie_word_embeddings": True,
            "is_decoder": False,
        }

    def engine_config(self, hf: dict[str, Any], source: str = "config.json"):
        from ptft_engine.models import EncoderConfig

        expect(hf, "position_embedding_type", ["absolute"], source)
        expect(hf, "is_decoder", [False], source)
        if hf.get("tie_word_embeddings", True) is False:
            raise ExportError(f"{source}: tie_word_embeddings=false is not supported for the encoder")
        keys = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "hidden_dropout_prob", "max_position_embeddings", "type_vocab_size",
                "initializer_range", "layer_norm_eps", "pad_token_id"]
        # ops.attention applies no dropout to attention probabilities: imported as 0
        return EncoderConfig(**{k: hf[k] for k in keys if hf.get(k) is not None})

    def architectures(self, config: dict[str, Any], written: set[str]) -> list[str]:
        # an encoder without its MLM head (a fine-tuned backbone, a CLIP tower) is a BertModel
        return config["architectures"] if any(n.startswith("cls.") for n in written) else ["BertModel"]

    def build_kwargs(self, names: set[str]) -> dict[str, Any]:
        return {"with_mlm_head": any(n.startswith("mlm_head.") for n in names)}
