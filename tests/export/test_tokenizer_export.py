"""An export's tokenizer loads offline with transformers.AutoTokenizer and adds the special
tokens the model was trained with, while the engine's own pipeline adds none (no doubles)."""
import json

import pytest
from export_fixtures import tiny_encoder
from transformers import AutoTokenizer

from ptft_engine.data.tokenizer import load_tokenizer, train_tokenizer
from ptft_engine.export import export_model

TEXTS = ["hello world", "hello there, world", "a small world of words", "say hello again"] * 10


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def exported_tokenizer(tmp_path, kind, strip_post_processor=False):
    path = tmp_path / "tok" / "tokenizer.json"
    path.parent.mkdir()
    train_tokenizer(TEXTS, kind=kind, vocab_size=120, min_frequency=1).save(str(path))
    if strip_post_processor:  # as saved before trained tokenizers carried one
        data = json.loads(path.read_text())
        data["post_processor"] = None
        path.write_text(json.dumps(data))
    export_model(tiny_encoder(), tmp_path / "out", tokenizer=path)
    return path, AutoTokenizer.from_pretrained(tmp_path / "out")


@pytest.mark.parametrize("legacy", [False, True], ids=["trained", "legacy-without-post-processor"])
def test_wordpiece_export_adds_cls_and_sep_in_transformers(tmp_path, legacy):
    path, hf = exported_tokenizer(tmp_path, "wordpiece", strip_post_processor=legacy)
    tokens = hf.convert_ids_to_tokens(hf("hello world")["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "[CLS]" not in tokens[1:-1]
    assert hf.decode(hf("hello world")["input_ids"], skip_special_tokens=True) == "hello world"
    pair = hf("hello", "world")
    assert hf.convert_ids_to_tokens(pair["input_ids"]) == ["[CLS]", "hello", "[SEP]", "world", "[SEP]"]
    assert pair["token_type_ids"] == [0, 0, 0, 1, 1]
    assert hf.mask_token == "[MASK]" and hf.pad_token_id == 0
    # the data pipeline packs [CLS]/[SEP] itself: its encodings must stay free of them
    info = load_tokenizer(str(path))
    assert not set(info.encode_batch(["hello world"])[0]) & set(info.special_ids)


def test_bpe_export_adds_no_special_tokens(tmp_path):
    _, hf = exported_tokenizer(tmp_path, "bpe")
    ids = hf("hello world")["input_ids"]
    assert not set(ids) & set(hf.all_special_ids)
    assert hf.decode(ids) == "hello world"
    assert (hf.bos_token, hf.eos_token) == ("<bos>", "<eos>")
