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
