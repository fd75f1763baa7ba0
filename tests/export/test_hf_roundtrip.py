"""Exports load in transformers with the engine's logits; transformers checkpoints import."""
import json

import pytest
import torch
from export_fixtures import VOCAB, tiny_decoder, tiny_encoder
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from ptft_engine.export import export_model, load_export, load_pretrained

TOL = 1e-5


def test_encoder_export_loads_in_transformers_with_same_logits(tmp_path, batch):
    ids, mask = batch
    enc = tiny_encoder()
    manifest = export_model(enc, tmp_path)
    assert manifest["tied_weights"]["cls.predictions.decoder.weight"] == "bert.embeddings.word_embeddings.weight"
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "BertForMaskedLM"
    with torch.no_grad():
        ours, theirs = enc(ids, attention_mask=mask), hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=TOL, rtol=TOL)
    back = load_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(back(ids, attention_mask=mask), ours, atol=0, rtol=0)


@pytest.mark.parametrize("style,tie,kv_heads", [("gpt2", True, None), ("gpt2", False, None), ("llama", True, 2),
                                               ("llama", False, 1)],
                         ids=["gpt2-tied", "gpt2", "llama-gqa", "llama-mqa"])
def test_decoder_export_loads_in_transformers_with_same_logits(tmp_path, batch, style, tie, kv_heads):
    ids, _ = batch
    dec = tiny_decoder(style, tie, kv_heads)
    export_model(dec, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == ("GPT2LMHeadModel" if style == "gpt2" else "LlamaForCausalLM")
    if style == "llama":  # grouped-query attention survives the export: k/v projections stay narrow
        assert hf.config.num_key_value_heads == kv_heads
        assert hf.model.layers[0].self_attn.k_proj.weight.shape == (kv_heads * 8, 32)
    with torch.no_grad():
        torch.testing.assert_close(dec(ids), hf(input_ids=ids).logits, atol=TOL, rtol=TOL)


def test_sharded_bf16_export_round_trips(tmp_path, batch):
    ids, _ = batch
    dec = tiny_decoder()
    export_model(dec, tmp_path, dtype="bf16", max_shard_size="16KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((tmp_path / s).is_file() for s in shards)
    back = load_export(tmp_path)
    assert back.manifest["dtype"] == "bf16"
    for name, p in dec.state_dict().items():
        torch.testing.assert_close(back.model.state_dict()[name], p.to(torch.bfloat16).float(), atol=0, rtol=0)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(back.model(ids), hf(input_ids=ids).logits, atol=TOL, rtol=TOL)


def test_native_export_round_trips_exactly(tmp_path):
    from ptft_engine.models import ViTConfig, build_model

    vit = build_model(ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=32)).eval()
    manifest = export_model(vit, tmp_path)  # auto: no HF layout for a ViT here -> native
    assert manifest["layout"] == "native"
    back = load_pretrained(tmp_path)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(back(x), vit(x), atol=0, rtol=0)


def test_vit_exports_to_transformers_vit_when_asked(tmp_path):
    from transformers import ViTModel

    from ptft_engine.export import ExportError
    from ptft_engine.models import ViTConfig, build_model

    cfg = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32)
    vit = build_model(cfg).eval()
    assert export_model(vit, tmp_path / "hf", fmt="hf")["layout"] == "hf-vit"
    hf = ViTModel.from_pretrained(tmp_path / "hf", add_pooling_layer=False).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(vit.encode(x), hf(pixel_values=x).last_hidden_state, atol=TOL, rtol=TOL)
        torch.testing.assert_close(load_pretrained(tmp_path / "hf")(x), vit(x), atol=0, rtol=0)
    mean_pooled = build_model(cfg.model_copy(update={"pooling": "mean"}))
    with pytest.raises(ExportError, match="pooling='mean'"):
        export_model(mean_pooled, tmp_path / "mean", fmt="hf")


def test_import_transformers_bert(tmp_path, batch):
    ids, mask = batch
    hf = BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                                    intermediate_size=40, max_position_embeddings=32, type_vocab_size=2)).eval()
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    tt = torch.randint(0, 2, ids.shape)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, token_type_ids=tt)
        b = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=TOL, rtol=TOL)


def test_import_transformers_gpt2(tmp_path, batch):
    ids, _ = batch
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=24, n_layer=2, n_head=3, n_positions=32,
                                    bos_token_id=0, eos_token_id=0)).eval()
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids).logits, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("kv_heads", [1, 2], ids=["mqa", "gqa"])
def test_import_transformers_llama_keeps_grouped_query_heads(tmp_path, batch, kv_heads):
    ids, _ = batch
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=kv_heads, intermediate_size=48,
                                      max_position_embeddings=32, tie_word_embeddings=False)).eval()
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert ours.config.num_key_value_heads == kv_heads
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids).logits, atol=TOL, rtol=TOL)
