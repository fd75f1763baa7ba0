"""wav2vec 2.0 <-> transformers Wav2Vec2Model (a pure renaming; models/wav2vec2.py lists it).

The positional conv is weight-normalised: transformers (with torch's parametrizations)
stores g and v as `parametrizations.weight.original0` / `original1`; older checkpoints
(facebook/wav2vec2-base) as `weight_g` / `weight_v`. Export writes the first form; import
reads both. Weights of Wav2Vec2ForPreTraining / ForSequenceClassification / ForCTC that are
not part of Wav2Vec2Model (quantiser, projections, heads) are skipped on import.
"""
from __future__ import annotations

from typing import Any

from ptft_engine.export.layout import Layout, expect

_LAYER = "encoder.layers.{i}"
_POS = "encoder.pos_conv_embed.conv"
# config.json keys that are Wav2Vec2Config fields of the same name in the engine config
_SAME = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act", "hidden_dropout",
         "feat_proj_dropout", "layer_norm_eps", "feat_extract_norm", "feat_extract_activation", "conv_dim",
         "conv_kernel", "conv_stride", "conv_bias", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups",
         "do_stable_layer_norm", "initializer_range")
SAMPLING_RATE = 16000


class Wav2Vec2Layout(Layout):
    name = "hf-wav2vec2"
    rules = [
        ("feature_encoder.convs.{i}.conv", "feature_extractor.conv_layers.{i}.conv"),
        ("feature_encoder.convs.{i}.norm", "feature_extractor.conv_layers.{i}.layer_norm"),
        ("feature_projection.norm", "feature_projection.layer_norm"),
        ("feature_projection.proj", "feature_projection.projection"),
        ("feature_projection.mask_embed", "masked_spec_embed"),
        ("pos_conv.weight_g", f"{_POS}.parametrizations.weight.original0"),
        ("pos_conv.weight_v", f"{_POS}.parametrizations.weight.original1"),
        ("pos_conv.bias", f"{_POS}.bias"),
        ("encoder_norm", "encoder.layer_norm"),
        ("layers.{i}.attn.q_proj", f"{_LAYER}.attention.q_proj"),
        ("layers.{i}.attn.k_proj", f"{_LAYER}.attention.k_proj"),
        ("layers.{i}.attn.v_proj", f"{_LAYER}.attention.v_proj"),
        ("layers.{i}.attn.o_proj", f"{_LAYER}.attention.out_proj"),
        ("layers.{i}.attn_norm", f"{_LAYER}.layer_norm"),
        ("layers.{i}.mlp.fc_in", f"{_LAYER}.feed_forward.intermediate_dense"),
        ("layers.{i}.mlp.fc_out", f"{_LAYER}.feed_forward.output_dense"),
        ("layers.{i}.mlp_norm", f"{_LAYER}.final_layer_norm"),
    ]
    ignore = (r"^quantizer\.", r"^project_(hid|q)\.", r"^projector\.", r"^classifier\.", r"^lm_head\.",
              r"^layer_weights$", r"^adapter\.")

    def normalise_import_name(self, name: str) -> str:
        name = name.removeprefix("wav2vec2.")  # the task classes nest the encoder under "wav2vec2."
        return name.replace(f"{_POS}.weight_g", f"{_POS}.parametrizations.weight.original0").replace(
            f"{_POS}.weight_v", f"{_POS}.parametrizations.weight.original1")

    def target_config(self, cfg) -> dict[str, Any]:
        out = {"architectures": ["Wav2Vec2Model"], "model_type": "wav2vec2"}
        out.update({k: getattr(cfg, k) for k in _SAME})
        out.update({
            "num_feat_extract_layers": len(cfg.conv_dim),
            # not implemented by the engine model (ops.attention has no probability dropout)
            "attention_dropout": 0.0, "activation_dropout": 0.0, "layerdrop": 0.0, "feat_quantizer_dropout": 0.0,
            # fine-tuning's SpecAugment, transformers' defaults (the masked_spec_embed is exported)
            "apply_spec_augment": True, "mask_time_prob": 0.05, "mask_time_length": 10, "mask_feature_prob": 0.0,
            "add_adapter": False, "use_weighted_layer_sum": False,
        })
        return out

    def engine_config(self, hf: dict[str, Any], source: str = "config.json"):
        from ptft_engine.models import Wav2Vec2Config

        expect(hf, "add_adapter", [False], source)
        return Wav2Vec2Config(**{k: hf[k] for k in _SAME if hf.get(k) is not None})

    def extra_json(self, cfg) -> dict[str, Any]:
        """preprocessor_config.json, so AutoFeatureExtractor gives the inputs the model was
        trained on: 16 kHz mono, each utterance normalised to zero mean and unit variance.
        GroupNorm over time sees padding, so wav2vec2-base style models take no attention
        mask (transformers' convention); LayerNorm models do."""
        return {"preprocessor_config.json": {
            "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
            "sampling_rate": SAMPLING_RATE, "padding_value": 0.0, "padding_side": "right", "do_normalize": True,
            "return_attention_mask": cfg.feat_extract_norm == "layer"}}
