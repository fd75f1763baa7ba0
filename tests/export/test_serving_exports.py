"""Exports carry what transformers tooling reads: model_max_length (pipelines truncate),
left padding and bos/eos/pad ids for decoders (generate stops at <eos>, batched equals
unbatched), a ViT pooler that reproduces the engine's [CLS] pooling."""
import json

import pytest
import torch
import transformers
from export_fixtures import tiny_encoder

from ptft_engine.data.tokenizer import train_tokenizer
from ptft_engine.export import export_model
from ptft_engine.models import DecoderConfig, ViTConfig, build_model

WORDS = "the cat sat on a mat while dogs ran in the park and birds sang all day long".split()
TEXTS = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 3


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    out = {}
    for kind in ("wordpiece", "bpe"):
        path = root / f"{kind}.json"
        train_tokenizer(TEXTS, kind=kind, vocab_size=90, min_frequency=1).save(str(path))
        out[kind] = path
    return out


def test_fill_mask_pipeline_truncates_a_long_input(tmp_path, tokenizers):
    export_model(tiny_encoder(), tmp_path / "bert", tokenizer=tokenizers["wordpiece"])
    tok_cfg = json.loads((tmp_path / "bert" / "tokenizer_config.json").read_text())
    assert tok_cfg["model_max_length"] == 40 and tok_cfg["padding_side"] == "right"
    fill = transformers.pipeline("fill-mask", model=str(tmp_path / "bert"))
    text = "the cat [MASK] on a mat " + " ".join(WORDS * 20)  # ~350 tokens, the model has 40 positions
    assert len(fill.tokenizer(text)["input_ids"]) > 40
    preds = fill(text, tokenizer_kwargs={"truncation": True})
    assert len(preds) == 5 and all(0.0 <= p["score"] <= 1.0 for p in preds)


def decoder(tokenizer, style="gpt2"):
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer)).get_vocab_size()
    return build_model(DecoderConfig(style=style, vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=40)).eval()


def _eos_loving(model, eos: int):
    """ln_f outputs the <eos> embedding (times 10) at every position: greedy decoding picks
    <eos> first whatever the prompt, so generation must stop right there."""
    with torch.no_grad():
        model.final_norm.weight.zero_()
        model.final_norm.bias.copy_(10 * model.embeddings.word_embeddings.weight[eos])
    return model


def test_generate_stops_at_eos(tmp_path, tokenizers):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizers["bpe"]))
    eos, pad, bos = tok.token_to_id("<eos>"), tok.token_to_id("[PAD]"), tok.token_to_id("<bos>")
    export_model(_eos_loving(decoder(tokenizers["bpe"]), eos), tmp_path / "gpt", tokenizer=tokenizers["bpe"])
    config = json.loads((tmp_path / "gpt" / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"], config["bos_token_id"]) == (eos, pad, bos)
    gen_cfg = json.loads((tmp_path / "gpt" / "generation_config.json").read_text())
    assert gen_cfg["eos_token_id"] == eos and gen_cfg["pad_token_id"] == pad
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "gpt").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "gpt")
    prompt = hf_tok("the cat sat", return_tensors="pt")
    assert prompt["input_ids"][0, -1].item() != eos  # prompts do not end in <eos>
    out = hf.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 1 and out[0, -1].item() == eos


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_batched_left_padded_generation_equals_unbatched(tmp_path, tokenizers, style):
    torch.manual_seed(5)
    export_model(decoder(tokenizers["bpe"], style), tmp_path / "lm", tokenizer=tokenizers["bpe"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "lm")
    assert tok.padding_side == "left" and "token_type_ids" not in tok.model_input_names
    prompts = ["the cat sat on a mat while dogs", "birds", "ran in the park"]
    batch = tok(prompts, padding=True, return_tensors="pt")
    for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
        n_pad = int((mask == 0).sum())
        assert (row[:n_pad] == tok.pad_token_id).all() and (row[n_pad:] != tok.pad_token_id).all()  # pads first
    kwargs = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
    together = hf.generate(**batch, **kwargs)[:, batch["input_ids"].shape[1]:]
    for i, p in enumerate(prompts):
        alone = hf.generate(**tok(p, return_tensors="pt"), **kwargs)[0, -6:]
        assert torch.equal(together[i], alone), (i, together[i], alone)


def test_vit_export_pooler_output_is_the_engine_cls_feature(tmp_path):
    torch.manual_seed(4)
    vit = build_model(ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64)).eval()
    export_model(vit, tmp_path / "vit", fmt="hf")
    hf = transformers.AutoModel.from_pretrained(tmp_path / "vit").eval()
    pixels = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        ours, theirs = vit(pixels), hf(pixel_values=pixels).pooler_output
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
