"""Packing: documents never see each other through segment ids; causal chunking; masking."""
from __future__ import annotations

import torch

from ptft_engine.data import DataConfig, build_loader
from ptft_engine.data.packing import pack_causal, pack_segments
from ptft_engine.data.text import mask_seed
from ptft_engine.labels import IGNORE_INDEX

CLS, SEP, PAD, EOS = 2, 3, 0, 6


def _docs(lengths, start=100):
    out, t = [], start
    for n in lengths:
        out.append(list(range(t, t + n)))
        t += n
    return out


def test_segments_follow_document_boundaries():
    docs = _docs([5, 3, 30, 1, 7, 12])  # the 30-token doc is longer than a row: split in pieces
    batch, stats = pack_segments(docs, rows=3, seq_len=16, cls_id=CLS, sep_id=SEP, pad_id=PAD)
    ids, seg = batch["input_ids"], batch["segment_ids"]
    assert torch.equal(batch["attention_mask"], seg > 0)
    pieces = []
    for r in range(3):
        for s in seg[r].unique().tolist():
            if s == 0:
                assert (ids[r][seg[r] == 0] == PAD).all()
                continue
            where = (seg[r] == s).nonzero().flatten()
            assert torch.equal(where, torch.arange(int(where[0]), int(where[-1]) + 1))  # contiguous
            tokens = ids[r, where].tolist()
            assert tokens[0] == CLS and tokens[-1] == SEP and CLS not in tokens[1:-1]
            pieces.append(tokens[1:-1])
    # every placed piece is a contiguous part of exactly one document
    for piece in pieces:
        assert sum(1 for d in docs if any(d[i:i + len(piece)] == piece for i in range(len(d)))) == 1
    placed = sum(len(p) for p in pieces)
    assert placed + stats.dropped == sum(map(len, docs))
    assert stats.tokens + stats.padded == 3 * 16


def test_packed_attention_equals_attention_per_document():
    from ptft_engine.ops import attention

    docs = _docs([4, 6, 2, 9, 3])
    batch, _ = pack_segments(docs, rows=2, seq_len=13, cls_id=CLS, sep_id=SEP, pad_id=PAD)
    seg = batch["segment_ids"]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 13, 8, generator=g) for _ in range(3))  # (B, H, S, D)
    # the reference backend states the masking contract every kernel must meet
    out = attention(q, k, v, segment_ids=seg, attention_mask=batch["attention_mask"], backend="reference")
    checked = 0
    for r in range(2):
        for s in seg[r].unique().tolist():
            if s == 0:
                continue
            idx = (seg[r] == s).nonzero().flatten()
            alone = attention(q[r:r + 1, :, idx], k[r:r + 1, :, idx], v[r:r + 1, :, idx], backend="reference")
            torch.testing.assert_close(out[r:r + 1, :, idx], alone)
            checked += 1
    assert checked == 4 and int(seg.max()) >= 2  # one doc did not fit; rows hold several docs


def test_causal_packing_concatenates_with_eos_and_chunks():
    docs = _docs([5, 3, 9])
    batch, stats = pack_causal(docs, rows=2, seq_len=8, eos_id=EOS, pad_id=PAD)
    flat = batch["input_ids"].flatten().tolist()
    assert flat == docs[0] + [EOS] + docs[1] + [EOS] + docs[2][:6]
    assert stats.dropped == 3 + 1 and stats.padded == 0  # the rest of doc 2 and its <eos>
    batch, stats = pack_causal(docs[:1], rows=2, seq_len=8, eos_id=EOS, pad_id=PAD, bos_id=5)
    assert batch["input_ids"].flatten()[:7].tolist() == [5] + docs[0] + [EOS]
    assert batch["attention_mask"].sum() == 7 and stats.padded == 9
    assert (batch["labels"].flatten()[7:] == IGNORE_INDEX).all()


def test_loader_masks_by_position_and_never_special_tokens(text_shards, tok_path):
    from ptft_engine.data.tokenizer import load_tokenizer
    from ptft_engine.ops import mlm_mask

    cfg = DataConfig(shards=[text_shards], tokenizer=tok_path, seq_len=64, batch_size=4, num_workers=0,
                     mask_prob=0.3, emit_sample_index=True)
    tok = load_tokenizer(tok_path)
    loader = build_loader(cfg, objective="mlm", rank=0, world_size=1)
    selected = total = 0
    n_batches = len(loader)  # of this epoch (the next one also holds this one's carried tail)
    for batch in loader:
        labels, seg = batch["labels"], batch["segment_ids"]
        picked = labels != IGNORE_INDEX
        original = torch.where(picked, labels, batch["input_ids"])  # unmask
        assert not torch.isin(original[picked], torch.tensor(tok.special_ids)).any()
        assert (original[seg == 0] == tok.pad_id).all() and not picked[seg == 0].any()
        # the mask is the op's, keyed by (seed, epoch) and the rows' indices in the packing plan
        again, lab = mlm_mask(original, seed=mask_seed(cfg.seed, 0), sample_ids=batch["sample_index"],
                              mask_token_id=tok.mask_id, vocab_size=tok.vocab_size, special_token_ids=tok.special_ids,
                              mask_prob=0.3)
        assert torch.equal(again, batch["input_ids"]) and torch.equal(lab, labels)
        selected += int(picked.sum())
        total += int((batch["attention_mask"] & ~torch.isin(original, torch.tensor(tok.special_ids))).sum())
    assert 0.2 < selected / total < 0.4
    assert loader.stats["tokens"] > 0 and loader.stats["batches"] == n_batches


def test_run_wide_gpu_backend_does_not_break_cpu_workers(text_shards, tok_path, monkeypatch):
    from ptft_engine.ops import registry

    monkeypatch.setenv(registry.ENV_VAR, "cuda")  # meant for the step on a GPU
    cfg = DataConfig(shards=[text_shards], tokenizer=tok_path, seq_len=32, batch_size=2, num_workers=0)
    batch = next(iter(build_loader(cfg, objective="mlm")))
    assert (batch["labels"] != IGNORE_INDEX).any()


def test_auto_docs_per_batch_fills_batches(text_shards, tok_path):
    cfg = DataConfig(shards=[text_shards], tokenizer=tok_path, seq_len=64, batch_size=2, num_workers=0,
                     packing="batch")
    loader = build_loader(cfg, objective="clm")
    assert loader.docs > 2 and loader.state_dict()["docs_per_batch"] == loader.docs
    one_per_row = build_loader(cfg.model_copy(update={"docs_per_batch": 2}), objective="clm")
    fill = []
    for ld in (loader, one_per_row):
        list(ld)
        fill.append(ld.stats["tokens"] / (ld.stats["tokens"] + ld.stats["pad_tokens"]))
    assert fill[0] > 0.7 and fill[0] > fill[1] + 0.2
    assert loader.stats["dropped_tokens"] < 0.35 * loader.stats["tokens"]
    # the same data gives the same number on every rank and on a resumed run
    assert build_loader(cfg, objective="clm", rank=1, world_size=2).docs == loader.docs


def test_masking_in_the_step_draws_the_workers_masks(text_shards, tok_path):
    from ptft_engine.data import apply_mlm_mask

    cfg = DataConfig(shards=[text_shards], tokenizer=tok_path, seq_len=32, batch_size=2, num_workers=0)
    in_worker = list(build_loader(cfg, objective="mlm", epoch=2))
    loader = build_loader(cfg.model_copy(update={"mask_in": "step"}), objective="mlm", epoch=2)
    for batch, expected in zip(loader, in_worker):
        assert "labels" not in batch and batch["mlm_sample_ids"].shape == (2,)
        masked = apply_mlm_mask(batch, **loader.mask_kwargs(), backend="reference")
        assert masked.keys() == expected.keys()
        for key in expected:
            assert torch.equal(masked[key], expected[key]), key
