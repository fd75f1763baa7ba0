"""Decoder <-> transformers GPT2LMHeadModel (style=gpt2) and LlamaForCausalLM (style=llama).

GPT-2 stores its projections as Conv1D (weight is (in, out)): our Linear weights are
written transposed. The engine's fused qkv_proj is already [q; k; v], like c_attn.
With tied embeddings `lm_head.weight` is not written; transformers ties it on load.
"""
from __future__ import annotations

from typing import Any

from ptft_engine.export.errors import ExportError
from ptft_engine.export.layout import Layout, expect

_H = "transformer.h.{i}"
_L = "model.layers.{i}"


class GPT2Layout(Layout):
    name = "hf-gpt2"
    rules = [
        ("embeddings.word_embeddings", "transformer.wte"),
        ("embeddings.position_embeddings", "transformer.wpe"),
        ("layers.{i}.attn_norm", f"{_H}.ln_1"),
        ("layers.{i}.attn.qkv_proj", f"{_H}.attn.c_attn"),
        ("layers.{i}.attn.o_proj", f"{_H}.attn.c_proj"),
        ("layers.{i}.mlp_norm", f"{_H}.ln_2"),
        ("layers.{i}.mlp.fc_in", f"{_H}.mlp.c_fc"),
        ("layers.{i}.mlp.fc_out", f"{_H}.mlp.c_proj"),
        ("final_norm", "transformer.ln_f"),
        ("lm_head", "lm_head"),
    ]
    transposed = (f"{_H}.attn.c_attn", f"{_H}.attn.c_proj", f"{_H}.mlp.c_fc", f"{_H}.mlp.c_proj")
    # buffers of old checkpoints; heads of GPT2For{Sequence,Token}Classification (not the decoder's)
    ignore = (r"^transformer\.h\.\d+\.attn\.(masked_)?bias$", r"^score\.", r"^classifier\.")

    def __init__(self, tie: bool = True):
        super().__init__()
        self.tied = {"lm_head.weight": "transformer.wte.weight"} if tie else {}

    def normalise_import_name(self, name: str) -> str:
        if name.startswith(("transformer.", "lm_head.", "score.", "classifier.")):
            return name
        return "transformer." + name  # GPT2Model saves without the prefix

    def target_config(self, cfg) -> dict[str, Any]:
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_positions": cfg.max_position_embeddings,
            "n_embd": cfg.hidden_size,
            "n_layer": cfg.num_hidden_layers,
            "n_head": cfg.num_attention_heads,
            "n_inner": cfg.ffn_size,
            "activation_function": cfg.act,
            "resid_pdrop": cfg.hidden_dropout_prob,
            "embd_pdrop": cfg.hidden_dropout_prob,
            "attn_pdrop": 0.0,
            "layer_norm_epsilon": cfg.layer_norm_eps,
            "initializer_range": cfg.initializer_range,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "bos_token_id": None,
            "eos_token_id": None,
        }

    def engine_config(self, hf: dict[str, Any], source: str = "config.json"):
        from ptft_engine.models import DecoderConfig

        expect(hf, "scale_attn_weights", [True], source)
        expect(hf, "scale_attn_by_inverse_layer_idx", [False], source)
        expect(hf, "add_cross_attention", [False], source)
        return DecoderConfig(
            style="gpt2", vocab_size=hf["vocab_size"], max_position_embeddings=hf.get("n_positions", 1024),
            hidden_size=hf.get("n_embd", 768), num_hidden_layers=hf.get("n_layer", 12),
            num_attention_heads=hf.get("n_head", 12), intermediate_size=hf.get("n_inner"),
            hidden_act=hf.get("activation_function", "gelu_new"), hidden_dropout_prob=hf.get("resid_pdrop", 0.0),
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5), initializer_range=hf.get("initializer_range", 0.02),
            tie_word_embeddings=hf.get("tie_word_embeddings", True),
        )


class LlamaLayout(Layout):
    name = "hf-llama"
    rules = [
        ("embeddings.word_embeddings", "model.embed_tokens"),
        ("layers.{i}.attn_norm", f"{_L}.input_layernorm"),
        ("layers.{i}.attn.q_proj", f"{_L}.self_attn.q_proj"),
        ("layers.{i}.attn.k_proj", f"{_L}.self_attn.k_proj"),
        ("layers.{i}.attn.v_proj", f"{_L}.self_attn.v_proj"),
        ("layers.{i}.attn.o_proj", f"{_L}.self_attn.o_proj"),
        ("layers.{i}.mlp_norm", f"{_L}.post_attention_layernorm"),
        ("layers.{i}.mlp.gate_proj", f"{_L}.mlp.gate_proj"),
        ("layers.{i}.mlp.up_proj", f"{_L}.mlp.up_proj"),
        ("layers.{i}.mlp.down_proj", f"{_L}.mlp.down_proj"),
        ("final_norm", "model.norm"),
        ("lm_head", "lm_head"),
    ]
    ignore = (r"\.rotary_emb\.inv_freq$", r"^score\.")  # score: LlamaFor{Sequence,Token}Classification

    def __init__(self, tie: bool = True):
        super().__init__()
        self.tied = {"lm_head.weight": "model.embed_tokens.weight"} if tie else {}

    def target_config(self, cfg) -> dict[str, Any]:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.ffn_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads or cfg.num_attention_heads,
            "head_dim": cfg.hidden_size // cfg.num_attention_heads,
            "hidden_act": cfg.act,
            "max_position_embeddings": cfg.max_position_embeddings,
            "rms_norm_eps": cfg.layer_norm_eps,
            "rope_theta": cfg.rope_theta,  # transformers 4.x
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},  # 5.x
            "attention_bias": False,
            "mlp_bias": False,
            "attention_dropout": 0.0,
            "initializer_range": cfg.initializer_range,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "bos_token_id": None,
            "eos_token_id": None,
        }

    def engine_config(self, hf: dict[str, Any], source: str = "config.json"):
        from ptft_engine.models import DecoderConfig

        expect(hf, "attention_bias", [False], source)
        expect(hf, "mlp_bias", [False], source)
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        expect(rope, "rope_type", ["default"], source)
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        heads = hf["num_attention_heads"]
        if hf.get("head_dim") not in (None, hf["hidden_size"] // heads):
            raise ExportError(f"{source}: head_dim={hf['head_dim']} != hidden_size/num_attention_heads "
                              "is not supported")
        return DecoderConfig(
            style="llama", vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"], num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads, num_key_value_heads=hf.get("num_key_value_heads") or heads,
            hidden_act=hf.get("hidden_act", "silu"), max_position_embeddings=hf.get("max_position_embeddings", 2048),
            layer_norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=theta,
            initializer_range=hf.get("initializer_range", 0.02),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
        )
