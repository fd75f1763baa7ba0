"""Packing plan (packing: plan): every token once per epoch, documents never attend across
segments, the epoch tail, exact and elastic resume, pre-tokenised shards."""
from __future__ import annotations

import json
import logging
import os
from collections import Counter

import numpy as np
import pytest
import torch
from data_helpers import doc_text, write_text_shards

from ptft_engine.data import CorruptSampleError, DataConfig, DataError, build_loader, sources
from ptft_engine.data.index import load_index, read_members, resolve_source
from ptft_engine.data.order import EpochOrder
from ptft_engine.data.shards import write_shards
from ptft_engine.data.tokenizer import load_tokenizer


def _cfg(shards, tok, **kw) -> DataConfig:
    base = dict(shards=[shards], tokenizer=tok, seq_len=16, batch_size=2, num_workers=0, shuffle_buffer=16,
                seed=3, emit_sample_index=True, mask_in="step")  # step: batches come unmasked
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


def _docs_in_epoch_order(cfg, tok, epoch=0) -> list[list[int]]:
    """The corpus tokenised one document at a time, in the epoch's order (no packing code)."""
    order = EpochOrder([resolve_source(s) for s in cfg.shards], seed=cfg.seed, epoch=epoch, block=cfg.shuffle_buffer)
    shard_ids, idxs = order.slice(0, len(order))
    docs = []
    for s, i in zip(shard_ids.tolist(), idxs.tolist()):
        with open(order.shards[s].path, "rb") as fh:
            text = read_members(fh, order.shards[s].offset_table(), i)["txt"].decode()
        docs.append(tok.encode_batch([text])[0])
    return docs


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_every_token_of_the_corpus_appears_exactly_once(text_shards, tok_path, objective):
    tok = load_tokenizer(tok_path)
    cfg = _cfg(text_shards, tok_path, batch_size=1)  # one rank, one row per step: no tail to drop
    docs = _docs_in_epoch_order(cfg, tok)
    loader = build_loader(cfg, objective=objective)
    batches = list(loader)
    mask = torch.cat([b["attention_mask"] for b in batches])
    ids = torch.cat([b["input_ids"] for b in batches])
    if objective == "clm":
        # concatenate-and-chunk: the rows, read in order, are the epoch's documents each ended by <eos>
        expected = [t for d in docs for t in d + [tok.eos_id]]
        assert ids[mask].tolist() == expected and bool(mask.flatten()[: len(expected)].all())
    else:
        body = mask & (ids != tok.cls_id) & (ids != tok.sep_id)
        assert ids[body].tolist() == [t for d in docs for t in d]  # pieces in order: docs continue across rows
        assert Counter(ids[mask].tolist())[tok.cls_id] == int(mask.sum() - body.sum()) // 2
    assert loader.stats["dropped_tokens"] == 0 and loader.stats["samples"] == 61
    assert loader.stats["tokens"] == int(mask.sum())
    assert loader.stats["tokens"] + loader.stats["pad_tokens"] == mask.numel()
    assert loader.stats["pad_tokens"] <= (16 if objective == "clm" else 2 * len(batches))


def _content(batches, tok, objective) -> Counter:
    """Document tokens (and <eos>) of batches, without [CLS]/[SEP] and padding."""
    out = Counter()
    for b in batches:
        m = b["attention_mask"]
        if objective == "mlm":
            m = m & (b["input_ids"] != tok.cls_id) & (b["input_ids"] != tok.sep_id)
        out.update(b["input_ids"][m].tolist())
    return out


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_epoch_tail_opens_the_next_epoch_across_2_ranks_x_2_workers(text_shards, tok_path, objective):
    tok = load_tokenizer(tok_path)
    cfg = _cfg(text_shards, tok_path, batch_size=3, num_workers=2)
    docs = _docs_in_epoch_order(cfg, tok)
    corpus = Counter(t for d in docs for t in (d + [tok.eos_id] if objective == "clm" else d))
    loaders = [build_loader(cfg, objective=objective, rank=r, world_size=2) for r in range(2)]
    epochs = [[list(ld) for ld in loaders] for _ in range(2)]  # each loader runs on into epoch 1
    seen0 = _content([b for rank in epochs[0] for b in rank], tok, objective)
    rows0 = sorted(p for rank in epochs[0] for b in rank for p in b["sample_index"].tolist())
    assert not seen0 - corpus and rows0 == list(range(len(rows0)))  # nothing twice, nothing foreign
    tail = corpus - seen0
    assert 0 < sum(tail.values()) < 2 * 3 * 16  # the rows after the last whole step of 2 ranks x 3 rows
    first_step = _content([rank[0] for rank in epochs[1]], tok, objective)
    assert not tail - first_step  # ... are trained first thing in the next epoch, not dropped
    assert all(ld.stats.get("dropped_tokens", 0) == 0 for ld in loaders)
    total = sum(ld.stats["tokens"] for ld in loaders)
    assert sum(ld.stats["pad_tokens"] for ld in loaders) < 0.02 * total + 16
    # a loader made for epoch 1 (as the trainer makes one per epoch) carries the same tail
    for r in range(2):
        _same(list(build_loader(cfg, objective=objective, rank=r, world_size=2, epoch=1)), epochs[1][r])


def test_eval_drops_its_tail_and_counts_it_once(text_shards, tok_path):
    tok = load_tokenizer(tok_path)
    cfg = _cfg(text_shards, tok_path, batch_size=3, eval_shards=[text_shards])
    corpus = Counter(t for d in _docs_in_epoch_order(cfg, tok) for t in d + [tok.eos_id])
    loaders = [build_loader(cfg, objective="clm", rank=r, world_size=2, split="eval") for r in range(2)]
    seen = _content([b for ld in loaders for b in ld], tok, "clm")
    assert loaders[0].stats["dropped_tokens"] == sum((corpus - seen).values()) > 0
    assert loaders[1].stats["dropped_tokens"] == 0


def test_documents_never_attend_across_segments(text_shards, tok_path):
    from ptft_engine.ops import attention

    tok = load_tokenizer(tok_path)
    cfg = _cfg(text_shards, tok_path, seq_len=24, batch_size=4)
    docs = _docs_in_epoch_order(cfg, tok)
    pieces, split = [], 0
    g = torch.Generator().manual_seed(0)
    for b in _take(build_loader(cfg, objective="mlm"), 3):
        ids, seg = b["input_ids"], b["segment_ids"]
        assert torch.equal(b["attention_mask"], seg > 0)
        q, k, v = (torch.randn(4, 2, 24, 8, generator=g) for _ in range(3))  # (B, H, S, D)
        out = attention(q, k, v, segment_ids=seg, attention_mask=b["attention_mask"], backend="reference")
        for r in range(4):
            for s in seg[r].unique().tolist():
                if s == 0:
                    continue
                idx = (seg[r] == s).nonzero().flatten()
                assert torch.equal(idx, torch.arange(int(idx[0]), int(idx[-1]) + 1))  # contiguous
                tokens = ids[r, idx].tolist()
                assert tokens[0] == tok.cls_id and tokens[-1] == tok.sep_id
                pieces.append(tokens[1:-1])
                alone = attention(q[r:r + 1, :, idx], k[r:r + 1, :, idx], v[r:r + 1, :, idx], backend="reference")
                torch.testing.assert_close(out[r:r + 1, :, idx], alone)
    # each piece is a contiguous part of one document; consecutive pieces rebuild the documents
    stream = [t for d in docs for t in d]
    assert [t for p in pieces for t in p] == stream[: sum(map(len, pieces))]
    at = 0
    for p in pieces:
        d = next(i for i, e in enumerate(np.cumsum([len(x) for x in docs])) if e > at)
        start = int(sum(len(x) for x in docs[:d]))
        split += at > start
        assert at + len(p) <= start + len(docs[d])  # never runs into the next document
        at += len(p)
    assert split > 0  # some documents did continue in the next row


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_resume_at_a_row_is_bit_identical(text_shards, tok_path, objective):
    cfg = _cfg(text_shards, tok_path, num_workers=2, mask_in="worker")
    full = _take(build_loader(cfg, objective=objective, rank=1, world_size=2))
    for k, workers in [(1, 0), (5, 2)]:
        first = build_loader(cfg, objective=objective, rank=1, world_size=2)
        _same(_take(first, k), full[:k])
        state = json.loads(json.dumps(first.state_dict()))
        assert state["position"] == k * 2 * 2 and state["unit"] == "rows"
        resumed = build_loader(cfg.model_copy(update={"num_workers": workers}), objective=objective, rank=1,
                               world_size=2)
        resumed.load_state_dict(state)
        assert resumed.batches_left() == len(full) - k
        _same(_take(resumed), full[k:])
    with pytest.raises(DataError, match="counts rows, but this config counts samples"):
        build_loader(cfg.model_copy(update={"packing": "batch"}), objective=objective).load_state_dict(state)


def test_resume_on_another_world_size_continues_the_plan(text_shards, tok_path):
    cfg = _cfg(text_shards, tok_path, mask_in="worker")
    old = [build_loader(cfg, objective="mlm", rank=r, world_size=2) for r in range(2)]
    before = [p for ld in old for b in _take(ld, 3) for p in b["sample_index"].tolist()]
    states = [ld.state_dict() for ld in old]
    assert states[0] == states[1] and sorted(before) == list(range(12))
    new = [build_loader(cfg, objective="mlm", rank=r, world_size=3) for r in range(3)]
    for ld in new:
        ld.load_state_dict(states[0])
    batches = [_take(ld) for ld in new]
    after = sorted(p for rank in batches for b in rank for p in b["sample_index"].tolist())
    assert len({len(rank) for rank in batches}) == 1 and after == list(range(12, 12 + len(after)))
    fresh = _take(build_loader(cfg, objective="mlm", rank=2, world_size=3))
    _same(batches[2], fresh[2:])  # rows (and their masks) depend only on their index


def test_pretokenised_shards_equal_read_time_tokenisation(tmp_path, tok_path):
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": doc_text(i), "y": i % 3}) + "\n" for i in range(40)))
    raw = str(tmp_path / "raw")
    pre = str(tmp_path / "pre")
    write_shards([str(src)], raw, sources.Options(format="jsonl"), shard_samples=7, workers=1, progress=False)
    write_shards([str(src)], pre, sources.Options(format="jsonl", tokenizer=tok_path), shard_samples=7, workers=2,
                 progress=False)
    tok = load_tokenizer(tok_path)
    index = load_index(os.path.join(pre, "index.json"))
    for shard in index.shards:
        assert shard.ids_dtype == "<u2"
        assert os.path.basename(shard.lengths_path) == os.path.basename(shard.path)[:-4] + ".lens"
        with open(shard.path, "rb") as fh:
            samples = [read_members(fh, shard.offset_table(), i) for i in range(shard.samples)]
        expected = tok.encode_batch([s["txt"].decode() for s in samples])
        assert [np.frombuffer(s["ids"], "<u2").tolist() for s in samples] == expected
        assert shard.token_lengths().tolist() == [len(e) for e in expected]
    for objective in ("clm", "mlm"):
        a = build_loader(_cfg(raw, tok_path, mask_in="worker"), objective=objective)
        b = build_loader(_cfg(pre, tok_path, mask_in="worker"), objective=objective)
        assert len(b.builder.id_shards) == len(index.shards) and not a.builder.id_shards
        _same(list(a), list(b))
        keys = ("tokens", "pad_tokens", "dropped_tokens", "samples", "skipped", "batches")
        assert [a.stats[k] for k in keys] == [b.stats[k] for k in keys]


def test_pretokenised_with_another_tokenizer_tokenises_the_text(tmp_path, tok_path, caplog):
    from ptft_engine.data.tokenizer import train_tokenizer

    other = str(tmp_path / "other.json")
    train_tokenizer([doc_text(i) for i in range(30)], kind="bpe", vocab_size=300, min_frequency=1).save(other)
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": doc_text(i)}) + "\n" for i in range(20)))
    pre = str(tmp_path / "pre")
    write_shards([str(src)], pre, sources.Options(format="jsonl", tokenizer=other), shard_samples=7, workers=1,
                 progress=False)
    raw = write_text_shards(tmp_path, 20, name="raw")
    with caplog.at_level(logging.WARNING, logger="ptft_engine.data"):
        ld = build_loader(_cfg(pre, tok_path), objective="clm")
    assert "another tokenizer.json" in caplog.text and not ld.builder.id_shards
    _same(list(ld), list(build_loader(_cfg(raw, tok_path), objective="clm")))


def test_corrupt_samples_are_left_out_of_the_plan_and_counted(tmp_path, tok_path, caplog):
    shards = write_text_shards(tmp_path, 21)
    victim = load_index(os.path.join(shards, "index.json")).shards[1]
    with open(victim.path, "r+b") as f:
        f.truncate(victim.offset_table()[4] + 100)  # samples 4..6 of shard 1 are cut off
    index_path = os.path.join(shards, "index.json")
    doc = json.loads(open(index_path).read())
    for entry in doc["shards"]:
        entry["sha256"] = None  # so the damage reaches the per-sample checks (not the whole-shard one)
    open(index_path, "w").write(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="ptft_engine.data"):
        loader = build_loader(_cfg(shards, tok_path, batch_size=1), objective="clm")
    assert loader.stats["skipped"] == 3 and "truncated" in caplog.text
    list(loader)
    assert loader.stats["samples"] == 18 and loader.stats["dropped_tokens"] == 0
    with pytest.raises(CorruptSampleError, match="shard-000001.tar"):
        build_loader(_cfg(shards, tok_path, strict=True), objective="clm")  # at start, before any step


def test_config_keeps_docs_per_batch_to_batch_packing(text_shards):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="docs_per_batch is for packing: batch"):
        DataConfig(shards=[text_shards], docs_per_batch=4)
    assert DataConfig(shards=[text_shards], docs_per_batch=4, packing="batch").docs_per_batch == 4


@pytest.mark.parametrize("layout", ["causal", "segments"])
def test_a_document_unreadable_at_read_time_keeps_the_rows_in_place(layout):
    from ptft_engine.data.packing import pack_plan_rows
    from ptft_engine.data.plan import PackingPlan

    lengths = [5, 9, 4, 7]
    docs = {p: np.arange(100 * p, 100 * p + n) for p, n in enumerate(lengths)}
    plan = PackingPlan(np.array(lengths), 8, layout)
    ids = dict(pad_id=0, eos_id=6, cls_id=2, sep_id=3)
    whole, whole_stats = pack_plan_rows(plan, 0, plan.n_rows, docs, **ids)
    broken, stats = pack_plan_rows(plan, 0, plan.n_rows, {**docs, 1: None}, **ids)  # doc 1 unreadable
    lost = whole["attention_mask"] & ~broken["attention_mask"]
    assert torch.isin(whole["input_ids"][lost], torch.tensor(list(range(100, 109)) + [2, 3, 6])).all()
    # + <eos> / 2 pieces' [CLS][SEP]
    assert int(lost.sum()) == stats.dropped == 9 + (1 if layout == "causal" else 2 * 2)
    keep = broken["attention_mask"]
    assert torch.equal(broken["input_ids"][keep], whole["input_ids"][keep])  # nothing else moved
    assert (broken["input_ids"][~keep] == 0).all() and whole_stats.dropped == 0


def test_a_long_document_is_tokenised_once_not_per_batch(tmp_path, tok_path, monkeypatch):
    from ptft_engine.data import text
    from ptft_engine.data.tokenizer import TokenizerInfo

    src = tmp_path / "long.jsonl"
    src.write_text("".join(json.dumps({"text": " ".join(doc_text(i) for i in range(j, j + 12))}) + "\n"
                           for j in range(3)))
    shards = str(tmp_path / "long")
    write_shards([str(src)], shards, sources.Options(format="jsonl"), workers=1, progress=False)
    cfg = _cfg(shards, tok_path, shuffle=False)
    calls = []
    real = TokenizerInfo.encode_batch
    monkeypatch.setattr(TokenizerInfo, "encode_batch",
                        lambda self, texts: calls.append(len(texts)) or real(self, texts))
    loader = build_loader(cfg, objective="clm")
    calls.clear()  # the lengths pass tokenises each document once; now the epoch
    cached = list(loader)
    assert len(cached) > 3 * 5 and sum(calls) <= 3 + 2  # each doc spans many batches
    monkeypatch.setattr(text, "RECENT_DOCS", 0)
    _same(list(build_loader(cfg, objective="clm")), cached)
    assert sum(calls) > 3 * 5


def test_shard_options_that_do_not_fit_the_format_are_named(tmp_path, tok_path):
    (tmp_path / "a.txt").write_text("some text")
    with pytest.raises(DataError, match="--label-field keeps a JSONL field; --format text has none"):
        write_shards([str(tmp_path / "a.txt")], str(tmp_path / "o1"), sources.Options(format="text", label_field="y"),
                     workers=1, progress=False)
    with pytest.raises(DataError, match="--tokenizer pre-tokenises text shards"):
        write_shards([str(tmp_path)], str(tmp_path / "o2"), sources.Options(format="images", tokenizer=tok_path),
                     workers=1, progress=False)
    with pytest.raises(DataError, match="tokenizer file .*missing.json.* does not exist"):
        write_shards([str(tmp_path / "a.txt")], str(tmp_path / "o3"),
                     sources.Options(format="text", tokenizer=str(tmp_path / "missing.json")),
                     workers=1, progress=False)


def test_elastic_resume_then_the_next_epoch_carries_the_actual_tail(text_shards, tok_path):
    """2 ranks stop mid-epoch, 3 ranks finish it; the next epoch (a new loader per epoch, given
    the ended one's state, as the trainer does) opens with exactly the rows 3 ranks left over."""
    tok = load_tokenizer(tok_path)
    cfg = _cfg(text_shards, tok_path, batch_size=2)
    old = [build_loader(cfg, objective="clm", rank=r, world_size=2) for r in range(2)]
    for ld in old:
        _take(ld, 4)  # 16 rows: not a whole number of 3-rank steps
    new = [build_loader(cfg, objective="clm", rank=r, world_size=3) for r in range(3)]
    for ld in new:
        ld.load_state_dict(old[0].state_dict())
    epoch0 = [b for ld in old for b in _take(build_loader(cfg, objective="clm", rank=ld.rank, world_size=2), 4)]
    epoch0 += [b for ld in new for b in ld]
    ended = new[0].state_dict()
    assert ended["epoch"] == 1 and ended["carry"] is not None and all(ld.state_dict() == ended for ld in new)
    # a loader made for epoch 1 alone would assume 3 ranks from the start: another tail
    assert build_loader(cfg, objective="clm", rank=0, world_size=3, epoch=1).carry != ended["carry"]
    nxt = [build_loader(cfg, objective="clm", rank=r, world_size=3, epoch=1) for r in range(3)]
    for ld in nxt:
        ld.load_state_dict(ended)
    first_step = _content([next(iter(ld)) for ld in nxt], tok, "clm")
    corpus = Counter(t for d in _docs_in_epoch_order(cfg, tok) for t in d + [tok.eos_id])
    seen = _content(epoch0, tok, "clm")
    assert not seen - corpus and not (corpus - seen) - first_step and sum((corpus - seen).values()) > 0


def test_a_vocabulary_beyond_uint16_stores_uint32_ids(tmp_path, tok_path, monkeypatch):
    from ptft_engine.data import tokenizer

    real = tokenizer.load_tokenizer

    def big_vocab(path):
        info = real(path)
        info.vocab_size = 70_000  # as a 70 k-token tokenizer reports it
        return info

    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": doc_text(i)}) + "\n" for i in range(12)))
    pre = str(tmp_path / "pre")
    monkeypatch.setattr(tokenizer, "load_tokenizer", big_vocab)
    write_shards([str(src)], pre, sources.Options(format="jsonl", tokenizer=tok_path), shard_samples=7, workers=1,
                 progress=False)
    monkeypatch.setattr(tokenizer, "load_tokenizer", real)
    index = load_index(os.path.join(pre, "index.json"))
    assert {s.ids_dtype for s in index.shards} == {"<u4"}
    with open(index.shards[0].path, "rb") as fh:
        sample = read_members(fh, index.shards[0].offset_table(), 0)
    expected = load_tokenizer(tok_path).encode_batch([sample["txt"].decode()])[0]
    assert np.frombuffer(sample["ids"], "<u4").tolist() == expected
    raw = write_text_shards(tmp_path, 12, name="raw")
    _same(list(build_loader(_cfg(pre, tok_path), objective="mlm")),
          list(build_loader(_cfg(raw, tok_path), objective="mlm")))
