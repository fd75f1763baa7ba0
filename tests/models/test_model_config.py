"""Model configs: one-line errors naming the key, presets valid, big configs counted on meta."""
from pathlib import Path

import pytest

from ptft_engine.models import ConfigError, build_model, count_parameters, load_model_config, parse_model_config

PRESETS = sorted((Path(__file__).resolve().parents[2] / "configs" / "models").glob("*.yaml"))


def _error(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_model_config(data)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_unknown_key_is_named():
    assert _error({"arch": "encoder", "hidden_sise": 64}) == "model.hidden_sise: unknown key"


def test_unknown_nested_key_is_named():
    assert _error({"arch": "dual_encoder", "vision": {"patchsize": 4}}) == "model.vision.patchsize: unknown key"


def test_wrong_type_names_key_and_value():
    msg = _error({"arch": "decoder", "num_hidden_layers": "many"})
    assert msg.startswith("model.num_hidden_layers: ") and "'many'" in msg


def test_bad_and_missing_arch():
    assert _error({"arch": "rnn"}).startswith("model.arch: must be one of encoder, decoder, vit, dual_encoder")
    assert _error({"hidden_size": 8}).startswith("model.arch: missing")


def test_semantic_checks_name_the_field():
    assert "hidden_size 30 must be divisible by num_attention_heads 4" in _error(
        {"arch": "encoder", "hidden_size": 30, "num_attention_heads": 4})
    assert _error({"arch": "decoder", "num_key_value_heads": 4}).startswith("model.num_key_value_heads:")
    assert _error({"arch": "vit", "image_size": 10, "patch_size": 4}).startswith("model: image_size 10")


# Hugging Face's counts for the same architectures (transformers' BertForMaskedLM, GPT2LMHeadModel
# with vocab 50304, ViTModel without pooler, LlamaForCausalLM as TinyLlama, Wav2Vec2Model as
# facebook/wav2vec2-base), from their own code
HF_PARAMETER_COUNTS = {"bert-base": 109_514_298, "bert-large": 335_174_458, "gpt2-small": 124_475_904,
                       "vit-base": 85_798_656, "llama-1.1b": 1_100_048_384, "wav2vec2-base": 94_371_712}


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_presets_validate(path):
    cfg = load_model_config(path)
    n = count_parameters(cfg)
    if path.stem in HF_PARAMETER_COUNTS:
        assert n == HF_PARAMETER_COUNTS[path.stem]
    elif "tiny" in path.stem:  # small enough to build for real and count tensor by tensor
        model = build_model(cfg)
        assert n == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    else:
        assert n > 100_000_000  # the remaining presets are the large ones (gpt2-1.3b, clip-base)


def test_preset_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: decoder\nhidden_size: 64\nlayers: 2\n")
    with pytest.raises(ConfigError, match=r"^bad.yaml.layers: unknown key$"):
        load_model_config(bad)


def test_billion_parameter_decoders_counted_without_allocating():
    for name, low, high in (("gpt2-1.3b", 1.30e9, 1.33e9), ("llama-1.1b", 1.09e9, 1.11e9)):
        cfg = load_model_config(PRESETS[0].parent / f"{name}.yaml")
        model = build_model(cfg, device="meta")
        assert all(p.is_meta for p in model.parameters())
        n = count_parameters(cfg)
        assert low <= n <= high, (name, n)
    # GPT-2 small: the well-known 124M (with a 50257 vocab, tied head, learned positions)
    small = parse_model_config({"arch": "decoder", "vocab_size": 50257})
    assert count_parameters(small) == 124_439_808
    # BERT-base with its MLM head (BertForMaskedLM has no pooler)
    assert count_parameters({"arch": "encoder"}) == 109_514_298


def test_gradient_checkpointing_flag_reaches_layers():
    model = build_model({"arch": "dual_encoder", "gradient_checkpointing": True,
                         "vision": {"image_size": 8, "patch_size": 4, "num_channels": 1, "hidden_size": 8,
                                    "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8},
                         "text": {"vocab_size": 16, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                                  "intermediate_size": 8, "max_position_embeddings": 8}})
    assert model.vision.layers.gradient_checkpointing and model.text.layers.gradient_checkpointing
    model.set_gradient_checkpointing(False)
    assert not model.vision.layers.gradient_checkpointing
    # the engine switches it on with model_copy(update=...), which runs no validator
    cfg = model.config.model_copy(update={"gradient_checkpointing": False})
    cfg.vision.gradient_checkpointing = cfg.text.gradient_checkpointing = False
    again = build_model(cfg.model_copy(update={"gradient_checkpointing": True}))
    assert again.vision.layers.gradient_checkpointing and again.text.layers.gradient_checkpointing
