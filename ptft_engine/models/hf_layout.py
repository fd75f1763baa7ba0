"""The renaming between our parameter names and Hugging Face transformers' layouts.

One table of regex rules per layout; GPT-2 stores Conv1D weights as (in, out), so its
Linear weights are transposed on the way. Tied weights are emitted once (HF re-ties them
on load, and safetensors refuses shared tensors). Used by export/import (issue 5); the
tests load the result into transformers and compare logits.
"""
from __future__ import annotations

import re

import torch
from torch import nn

_L = r"layers\.(\d+)\."
BERT = [
    (r"embeddings\.(word|position|token_type)_embeddings\.", r"bert.embeddings.\1_embeddings."),
    (r"embeddings\.norm\.", "bert.embeddings.LayerNorm."),
    (_L + r"attn\.q_proj\.", r"bert.encoder.layer.\1.attention.self.query."),
    (_L + r"attn\.k_proj\.", r"bert.encoder.layer.\1.attention.self.key."),
    (_L + r"attn\.v_proj\.", r"bert.encoder.layer.\1.attention.self.value."),
    (_L + r"attn\.o_proj\.", r"bert.encoder.layer.\1.attention.output.dense."),
    (_L + r"attn_norm\.", r"bert.encoder.layer.\1.attention.output.LayerNorm."),
    (_L + r"mlp\.fc_in\.", r"bert.encoder.layer.\1.intermediate.dense."),
    (_L + r"mlp\.fc_out\.", r"bert.encoder.layer.\1.output.dense."),
    (_L + r"mlp_norm\.", r"bert.encoder.layer.\1.output.LayerNorm."),
    (r"mlm_head\.dense\.", "cls.predictions.transform.dense."),
    (r"mlm_head\.norm\.", "cls.predictions.transform.LayerNorm."),
    (r"mlm_head\.bias$", "cls.predictions.bias"),
]
GPT2 = [
    (r"embeddings\.word_embeddings\.", "transformer.wte."),
    (r"embeddings\.position_embeddings\.", "transformer.wpe."),
    (_L + r"attn_norm\.", r"transformer.h.\1.ln_1."),
    (_L + r"attn\.qkv_proj\.", r"transformer.h.\1.attn.c_attn."),
    (_L + r"attn\.o_proj\.", r"transformer.h.\1.attn.c_proj."),
    (_L + r"mlp_norm\.", r"transformer.h.\1.ln_2."),
    (_L + r"mlp\.fc_in\.", r"transformer.h.\1.mlp.c_fc."),
    (_L + r"mlp\.fc_out\.", r"transformer.h.\1.mlp.c_proj."),
    (r"final_norm\.", "transformer.ln_f."),
    (r"lm_head\.", "lm_head."),
]
LLAMA = [
    (r"embeddings\.word_embeddings\.", "model.embed_tokens."),
    (_L + r"attn_norm\.", r"model.layers.\1.input_layernorm."),
    (_L + r"attn\.([qkvo])_proj\.", r"model.layers.\1.self_attn.\2_proj."),
    (_L + r"mlp_norm\.", r"model.layers.\1.post_attention_layernorm."),
    (_L + r"mlp\.(gate|up|down)_proj\.", r"model.layers.\1.mlp.\2_proj."),
    (r"final_norm\.", "model.norm."),
    (r"lm_head\.", "lm_head."),
]
VIT = [
    (r"embeddings\.patch_proj\.", "embeddings.patch_embeddings.projection."),
    (r"embeddings\.(cls_token|position_embeddings)$", r"embeddings.\1"),
    (_L + r"attn_norm\.", r"encoder.layer.\1.layernorm_before."),
    (_L + r"attn\.q_proj\.", r"encoder.layer.\1.attention.attention.query."),
    (_L + r"attn\.k_proj\.", r"encoder.layer.\1.attention.attention.key."),
    (_L + r"attn\.v_proj\.", r"encoder.layer.\1.attention.attention.value."),
    (_L + r"attn\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (_L + r"mlp_norm\.", r"encoder.layer.\1.layernorm_after."),
    (_L + r"mlp\.fc_in\.", r"encoder.layer.\1.intermediate.dense."),
    (_L + r"mlp\.fc_out\.", r"encoder.layer.\1.output.dense."),
    (r"final_norm\.", "layernorm."),
]
# GPT-2's Conv1D keeps weight as (in, out): these transpose
_GPT2_CONV1D = re.compile(r"\.(c_attn|c_proj|c_fc)\.weight$")


def layout(model: nn.Module) -> str:
    """'bert' | 'gpt2' | 'llama' | 'vit' for a model built by build_model."""
    arch = model.config.arch
    if arch == "encoder":
        return "bert"
    if arch == "decoder":
        return model.config.style
    if arch == "vit":
        return "vit"
    raise ValueError(f"no Hugging Face layout for arch {arch!r} (export its towers separately)")


_RULES = {"bert": BERT, "gpt2": GPT2, "llama": LLAMA, "vit": VIT}


def hf_name(ours: str, kind: str) -> str:
    for pattern, repl in _RULES[kind]:
        new, n = re.subn("^" + pattern, repl, ours)
        if n:
            return new
    raise KeyError(f"parameter {ours!r} has no {kind} name")


def name_map(model: nn.Module) -> dict[str, str]:
    """our parameter name -> HF name, for every (unique) parameter of `model`."""
    kind = layout(model)
    return {name: hf_name(name, kind) for name, _ in model.named_parameters()}


def to_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our weights under HF names (GPT-2 Conv1D weights transposed, contiguous)."""
    kind = layout(model)
    out = {}
    for ours, hf in name_map(model).items():
        t = model.get_parameter(ours).detach()
        if kind == "gpt2" and _GPT2_CONV1D.search(hf):
            t = t.t().contiguous()
        out[hf] = t
    return out


def from_hf_state_dict(model: nn.Module, hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF weights -> our state dict for `model` (missing names raise, naming them);
    tied HF copies (e.g. lm_head, cls.predictions.decoder) are ignored."""
    kind = layout(model)
    mapping = name_map(model)
    missing = [hf for hf in mapping.values() if hf not in hf_state]
    if missing:
        raise KeyError(f"the Hugging Face checkpoint lacks {len(missing)} weights this config needs, e.g. {missing[0]}")
    ours = {}
    for name, hf in mapping.items():
        t = hf_state[hf]
        if kind == "gpt2" and _GPT2_CONV1D.search(hf):
            t = t.t().contiguous()
        ours[name] = t
    # tied aliases (lm_head.weight, mlm_head.decoder.weight) appear in state_dict() too
    first = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        first.setdefault(id(p), name)
        if name not in ours:
            ours[name] = ours[first[id(p)]]
    return ours


def hf_config(model: nn.Module) -> dict:
    """config.json contents for the matching transformers class."""
    c = model.config
    kind = layout(model)
    common = {"initializer_range": c.initializer_range}
    if kind == "bert":
        keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                "type_vocab_size", "layer_norm_eps", "pad_token_id")
        return {"model_type": "bert", "architectures": ["BertForMaskedLM"], **common, **{k: getattr(c, k) for k in keys}}
    if kind == "gpt2":
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], **common,
                "vocab_size": c.vocab_size, "n_embd": c.hidden_size, "n_layer": c.num_hidden_layers,
                "n_head": c.num_attention_heads, "n_inner": c.ffn_size, "n_positions": c.max_position_embeddings,
                "layer_norm_epsilon": c.layer_norm_eps, "activation_function": c.act,
                "resid_pdrop": c.hidden_dropout_prob, "embd_pdrop": c.hidden_dropout_prob, "attn_pdrop": 0.0,
                "tie_word_embeddings": c.tie_word_embeddings}
    if kind == "llama":
        return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **common,
                "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.ffn_size,
                "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
                "num_key_value_heads": c.num_key_value_heads or c.num_attention_heads,
                "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.layer_norm_eps,
                "rope_theta": c.rope_theta, "hidden_act": c.act, "tie_word_embeddings": c.tie_word_embeddings,
                "attention_bias": False, "mlp_bias": False}
    keys = ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "hidden_act", "hidden_dropout_prob", "layer_norm_eps")
    return {"model_type": "vit", "architectures": ["ViTModel"], **common, "attention_probs_dropout_prob": 0.0,
            "qkv_bias": True, **{k: getattr(c, k) for k in keys}}


def _require(cfg: dict, key: str, allowed, kind: str) -> None:
    if key in cfg and cfg[key] not in allowed:
        raise ValueError(f"{kind} config.json: {key}={cfg[key]!r} has no equivalent here (supported: {allowed})")


def config_from_hf(hf: dict):
    """A transformers config.json (dict) -> our model config, for import.

    Only the keys that shape the weights or the math are read; settings whose math
    we do not implement (relative positions, RoPE scaling ...) are refused by name.
    """
    from ptft_engine.models.config import parse_model_config

    kind = hf.get("model_type")
    if kind == "bert":
        _require(hf, "position_embedding_type", ("absolute",), kind)
        keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "hidden_dropout_prob", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                "pad_token_id", "initializer_range")
        data = {"arch": "encoder", **{k: hf[k] for k in keys if hf.get(k) is not None}}
    elif kind == "gpt2":
        for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            _require(hf, key, (False,), kind)
        _require(hf, "scale_attn_weights", (True,), kind)
        rename = {"vocab_size": "vocab_size", "n_embd": "hidden_size", "n_layer": "num_hidden_layers",
                  "n_head": "num_attention_heads", "n_inner": "intermediate_size",
                  "n_positions": "max_position_embeddings", "layer_norm_epsilon": "layer_norm_eps",
                  "activation_function": "hidden_act", "resid_pdrop": "hidden_dropout_prob",
                  "initializer_range": "initializer_range", "tie_word_embeddings": "tie_word_embeddings"}
        data = {"arch": "decoder", "style": "gpt2", **{ours: hf[k] for k, ours in rename.items() if hf.get(k) is not None}}
    elif kind == "llama":
        _require(hf, "rope_scaling", (None,), kind)
        _require(hf, "attention_bias", (False,), kind)
        _require(hf, "mlp_bias", (False,), kind)
        if hf.get("head_dim") not in (None, hf["hidden_size"] // hf["num_attention_heads"]):
            raise ValueError(f"llama config.json: head_dim={hf['head_dim']} != hidden_size / num_attention_heads")
        rename = {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_hidden_layers": "num_hidden_layers",
                  "num_attention_heads": "num_attention_heads", "num_key_value_heads": "num_key_value_heads",
                  "intermediate_size": "intermediate_size", "max_position_embeddings": "max_position_embeddings",
                  "rms_norm_eps": "layer_norm_eps", "rope_theta": "rope_theta", "hidden_act": "hidden_act",
                  "initializer_range": "initializer_range", "tie_word_embeddings": "tie_word_embeddings"}
        data = {"arch": "decoder", "style": "llama", **{ours: hf[k] for k, ours in rename.items() if hf.get(k) is not None}}
    elif kind == "vit":
        _require(hf, "qkv_bias", (True,), kind)
        keys = ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "hidden_act", "hidden_dropout_prob", "layer_norm_eps", "initializer_range")
        data = {"arch": "vit", **{k: hf[k] for k in keys if hf.get(k) is not None}}
    else:
        raise ValueError(f"config.json: model_type {kind!r} cannot be imported (bert, gpt2, llama or vit)")
    return parse_model_config(data, prefix=f"{kind} config.json")
