"""The epoch order: a bijection onto the samples, a pure function of (seed, epoch, position)."""
from __future__ import annotations

import numpy as np
import pytest
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


# --- hand-checked tiny orders on in-memory indexes (no files: only the sample counts matter)
from ptft_engine.data.index import ShardIndex, ShardInfo  # noqa: E402


def _index(*counts: int, name: str = "s") -> ShardIndex:
    return ShardIndex(shards=[ShardInfo(path=f"/nowhere/{name}{i}.tar", samples=n) for i, n in enumerate(counts)])


def test_unshuffled_order_is_shard_by_shard_sample_by_sample():
    # two unweighted sources pool: shards 0, 1 (source a) then 2 (source b), in index order
    order = EpochOrder([_index(3, 2, name="a"), _index(2, name="b")], seed=7, epoch=3, shuffle=False)
    assert _pairs(order) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1)]
    # the block size only matters with shuffling
    assert _pairs(EpochOrder([_index(3, 2, 2)], seed=7, epoch=3, shuffle=False, block=2)) == _pairs(order)


def test_block_of_one_only_permutes_whole_shards():
    counts = [3, 1, 4, 2, 5]
    pairs = _pairs(EpochOrder([_index(*counts)], seed=11, epoch=0, block=1))
    runs = []  # maximal runs of one shard, in stream order
    for s, i in pairs:
        if runs and runs[-1][0] == s:
            runs[-1][1].append(i)
        else:
            runs.append((s, [i]))
    # each shard is read once, start to end, in one piece; the shard order itself is seeded
    assert sorted(s for s, _ in runs) == list(range(len(counts)))
    assert all(samples == list(range(counts[s])) for s, samples in runs)
    orders = {tuple(s for s, _ in _runs_of(EpochOrder([_index(*counts)], seed=11, epoch=e, block=1)))
              for e in range(6)}
    assert len(orders) > 1  # epochs reorder the shards


def _runs_of(order):
    out = []
    for s, _ in _pairs(order):
        if not out or out[-1][0] != s:
            out.append((s, None))
    return out


def test_each_block_is_a_different_permutation_of_its_unshuffled_block():
    counts = [8] * 8  # 64 samples, 8 blocks of 8
    src = _index(*counts)
    base = _pairs(EpochOrder([src], seed=5, epoch=0, block=1))  # same shard order, no block shuffle
    shuffled = _pairs(EpochOrder([src], seed=5, epoch=0, block=8))
    patterns = []
    for b in range(8):
        chunk, ref = shuffled[8 * b:8 * b + 8], base[8 * b:8 * b + 8]
        assert sorted(chunk) == sorted(ref)  # a block keeps its own samples
        patterns.append(tuple(ref.index(p) for p in chunk))
    # a permutation per block: 8! patterns, so repeats would mean one seed for all blocks
    assert len(set(patterns)) == 8
    assert all(p != tuple(range(8)) for p in patterns)


def _occurrences(order, first_shard, n_shards):
    """The (shard, sample) pairs of one source in stream order."""
    return [p for p in _pairs(order) if first_shard <= p[0] < first_shard + n_shards]


def _own_order(counts, first_shard=0):
    return [(first_shard + s, i) for s, n in enumerate(counts) for i in range(n)]


def _assert_read_in_own_order_by_block(order, first_shard, counts, block):
    """Source s's draws, block by block, are its next samples in its own order (any order
    inside a block), starting at its first sample and wrapping only after its last."""
    own = _own_order(counts, first_shard)
    rank = {p: r for r, p in enumerate(own)}
    pairs, taken = _pairs(order), 0
    for lo in range(0, len(pairs), block):
        ranks = sorted(rank[p] for p in pairs[lo:lo + block] if p in rank)
        expect = sorted((taken + i) % len(own) for i in range(len(ranks)))
        assert ranks == expect, f"block {lo // block}: ranks {ranks}, expected {expect}"
        taken += len(ranks)
    return taken


def test_weighted_mixing_consumes_each_source_in_its_own_order_once_before_wrapping():
    # a property any correct interleave has (not a pinned sequence): without shuffling, each
    # block continues every source where the previous block left it, each sample once per pass
    a_counts, b_counts = [7, 5, 9], [4, 6]
    order = EpochOrder([_index(*a_counts, name="a"), _index(*b_counts, name="b")], seed=1, epoch=2,
                       shuffle=False, block=16, weights=[1, 3], length=160)
    # a holds 21 samples and gets ~40 draws, b holds 10 and gets ~120: both wrap
    taken_a = _assert_read_in_own_order_by_block(order, 0, a_counts, 16)
    taken_b = _assert_read_in_own_order_by_block(order, 3, b_counts, 16)
    assert taken_a + taken_b == 160 and taken_a > 21 and taken_b > 20


def test_weighted_mixing_proportions_hold_in_every_window():
    a, b = _index(100, 100, name="a"), _index(50, name="b")
    for shuffle in (False, True):
        order = EpochOrder([a, b], seed=3, epoch=0, shuffle=shuffle, block=50, weights=[1, 3], length=1000)
        shard, _ = order.slice(0, 1000)
        from_b = (shard >= 2).reshape(10, 100).mean(axis=1)  # fraction from b in each window of 100
        assert (from_b > 0.6).all() and (from_b < 0.9).all(), from_b


def test_unweighted_sources_appear_exactly_once_each_even_with_shuffle():
    order = EpochOrder([_index(5, 3, name="a"), _index(4, name="b")], seed=2, epoch=1, block=4)
    assert sorted(_pairs(order)) == _own_order([5, 3, 4])


def test_empty_sources_are_never_drawn_and_all_empty_is_an_error():
    empty = ShardIndex(shards=[ShardInfo(path="/nowhere/e0.tar", samples=0)])
    order = EpochOrder([_index(4, 3, name="a"), empty], seed=0, epoch=0, shuffle=False, block=4,
                       weights=[1, 1], length=14)
    assert _assert_read_in_own_order_by_block(order, 0, [4, 3], 4) == 14  # all from a, twice over
    with pytest.raises(ValueError, match="hold no samples"):
        EpochOrder([empty], seed=0, epoch=0)
    with pytest.raises(ValueError, match="positive weight is empty"):
        EpochOrder([_index(4, name="a"), empty], seed=0, epoch=0, weights=[0, 1])


def test_resampling_draws_by_weight_in_every_block():
    a, b = _index(30, 30, name="a"), _index(20, name="b")
    order = EpochOrder([a, b], seed=4, epoch=0, resample=True, block=100, weights=[1, 1], length=1000)
    shard, sample = order.slice(0, 1000)
    assert all(0 <= i < order.shards[s].samples for s, i in zip(shard.tolist(), sample.tolist()))
    from_b = (shard == 2).reshape(10, 100).mean(axis=1)
    assert (from_b > 0.3).all() and (from_b < 0.7).all(), from_b  # 1:1 in every block
    # with replacement, uniformly: all of b's 20 samples turn up, and a's 60 too
    assert set(sample[shard == 2].tolist()) == set(range(20))
    assert len(set(zip(shard[shard < 2].tolist(), sample[shard < 2].tolist()))) == 60
    # blocks draw independently (not one seed for all)
    assert not all(np.array_equal(shard[:100], shard[100 * k:100 * k + 100]) for k in range(1, 10))
    assert np.array_equal(order.slice(250, 420)[1], sample[250:420])


def test_slice_bounds():
    order = EpochOrder([_index(3, 2)], seed=0, epoch=0, block=2)
    assert order.slice(5, 5)[0].size == 0 and order.slice(0, 0)[0].size == 0
    whole = _pairs(order)
    for start in range(6):  # every slice, also inside later blocks, is that part of the whole
        for stop in range(start, 6):
            assert _pairs(order, start, stop) == whole[start:stop], (start, stop)
    for start, stop in ((0, 6), (-1, 2), (3, 2)):
        with pytest.raises(IndexError):
            order.slice(start, stop)


def test_a_block_size_below_one_means_one():
    src = _index(3, 4)
    assert _pairs(EpochOrder([src], seed=2, epoch=0, block=0)) == _pairs(EpochOrder([src], seed=2, epoch=0, block=1))
