"""The column sidecar of big indexes: same shards as the JSON list, no per-shard call at load."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from data_helpers import write_text_shards

from ptft_engine.data import index_columns
from ptft_engine.data.errors import DataError
from ptft_engine.data.index import load_index
from ptft_engine.data.order import EpochOrder


def _as_columns(shards: str) -> str:
    """The same shards, indexed by a column sidecar in a second index file."""
    index = load_index(os.path.join(shards, "index.json"))
    index.save(os.path.join(shards, "index.json"), columns=True)
    return os.path.join(shards, "index.json")


def test_columns_hold_the_same_shards_and_give_the_same_order(tmp_path):
    shards = write_text_shards(tmp_path, 30)
    listed = load_index(os.path.join(shards, "index.json"))
    doc = json.load(open(_as_columns(shards)))
    assert "shards" not in doc and doc["num_shards"] == len(listed.shards) == 5
    cols = load_index(os.path.join(shards, "index.json"))
    assert isinstance(cols.shards, index_columns.ShardColumns) and cols.total == listed.total == 30
    assert cols.kind == listed.kind
    for a, b in zip(listed.shards, cols.shards):
        assert (a.path, a.samples, a.bytes, a.sha256, a.offsets_path) == (b.path, b.samples, b.bytes, b.sha256,
                                                                         b.offsets_path)
        assert np.array_equal(a.offset_table(), b.offset_table())
    o1, o2 = (EpochOrder([x, x], seed=0, epoch=1, block=4, weights=[2, 1]) for x in (listed, cols))
    assert [a.tolist() for a in o1.slice(0, 30)] == [a.tolist() for a in o2.slice(0, 30)]
    assert o2.shards[7].path == listed.shards[2].path  # the second source's shard 2, by global id
    clone = pickle.loads(pickle.dumps(cols.shards))  # what a spawned DataLoader worker gets
    assert clone[4].sha256 == listed.shards[4].sha256


def test_column_index_touches_no_shard_at_load_and_rejects_a_stale_sidecar(tmp_path, monkeypatch):
    shards = write_text_shards(tmp_path, 30)
    path = _as_columns(shards)
    os.remove(os.path.join(shards, "shard-000001.tar"))
    calls = []
    monkeypatch.setattr(os.path, "exists", lambda p: calls.append(p) or True)
    monkeypatch.setattr(os, "stat", lambda *a, **k: calls.append(a) or pytest.fail("stat at load"))
    index = load_index(path)
    monkeypatch.undo()
    assert calls == [] and len(index.shards) == 5  # the missing shard shows when it is opened
    doc = json.load(open(path))
    doc["num_shards"] = 6
    json.dump(doc, open(path, "w"))
    with pytest.raises(DataError, match="holds 5 shards but index .* says 6"):
        load_index(path)
    os.remove(os.path.join(shards, index_columns.COLUMNS_NAME))
    with pytest.raises(DataError, match="index.columns.safetensors.*does not exist"):
        load_index(path)


def test_shard_writer_switches_to_columns_for_many_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(index_columns, "COLUMNS_MIN_SHARDS", 3)
    many = write_text_shards(tmp_path, 30, name="many")  # 5 shards
    few = write_text_shards(tmp_path, 10, name="few")  # 2 shards
    assert "columns" in json.load(open(os.path.join(many, "index.json")))
    assert "shards" in json.load(open(os.path.join(few, "index.json")))
    assert load_index(os.path.join(many, "index.json")).total == 30


def test_loader_over_columns_yields_what_the_json_index_yields(tmp_path, tok_path):
    import shutil

    import torch

    from ptft_engine.data import DataConfig, build_loader

    listed = [write_text_shards(tmp_path, n, name=name) for n, name in ((30, "a"), (16, "b"))]
    cols = [shutil.copytree(d, str(tmp_path / f"{os.path.basename(d)}_cols")) for d in listed]
    for d in cols:
        _as_columns(d)

    def batches(dirs, workers, **packing):
        cfg = DataConfig(shards=dirs, tokenizer=tok_path, seq_len=48, batch_size=2, num_workers=workers,
                         shuffle_buffer=8, seed=3, weights=[2, 1], emit_sample_index=True, **packing)
        return [b for b in build_loader(cfg, objective="clm", rank=1, world_size=2)]

    for packing in ({"packing": "batch", "docs_per_batch": 3}, {}):  # documents, then packing-plan rows
        want, got = batches(listed, 0, **packing), batches(cols, 2, **packing)  # workers: the view crosses into them
        assert len(want) == len(got) == (7 if packing else len(want)) > 0
        for x, y in zip(want, got):
            assert all(torch.equal(x[k], y[k]) for k in x)
