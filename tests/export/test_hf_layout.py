"""Our layouts are HF's up to renaming: renamed weights saved as safetensors load with
transformers' from_pretrained and give the same outputs."""
import json
from pathlib import Path

import pytest
import torch

from ptft_engine.export.hf_state import config_from_hf, from_hf_state_dict, hf_config, to_hf_state_dict
from ptft_engine.models import build_model, load_model_config

transformers = pytest.importorskip("transformers")
save_file = pytest.importorskip("safetensors.torch").save_file
PRESETS = Path(__file__).resolve().parents[2] / "configs" / "models"


def hf_twin(model, out_dir):
    cfg = hf_config(model)
    save_file(to_hf_state_dict(model), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(cfg))
    if cfg["model_type"] == "vit":
        hf, info = transformers.ViTModel.from_pretrained(out_dir, add_pooling_layer=False, output_loading_info=True)
    elif cfg["model_type"] == "bert":
        hf, info = transformers.AutoModelForMaskedLM.from_pretrained(out_dir, output_loading_info=True)
    else:
        hf, info = transformers.AutoModelForCausalLM.from_pretrained(out_dir, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return hf.eval()


@pytest.mark.parametrize("name", ["bert-tiny", "gpt2-tiny", "llama-tiny", "vit-tiny-digits"])
def test_renamed_weights_reproduce_transformers_outputs(name, tmp_path):
    model = build_model(load_model_config(PRESETS / f"{name}.yaml")).eval()
    hf = hf_twin(model, tmp_path)
    with torch.no_grad():
        if name.startswith("vit"):
            pixels = torch.rand(2, 1, 8, 8)
            ours, theirs = model.encode(pixels), hf(pixel_values=pixels).last_hidden_state
        else:
            ids = torch.randint(0, 128, (2, 13))
            mask = torch.ones(2, 13, dtype=torch.long)
            mask[1, 9:] = 0  # right padding in the second row
            ours = model(ids, attention_mask=mask.bool())
            theirs = hf(input_ids=ids, attention_mask=mask).logits
            ours, theirs = ours[mask.bool()], theirs[mask.bool()]  # real tokens only
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["bert-tiny", "gpt2-tiny"])
def test_import_from_transformers_round_trips(name, tmp_path):
    model = build_model(load_model_config(PRESETS / f"{name}.yaml"))
    hf_state = {k: v for k, v in hf_twin(model, tmp_path).state_dict().items()}
    torch.manual_seed(1)
    fresh = build_model(model.config)
    fresh.load_state_dict(from_hf_state_dict(fresh, hf_state))
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(p, q), n
    del hf_state["transformer.h.0.ln_1.weight" if name.startswith("gpt2") else "bert.embeddings.LayerNorm.weight"]
    with pytest.raises(KeyError, match="lacks 1 weights"):
        from_hf_state_dict(fresh, hf_state)


@pytest.mark.parametrize("name", ["bert-tiny", "gpt2-tiny", "llama-tiny", "vit-tiny-digits"])
def test_config_round_trips_through_transformers(name):
    cfg = load_model_config(PRESETS / f"{name}.yaml")
    exported = hf_config(build_model(cfg, device="meta"))
    kind = exported.pop("model_type")
    exported.pop("architectures")
    full = transformers.AutoConfig.for_model(kind, **exported).to_dict()  # with every HF default added
    back = config_from_hf(full)

    def resolved(c):  # decoder defaults (None) resolved to what they mean
        d = c.model_dump(exclude={"gradient_checkpointing"})
        if c.arch == "decoder":
            d.update(intermediate_size=c.ffn_size, hidden_act=c.act)
        return d

    assert resolved(back) == resolved(cfg)


def test_unsupported_hf_settings_are_refused_by_name():
    bert = transformers.BertConfig(position_embedding_type="relative_key").to_dict()
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        config_from_hf(bert)
    with pytest.raises(ValueError, match="model_type 't5'"):
        config_from_hf({"model_type": "t5"})


@pytest.mark.parametrize("name", ["bert-tiny", "gpt2-tiny"])
def test_a_tensor_with_no_place_in_the_layout_is_named(name):
    from ptft_engine.export.errors import ExportError

    model = build_model(load_model_config(PRESETS / f"{name}.yaml"))
    hf_state = to_hf_state_dict(model)
    hf_state["encoder.mystery.weight"] = torch.zeros(2, 2)
    with pytest.raises(ExportError, match=r"encoder\.mystery\.weight' does not belong"):
        from_hf_state_dict(model, hf_state)
