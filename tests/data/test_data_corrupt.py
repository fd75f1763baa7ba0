"""Corrupt data: truncated or garbled tars and undecodable members are skipped and named;
strict mode raises naming them; a missing shard fails at start."""
from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import webdataset as wds
from data_helpers import write_text_shards

from ptft_engine.cli import main
from ptft_engine.data import CorruptSampleError, DataConfig, DataError, build_loader
from ptft_engine.data.index import load_index, scan_tar


def _cfg(shards, tok, **kw):
    return DataConfig(**{**dict(shards=[shards], tokenizer=tok, seq_len=32, batch_size=2, docs_per_batch=3,
                                packing="batch", num_workers=0, emit_sample_index=True), **kw})


def _positions(loader):
    return [p for b in loader for p in b["sample_index"].tolist()]


@pytest.fixture
def shards(tmp_path):
    return write_text_shards(tmp_path, 21)  # 3 shards of 7


def _forget_sha256(shards):
    """Drop the sha256 from the index, so damage reaches the per-sample checks."""
    path = os.path.join(shards, "index.json")
    doc = json.loads(open(path).read())
    for entry in doc["shards"]:
        entry["sha256"] = None
    open(path, "w").write(json.dumps(doc))


def test_changed_shard_fails_its_sha256_and_is_skipped_whole(shards, tok_path, tmp_path, caplog):
    victim = load_index(os.path.join(shards, "index.json")).shards[1]
    reference = _positions(build_loader(_cfg(shards, tok_path, cache_dir=str(tmp_path / "c")), objective="clm"))
    with open(victim.path, "r+b") as f:  # one byte of a text member, same size: the tar still reads fine
        f.seek(int(victim.offset_table()[3]) + 512)
        f.write(b"X")
    loader = build_loader(_cfg(shards, tok_path, cache_dir=str(tmp_path / "c")), objective="clm")
    with caplog.at_level(logging.WARNING, logger="ptft_engine.data"):
        seen = _positions(loader)
    assert loader.stats["skipped"] == 7 and loader.stats["corrupt_shards"] == 1
    assert len(reference) == 21 and len(seen) == 21 - 7 and set(seen) < set(reference)
    assert f"skipping shard {victim.path}: sha256" in caplog.text
    with pytest.raises(CorruptSampleError, match=r"shard-000001.tar.*sha256 .* does not match") as err:
        _positions(build_loader(_cfg(shards, tok_path, strict=True, cache_dir=str(tmp_path / "c")), objective="clm"))
    assert "\n" not in str(err.value)
    with pytest.raises(CorruptSampleError, match=r"shard-000001.tar.*sha256 .* does not match"):
        _positions(build_loader(_cfg(shards, tok_path, strict=True, num_workers=2, cache_dir=str(tmp_path / "c")),
                                objective="clm"))


def test_truncated_shard_is_skipped_and_named(shards, tok_path, caplog):
    _forget_sha256(shards)
    victim = load_index(os.path.join(shards, "index.json")).shards[1]
    with open(victim.path, "r+b") as f:
        f.truncate(victim.offset_table()[4] + 100)  # samples 4..6 of shard 1 are cut off
    loader = build_loader(_cfg(shards, tok_path), objective="clm")
    with caplog.at_level(logging.WARNING, logger="ptft_engine.data"):
        seen = _positions(loader)
    assert loader.stats["skipped"] == 3 and len(seen) == 21 - 3
    assert f"shard {victim.path}, key sample #4" in caplog.text and "truncated" in caplog.text
    with pytest.raises(CorruptSampleError, match="shard-000001.tar"):
        _positions(build_loader(_cfg(shards, tok_path, strict=True), objective="clm"))
    # strict also holds across DataLoader workers: the error reaches the main process by type
    with pytest.raises(CorruptSampleError, match="shard-000001.tar"):
        _positions(build_loader(_cfg(shards, tok_path, strict=True, num_workers=2), objective="clm"))


def test_garbled_header_and_undecodable_member(shards, tok_path, tmp_path, caplog):
    _forget_sha256(shards)
    index = load_index(os.path.join(shards, "index.json"))
    garbled = index.shards[0]
    with open(garbled.path, "r+b") as f:
        f.seek(garbled.offset_table()[2] + 10)
        f.write(b"\x00garbage\xff" * 4)  # the header checksum no longer matches
    # a shard whose member is not UTF-8, written as another source (plain tar, no index)
    extra = tmp_path / "extra.tar"
    with wds.TarWriter(str(extra), encoder=False) as w:
        w.write({"__key__": "good0", "txt": b"fine text here"})
        w.write({"__key__": "bad1", "txt": b"\xff\xfe\xfa not utf-8"})
        w.write({"__key__": "good2", "txt": b"more fine text"})
    cfg = _cfg(shards, tok_path, docs_per_batch=1, batch_size=1)
    cfg = cfg.model_copy(update={"shards": [shards, str(extra)]})
    loader = build_loader(cfg, objective="clm")
    with caplog.at_level(logging.WARNING, logger="ptft_engine.data"):
        seen = _positions(loader)
    assert loader.stats["skipped"] == 2 and len(seen) == 24 - 2
    assert "sample #2" in caplog.text and "key bad1: .txt is not UTF-8" in caplog.text
    with pytest.raises(CorruptSampleError, match="bad1"):
        _positions(build_loader(cfg.model_copy(update={"strict": True, "shards": [str(extra)]}), objective="clm"))


def test_unindexed_damaged_tar_keeps_the_samples_before_the_damage(shards, tok_path, tmp_path, caplog):
    index = load_index(os.path.join(shards, "index.json"))
    copy = tmp_path / "copy.tar"
    shutil.copy(index.shards[0].path, copy)
    with open(copy, "r+b") as f:
        f.truncate(index.shards[0].offset_table()[5] + 512 + 10)  # sample 5: header whole, data cut
    info = scan_tar(str(copy))
    assert info.samples == 5 and info.offsets == index.shards[0].offset_table()[:6].tolist()
    assert info.damaged.endswith("after 5 complete samples")
    # `ptft shard --index-only` records the damage; a run on that index says it again at start
    assert main(["shard", "--index-only", str(copy), "--output", str(tmp_path / "idx")]) == 0
    assert load_index(str(tmp_path / "idx" / "index.json")).shards[0].damaged == info.damaged
    with caplog.at_level("WARNING"):
        build_loader(_cfg(str(tmp_path / "idx"), tok_path), objective="clm")
    assert "copy.tar was damaged when indexed (ReadError" in caplog.text


def test_missing_shard_fails_at_start_not_later(shards, tok_path):
    os.remove(load_index(os.path.join(shards, "index.json")).shards[2].path)
    with pytest.raises(DataError, match="shard-000002.tar.*does not exist"):
        build_loader(_cfg(shards, tok_path), objective="mlm")


def test_missing_or_wrong_offset_file_is_named(shards, tok_path):
    index = load_index(os.path.join(shards, "index.json"))
    with open(index.shards[1].offsets_path, "ab") as f:
        f.write(b"\0" * 8)  # one entry too many
    with pytest.raises(DataError, match="shard-000001.idx.*holds 9 entries, expected 8"):
        _positions(build_loader(_cfg(shards, tok_path, shuffle=False), objective="clm"))
    os.remove(index.shards[0].offsets_path)
    with pytest.raises(DataError, match="shard-000000.idx.*does not exist"):
        build_loader(_cfg(shards, tok_path), objective="clm")
