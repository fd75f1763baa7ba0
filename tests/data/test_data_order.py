"""The epoch order: a bijection onto the samples, a pure function of (seed, epoch, position)."""
from __future__ import annotations

import numpy as np
from data_helpers import write_text_shards

from ptft_engine.data.index import resolve_source
from ptft_engine.data.order import EpochOrder


def _pairs(order, start=0, stop=None):
    shard, sample = order.slice(start, len(order) if stop is None else stop)
    return list(zip(shard.tolist(), sample.tolist()))


def test_order_is_a_permutation_and_deterministic(text_shards):
    src = resolve_source(text_shards)
    order = EpochOrder([src], seed=3, epoch=0, block=10)
    pairs = _pairs(order)
    expected = {(s, i) for s, shard in enumerate(src.shards) for i in range(shard.samples)}
    assert len(pairs) == 61 and set(pairs) == expected
    # any slice equals the same part of the whole, whatever the slicing
    assert _pairs(order, 17, 40) == pairs[17:40]
    assert _pairs(EpochOrder([src], seed=3, epoch=0, block=10), 5, 61) == pairs[5:]
    # a new epoch (or seed) reorders; no shuffle keeps the shard order
    assert _pairs(EpochOrder([src], seed=3, epoch=1, block=10)) != pairs
    assert _pairs(EpochOrder([src], seed=4, epoch=0, block=10)) != pairs
    plain = _pairs(EpochOrder([src], seed=3, epoch=0, shuffle=False))
    assert plain == sorted(expected)


def test_shuffle_buffer_bounds_how_far_a_sample_moves(text_shards):
    src = resolve_source(text_shards)
    order = EpochOrder([src], seed=0, epoch=0, block=8)
    base = EpochOrder([src], seed=0, epoch=0, block=1)  # shard order only, no block permutation
    where = {p: g for g, p in enumerate(_pairs(base))}
    moved = [abs(where[p] - g) for g, p in enumerate(_pairs(order))]
    assert max(moved) < 8 and sum(moved) > 0


def test_weighted_mixing_and_resampling(tmp_path):
    a = resolve_source(write_text_shards(tmp_path, 200, name="a"))
    b = resolve_source(write_text_shards(tmp_path, 50, name="b"))
    n_a = len(a.shards)
    order = EpochOrder([a, b], seed=0, epoch=0, block=64, weights=[1, 3], length=400)
    shard, sample = order.slice(0, 400)
    frac_b = float(np.mean(shard >= n_a))
    assert 0.65 < frac_b < 0.85  # about 3/4 from b
    # without replacement an upsampled source cycles through all its samples evenly
    b_pairs = [p for p in zip(shard.tolist(), sample.tolist()) if p[0] >= n_a]
    uses = np.unique(np.array(b_pairs), axis=0, return_counts=True)[1]
    assert len(uses) == 50 and uses.max() - uses.min() <= 1
    res = EpochOrder([a, b], seed=0, epoch=0, resample=True, length=300)
    shard_r, sample_r = res.slice(0, 300)
    assert len(set(zip(shard_r.tolist(), sample_r.tolist()))) < 250  # with replacement: repeats
    assert np.array_equal(res.slice(100, 120)[0], shard_r[100:120])
    for s, i in zip(shard_r.tolist(), sample_r.tolist()):
        assert 0 <= i < res.shards[s].samples


def test_weighted_blocks_hold_the_weights_and_the_prefix_is_a_closed_form(tmp_path):
    srcs = [resolve_source(write_text_shards(tmp_path, n, name=name)) for n, name in ((40, "a"), (25, "b"), (9, "c"))]
    firsts = np.cumsum([0] + [len(s.shards) for s in srcs])
    for weights, block, length in (([5, 3, 2], 16, 333), ([0.7, 0.2, 0.1], 7, 100), ([1, 1, 1], 10, 74)):
        order = EpochOrder(srcs, seed=1, epoch=2, block=block, weights=weights, length=length)
        shard, _ = order.slice(0, length)
        src = np.searchsorted(firsts, shard, side="right") - 1
        n_blocks = -(-length // block)
        per_block = np.array([np.bincount(src[b * block:(b + 1) * block], minlength=3) for b in range(n_blocks)])
        brute = np.vstack([np.zeros(3, dtype=np.int64), np.cumsum(per_block, axis=0)])
        for b in range(n_blocks + 1):  # samples of each source before block b: closed form == counted
            assert order.source_prefix(min(b * block, length)) == brute[b].tolist()
        w = np.array(weights, dtype=float) / sum(weights)
        for i in range(n_blocks - 1):  # every window of whole blocks, proportions within 1/block
            for j in range(i + 1, n_blocks):
                frac = per_block[i:j].sum(axis=0) / ((j - i) * block)
                assert np.all(np.abs(frac - w) <= 1 / block + 1e-12), (weights, i, j, frac)
        # each source is read in its own order: ranks 0, 1, 2, ... wrapping round
        pairs = set(zip(*order.slice(0, length)))
        for s, source in enumerate(order.sources):
            k = np.arange(order.source_prefix(length)[s])
            assert set(zip(*source.lookup(k))) <= pairs
        assert np.array_equal(order.slice(30, 70)[0], shard[30:70])  # any slice is the same part of the whole


def test_big_blocks_are_permuted_position_by_position(tmp_path, monkeypatch):
    from ptft_engine.data import order as order_mod

    for n in (1, 2, 3, 7, 100, 1025):
        perm = order_mod._Feistel(n, np.random.SeedSequence([5, n]))
        assert sorted(perm[0:n].tolist()) == list(range(n))
        assert perm[3:n].tolist() == perm[0:n].tolist()[3:]  # any range is the same part of the whole
    monkeypatch.setattr(order_mod, "TABLE_MAX", 0)
    a = resolve_source(write_text_shards(tmp_path, 50, name="a"))
    b = resolve_source(write_text_shards(tmp_path, 20, name="b"))
    order = EpochOrder([a, b], seed=0, epoch=0, block=32)
    pairs = _pairs(order)
    assert len(pairs) == 70 and len(set(pairs)) == 70 and _pairs(order, 11, 45) == pairs[11:45]
    mixed = EpochOrder([a, b], seed=0, epoch=0, block=32, weights=[1, 1], shuffle=False)
    shard, _ = mixed.slice(0, 70)
    from_b = shard[:32] >= len(a.shards)
    assert from_b.sum() == 16 and from_b[:16].any() and not from_b[16:].all()  # half each, interleaved
