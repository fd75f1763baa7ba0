"""Tokenizer training: round trips on English and Chinese, special tokens, the CLI."""
from __future__ import annotations

import pytest
from data_helpers import EN, ZH

from ptft_engine import cli
from ptft_engine.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, role_ids, role_tokens, train_tokenizer

MIXED = ["混合 text: 预训练 needs data, 数据!", "Ünïcödé and emoji 🙂 survive", "未登录的字：龘"]


@pytest.fixture(scope="module", params=["bpe", "wordpiece"])
def trained(request, tmp_path_factory):
    tok = train_tokenizer((EN + ZH) * 20, kind=request.param, vocab_size=300, min_frequency=1)
    path = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    tok.save(str(path))
    return request.param, load_tokenizer(str(path))


def test_special_tokens_have_fixed_ids(trained):
    _, info = trained
    vocab = info.tokenizer.get_vocab()
    assert [vocab[t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert (info.pad_id, info.cls_id, info.sep_id, info.mask_id) == (0, 2, 3, 4)
    assert (info.bos_id, info.eos_id) == (5, 6) and info.special_ids == list(range(7))
    # special tokens never appear from plain text, even if it spells them out
    ids = info.encode_batch(["plain words only"])[0]
    assert not set(ids) & set(info.special_ids)


def test_round_trip_english_and_chinese(trained):
    kind, info = trained
    texts = EN + ZH
    for text, ids in zip(texts, info.encode_batch(texts)):
        assert all(0 <= i < info.vocab_size for i in ids)
        out = info.decode(ids)
        if kind == "bpe":
            assert out == text  # byte-level: exact
        else:  # WordPiece puts spaces around CJK characters, as BERT does
            assert out.replace(" ", "") == text.replace(" ", "")
    if kind == "bpe":  # unseen characters still round-trip through bytes
        assert [info.decode(ids) for ids in info.encode_batch(MIXED)] == MIXED
    zh_ids = info.encode_batch([ZH[0]])[0]
    assert info.unk_id not in zh_ids and len(zh_ids) <= len(ZH[0]) * 3


def test_cli_train_on_shards_and_encode(tmp_path, text_shards, capsys):
    out = tmp_path / "tok"
    assert cli.main(["tokenizer", "train", text_shards, "--kind", "wordpiece", "--vocab-size", "200",
                     "--min-frequency", "1", "--output", str(out)]) == 0
    assert "trained wordpiece tokenizer on 61 texts" in capsys.readouterr().out
    assert cli.main(["tokenizer", "encode", "--tokenizer", str(out), "深度 data"]) == 0
    tokens = capsys.readouterr().out.splitlines()[0].split()
    assert tokens[:2] == ["深", "度"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["tokenizer", "train", str(tmp_path / "missing"), "--output", str(tmp_path / "t")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "none.json"), "x"]) == 1
    assert "ptft tokenizer train" in capsys.readouterr().err


def test_cli_train_on_raw_text_files(tmp_path, capsys):
    corpus = tmp_path / "raw"
    corpus.mkdir()
    (corpus / "zh.txt").write_text("\n".join(ZH * 5))
    (corpus / "en.txt").write_text("\n".join(EN * 5))
    assert cli.main(["tokenizer", "train", str(corpus), "--vocab-size", "300", "--min-frequency", "1",
                     "--max-texts", "30", "--output", str(tmp_path / "tok")]) == 0
    assert "on 30 texts" in capsys.readouterr().out
    info = load_tokenizer(str(tmp_path / "tok"))
    assert info.decode(info.encode_batch([ZH[1]])[0]) == ZH[1]


def test_one_role_table_serves_the_engine_and_hugging_face():
    # a BERT-style vocabulary: [CLS]/[SEP] stand in for bos/eos in the engine, but a
    # transformers tokenizer_config names only a role's own token
    bert = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    assert role_ids(bert) == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4, "bos": 2, "eos": 3}
    assert role_tokens(bert, own_only=True) == {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]",
                                                "mask": "[MASK]", "bos": None, "eos": None}
    gpt2 = {"<|endoftext|>": 7}
    assert role_tokens(gpt2, own_only=True)["eos"] == "<|endoftext|>" and role_ids(gpt2)["cls"] is None


_TRAIN_AND_HASH = """
import hashlib, sys
from data_helpers import EN, ZH
from ptft_engine.data.tokenizer import train_tokenizer
texts = [f"{w}{i} {w}ing {w}ed un{w}" for i in range(40) for w in ("walk", "talk", "jump", "zip")] + (EN + ZH) * 3
tok = train_tokenizer(texts, kind=sys.argv[1], vocab_size=400, min_frequency=1)
print(hashlib.sha256(tok.to_str().encode()).hexdigest())
"""


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_training_is_the_same_in_every_process(kind):
    # The trainer's hash maps are seeded per process: an unfixed WordPiece vocabulary
    # differed between two processes on these texts (nearly always: many equal counts).
    import os
    import subprocess
    import sys

    here = os.path.dirname(__file__)
    runs = {subprocess.run([sys.executable, "-c", _TRAIN_AND_HASH, kind], cwd=here, check=True,
                           capture_output=True, text=True).stdout for _ in range(3)}
    assert len(runs) == 1, f"{kind}: {len(runs)} different tokenizers from the same texts"


def test_wordpiece_continuation_pieces_are_plain_vocabulary():
    tok = train_tokenizer(EN * 5, kind="wordpiece", vocab_size=200, min_frequency=1)
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    assert added == set(SPECIAL_TOKENS)  # "##e" and the like are not added tokens
    assert "##e" in tok.get_vocab()
    # so text that spells a piece is split like any text, and decoding keeps it
    ids = tok.encode("x ##e", add_special_tokens=False).ids
    assert tok.decode(ids) != "x"
