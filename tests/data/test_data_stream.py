"""The stream: exact-once over ranks x workers, equal batch counts, bit-identical resume."""
from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from ptft_engine.data import DataConfig, DataError, build_loader
from ptft_engine.data.index import read_members
from ptft_engine.data.order import EpochOrder
from ptft_engine.data.tokenizer import load_tokenizer


def _cfg(shards, tok, **kw) -> DataConfig:
    # packing: batch, so positions are documents (the packing plan's rows: test_data_plan.py)
    base = dict(shards=[shards], tokenizer=tok, seq_len=48, batch_size=2, docs_per_batch=3, packing="batch",
                num_workers=0,
                shuffle_buffer=16, seed=7, emit_sample_index=True)
    return DataConfig(**{**base, **kw})


def _take(loader, n=None) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if n is not None and len(out) == n:
            break
    return out


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_exact_once_across_2_ranks_x_2_workers(text_shards, tok_path):
    cfg = _cfg(text_shards, tok_path, num_workers=2)
    per_rank = [[b["sample_index"].tolist() for b in build_loader(cfg, objective="clm", rank=r, world_size=2)]
                for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 10  # 61 samples // (2 ranks * 3) steps
    seen = sorted(p for rank in per_rank for batch in rank for p in batch)
    assert seen == list(range(60))  # each position once; the 61st is cut so ranks stay equal
    # worker count does not change what a rank yields
    alone = [b["sample_index"].tolist() for b in build_loader(cfg.model_copy(update={"num_workers": 0}),
                                                              objective="clm", rank=1, world_size=2)]
    assert alone == per_rank[1]


def test_batches_hold_the_documents_of_their_positions(text_shards, tok_path):
    cfg = _cfg(text_shards, tok_path, seq_len=256, batch_size=4)
    loader = build_loader(cfg, objective="clm", rank=1, world_size=2)
    order = EpochOrder(loader.sources, seed=cfg.seed, epoch=0, block=cfg.shuffle_buffer)
    tok = load_tokenizer(tok_path)
    keys = set()
    for batch in _take(loader, 4):
        positions = batch["sample_index"].tolist()
        shard_ids, idxs = order.slice(positions[0], positions[-1] + 1)
        texts = []
        for s, i in zip(shard_ids.tolist(), idxs.tolist()):
            with open(order.shards[s].path, "rb") as fh:
                m = read_members(fh, order.shards[s].offset_table(), i)
            keys.add(m["__key__"])
            texts.append(m["txt"].decode())
        stream = [t for ids in tok.encode_batch(texts) for t in ids + [tok.eos_id]]
        n = int(batch["attention_mask"].sum())
        assert batch["input_ids"].flatten()[:n].tolist() == stream[:n]
        assert torch.equal(batch["labels"][batch["attention_mask"]], batch["input_ids"][batch["attention_mask"]])
        assert (batch["labels"][~batch["attention_mask"]] == -100).all()
    assert len(keys) == 12


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_equal_batch_counts_on_uneven_shards(text_shards, tok_path, world_size):
    cfg = _cfg(text_shards, tok_path, docs_per_batch=2)
    counts = [len(_take(build_loader(cfg, objective="clm", rank=r, world_size=world_size)))
              for r in range(world_size)]
    assert counts == [61 // (world_size * 2)] * world_size
    assert counts[0] == len(build_loader(cfg, objective="clm", rank=0, world_size=world_size))


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_resume_is_bit_identical_at_several_points(text_shards, tok_path, objective):
    cfg = _cfg(text_shards, tok_path, num_workers=2)
    full = _take(build_loader(cfg, objective=objective, rank=1, world_size=2))
    for k, workers in [(1, 0), (4, 2), (9, 1)]:
        first = build_loader(cfg, objective=objective, rank=1, world_size=2)
        _same(_take(first, k), full[:k])
        state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
        assert state["position"] == k * 2 * 3 and state["epoch"] == 0
        resumed = build_loader(cfg.model_copy(update={"num_workers": workers}), objective=objective, rank=1,
                               world_size=2)
        resumed.load_state_dict(state)
        assert resumed.batches_left() == len(full) - k
        _same(_take(resumed), full[k:])
        assert resumed.state_dict()["epoch"] == 1 and resumed.state_dict()["position"] == 0


def test_resume_on_a_different_world_size_continues_the_global_order(text_shards, tok_path):
    cfg = _cfg(text_shards, tok_path, docs_per_batch=2)
    old = [build_loader(cfg, objective="mlm", rank=r, world_size=2) for r in range(2)]
    before = [p for ld in old for b in _take(ld, 3) for p in b["sample_index"].tolist()]
    states = [ld.state_dict() for ld in old]
    assert states[0] == states[1] and sorted(before) == list(range(12))
    new = [build_loader(cfg, objective="mlm", rank=r, world_size=3) for r in range(3)]
    for ld in new:
        ld.load_state_dict(states[0])
    batches = [_take(ld) for ld in new]
    after = [[p for b in rank for p in b["sample_index"].tolist()] for rank in batches]
    assert len({len(rank) for rank in batches}) == 1  # equal batch counts on the new world size too
    steps = (61 - 12) // (3 * 2)
    assert sorted(p for a in after for p in a) == list(range(12, 12 + steps * 6))
    # batches depend only on their positions: the resumed 3-rank run yields bit for bit
    # what a 3-rank run started from scratch yields from position 12 (its step 2) on
    fresh = _take(build_loader(cfg, objective="mlm", rank=2, world_size=3))
    _same(batches[2], fresh[2:])


def test_epochs_reshuffle_and_remask(text_shards, tok_path):
    cfg = _cfg(text_shards, tok_path)
    loader = build_loader(cfg, objective="mlm", rank=0, world_size=1)
    e0 = _take(loader)
    assert loader.state_dict()["epoch"] == 1
    e1 = _take(loader)
    assert [b["sample_index"].tolist() for b in e0] == [b["sample_index"].tolist() for b in e1]  # positions
    assert any(not torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(e0, e1))  # contents differ
    again = build_loader(cfg, objective="mlm", rank=0, world_size=1, epoch=1)
    _same(_take(again), e1)


def test_config_and_start_errors(text_shards, tok_path, tmp_path):
    with pytest.raises(ValidationError, match="shuffle_bufer"):
        DataConfig(shards=[text_shards], shuffle_bufer=3)
    assert DataConfig(shards=text_shards).shards == [text_shards]
    with pytest.raises(ValidationError, match="weights has 2 entries"):
        DataConfig(shards=[text_shards], weights=[1, 2])
    with pytest.raises(ValidationError, match="docs_per_batch is for text"):
        DataConfig(shards=[text_shards], kind="image", docs_per_batch=4)
    with pytest.raises(DataError, match="missing-shards"):
        build_loader(_cfg(str(tmp_path / "missing-shards"), tok_path), objective="mlm")
    with pytest.raises(DataError, match="matches no files"):
        build_loader(_cfg(str(tmp_path / "x-*.tar"), tok_path), objective="mlm")
    with pytest.raises(DataError, match="needs data kind 'image'"):
        build_loader(_cfg(text_shards, tok_path), objective="simclr")
    with pytest.raises(DataError, match="tokenizer"):
        build_loader(_cfg(text_shards, None), objective="mlm")
    loader = build_loader(_cfg(text_shards, tok_path), objective="mlm")
    with pytest.raises(DataError, match="seed"):
        loader.load_state_dict({**loader.state_dict(), "seed": 1})
    with pytest.raises(DataError, match="shards changed"):
        loader.load_state_dict({**loader.state_dict(), "epoch_length": 99})


def test_eval_split_reads_eval_shards_in_order(text_shards, tok_path, tmp_path):
    from data_helpers import write_text_shards

    eval_dir = write_text_shards(tmp_path, 9, name="eval")
    cfg = _cfg(text_shards, tok_path, eval_shards=[eval_dir])
    ev = build_loader(cfg, objective="clm", split="eval")
    assert [b["sample_index"].tolist() for b in ev] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    # the same batches and MLM masks at every evaluation, whatever the training epoch
    again = list(build_loader(cfg, objective="mlm", split="eval", epoch=3))
    _same(again, list(build_loader(cfg, objective="mlm", split="eval")))
    with pytest.raises(DataError, match="eval_shards"):
        build_loader(_cfg(text_shards, tok_path), objective="clm", split="eval")
