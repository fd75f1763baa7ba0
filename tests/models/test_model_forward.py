"""Shapes, masking, causality, init and checkpointing of every architecture."""
import math
from pathlib import Path

import pytest
import torch

from ptft_engine.models import build_model, load_model_config

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "models"


def tiny(name, **overrides):
    cfg = load_model_config(PRESETS / f"{name}.yaml")
    return build_model(cfg.model_copy(update=overrides)).eval()


TEXT = ["bert-tiny", "gpt2-tiny", "llama-tiny"]


@pytest.mark.parametrize("name", TEXT)
def test_text_models_give_vocab_logits(name):
    model = tiny(name)
    ids = torch.randint(0, 128, (3, 11))
    assert model(ids).shape == (3, 11, 128)
    assert model.encode(ids).shape == (3, 11, 32)


def test_vit_on_digits_and_on_224_rgb():
    digits = tiny("vit-tiny-digits")
    assert digits(torch.rand(5, 1, 8, 8)).shape == (5, 32)
    assert digits.encode(torch.rand(5, 1, 8, 8)).shape == (5, 1 + 16, 32)
    patch4 = build_model({"arch": "vit", "image_size": 8, "patch_size": 4, "num_channels": 1, "hidden_size": 16,
                          "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16})
    assert patch4.encode(torch.rand(2, 1, 8, 8)).shape == (2, 5, 16)
    rgb = build_model({"arch": "vit", "image_size": 224, "patch_size": 16, "hidden_size": 16,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16})
    assert rgb.encode(torch.rand(2, 3, 224, 224)).shape == (2, 197, 16)
    with pytest.raises(ValueError, match=r"pixel_values must be \(B, 1, 8, 8\)"):
        digits(torch.rand(2, 3, 8, 8))


def test_dual_encoder_outputs_and_clamped_scale():
    model = tiny("clip-tiny")
    out = model(torch.rand(4, 1, 8, 8), torch.randint(0, 64, (4, 7)), torch.ones(4, 7, dtype=torch.bool))
    assert out["image_embeds"].shape == (4, 16) and out["text_embeds"].shape == (4, 16)
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # exp(10) >> 100
    assert model.scale().item() == pytest.approx(100.0, rel=1e-5)


@pytest.mark.parametrize("name", TEXT)
def test_appended_padding_leaves_real_tokens_unchanged(name):
    model = tiny(name)
    ids = torch.randint(1, 128, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    ref = model.encode(ids, attention_mask=mask)
    padded = torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    pmask = torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], dim=1)
    out = model.encode(padded, attention_mask=pmask)
    torch.testing.assert_close(out[:, :9], ref, rtol=1e-5, atol=1e-5)
    # and without the mask the padding does leak in (the test can fail)
    if name == "bert-tiny":
        assert not torch.allclose(model.encode(padded)[:, :9], ref, atol=1e-4)


@pytest.mark.parametrize("name", TEXT)
def test_packed_row_equals_separate_rows(name):
    model = tiny(name)
    a, b = torch.randint(1, 128, (1, 6)), torch.randint(1, 128, (1, 10))
    packed = torch.cat([a, b], dim=1)
    segments = torch.tensor([[0] * 6 + [1] * 10])
    out = model.encode(packed, segment_ids=segments)
    torch.testing.assert_close(out[:, :6], model.encode(a), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 6:], model.encode(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_decoder_does_not_see_the_future(name):
    model = tiny(name)
    ids = torch.randint(0, 128, (2, 12))
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 128
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_encoder_is_bidirectional():
    model = tiny("bert-tiny")
    ids = torch.randint(0, 128, (1, 12))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 128
    assert not torch.allclose(model(ids)[:, 0], model(changed)[:, 0])


def test_init_is_deterministic_and_gpt2_style():
    torch.manual_seed(3)
    a = tiny("gpt2-tiny", hidden_size=256, num_attention_heads=4, num_hidden_layers=8)
    torch.manual_seed(3)
    b = tiny("gpt2-tiny", hidden_size=256, num_attention_heads=4, num_hidden_layers=8)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    block = a.layers[0]
    assert block.attn.qkv_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.attn.o_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert torch.all(block.attn.qkv_proj.bias == 0) and torch.all(block.attn_norm.weight == 1)
    assert a.embeddings.word_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_tied_output_embeddings_are_one_parameter():
    gpt2, bert, llama = tiny("gpt2-tiny"), tiny("bert-tiny"), tiny("llama-tiny")
    names = [n for n, _ in gpt2.named_parameters()]
    assert not any("lm_head" in n for n in names)
    assert gpt2.lm_head.weight is gpt2.embeddings.word_embeddings.weight
    assert bert.mlm_head.decoder.weight is bert.embeddings.word_embeddings.weight
    assert not any("decoder" in n for n, _ in bert.named_parameters())
    assert llama.lm_head.weight is not llama.embeddings.word_embeddings.weight  # the preset unties, as Llama does
    assert any(n == "lm_head.weight" for n, _ in llama.named_parameters())


@pytest.mark.parametrize("name", ["bert-tiny", "llama-tiny", "vit-tiny-digits"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    model = tiny(name).train()
    inputs = torch.rand(3, 1, 8, 8) if name.startswith("vit") else torch.randint(0, 128, (3, 10))

    def grads():
        model.zero_grad()
        model(inputs).float().pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.set_gradient_checkpointing(True)
    assert model.layers.gradient_checkpointing
    ckpt = grads()
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-5, atol=1e-7)
