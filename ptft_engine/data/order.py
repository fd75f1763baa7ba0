"""The order of an epoch: global position g -> (shard, sample) as a pure function.

Depends only on (seed, epoch, g) and the shard index — never on ranks or workers — so
any process can compute any slice of it, and a resume is just a position.

Without resampling: each source's shards are put in a seeded order and their samples
concatenated (sources without weights pool into one). The stream is cut into blocks of
`shuffle_buffer` positions and each block is permuted: a bounded shuffle like
webdataset's buffer, but reproducible, and reads stay local (a block spans a few
shards). A block up to TABLE_MAX positions is permuted by a seeded table; a bigger one
by a keyed Feistel bijection evaluated only at the positions asked for, so a window
of millions of samples (much better mixing, far less read locality) costs a step no
more than a small one. Weighted sources are interleaved block by block: block b holds
floor(W_s (b+1) B) - floor(W_s b B) - (the same for W_{s-1}) samples of source s, where
W_s is the cumulative weight of sources 0..s and B the block size. That count is
within 1 of w_s B in every block (within 1 over any run of blocks too), and the number
of source-s samples before block b is a closed form, so any block is O(block) to
build however long the epoch: no per-sample prefix. Each source is read in its own
order and wraps round only when its weight asks for more than it holds. With
resampling every position draws a source by weight and a sample uniformly, with
replacement.
"""
from __future__ import annotations

from collections import OrderedDict
from fractions import Fraction

import numpy as np

from ptft_engine.data.index import ShardIndex
from ptft_engine.data.index_columns import concat_shards, shard_counts

_TAG_SHARDS, _TAG_BLOCK, _TAG_MIX, _TAG_RESAMPLE = 1, 2, 3, 4
_CACHED_BLOCKS = 4
TABLE_MAX = 1 << 20  # blocks up to this size are permuted by a table; bigger ones position by position
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


class _Source:
    """One source's samples in a seeded shard order: rank k -> (global shard id, sample)."""

    def __init__(self, shard_ids: np.ndarray, counts: np.ndarray, rng: np.random.Generator | None):
        perm = rng.permutation(len(shard_ids)) if rng is not None else np.arange(len(shard_ids))
        self.shard_ids = shard_ids[perm]
        self.counts = counts[perm]
        self.ends = np.cumsum(self.counts)
        self.total = int(self.ends[-1]) if len(self.ends) else 0

    def lookup(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = k % self.total  # a source drawn more often than it has samples wraps around
        j = np.searchsorted(self.ends, k, side="right")
        return self.shard_ids[j], k - (self.ends[j] - self.counts[j])


class _Feistel:
    """A seeded bijection of [0, n) computed per position, with no table: a 4-round
    Feistel network on an even number of bits >= log2(n), walking values >= n back into
    range (fewer than 4 steps expected). O(1) time and memory per position, so a
    shuffle window of many millions of positions costs one batch's worth per step."""

    def __init__(self, n: int, seed_seq: np.random.SeedSequence):
        bits = max(2, (n - 1).bit_length())
        self.n, self.half = n, np.uint64((bits + 1) // 2)
        self.mask = np.uint64((1 << int(self.half)) - 1)
        self.keys = seed_seq.generate_state(4, np.uint64)

    def _round(self, x: np.ndarray, key: np.uint64) -> np.ndarray:  # splitmix64's finaliser, keyed
        z = x ^ key
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return (z ^ (z >> np.uint64(31))) & self.mask

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << self.half) | right

    def __getitem__(self, positions: slice) -> np.ndarray:
        out = self._encrypt(np.arange(positions.start, positions.stop, dtype=np.uint64))
        todo = np.flatnonzero(out >= self.n)
        while len(todo):
            out[todo] = self._encrypt(out[todo])
            todo = todo[out[todo] >= self.n]
        return out.astype(np.int64)


def _cumulative_weights(weights: np.ndarray) -> list[Fraction]:
    """W_0..W_S as exact fractions (W_S = 1), so the block counts are exact integers
    whatever the epoch length."""
    w = [Fraction(float(x)) for x in weights]
    total = sum(w)
    cum, acc = [Fraction(0)], Fraction(0)
    for x in w:
        acc += x
        cum.append(acc / total)
    return cum


class EpochOrder:
    def __init__(self, sources: list[ShardIndex], *, seed: int, epoch: int, shuffle: bool = True,
                 block: int = 10_000, resample: bool = False, weights: list[float] | None = None,
                 length: int | None = None):
        if weights is None and not resample and len(sources) > 1:
            # no weights: the sources simply pool, so each sample comes exactly once
            sources = [ShardIndex(shards=concat_shards([src.shards for src in sources]))]
        # a view by global shard id: a million shards are never copied into objects
        self.shards = concat_shards([src.shards for src in sources])
        counts_all = shard_counts(self.shards)
        self.seed, self.epoch, self.shuffle, self.resample = seed, epoch, shuffle, resample
        self.block = max(1, block)
        self.sources: list[_Source] = []
        first = 0
        for s_id, src in enumerate(sources):
            ids = np.arange(first, first + len(src.shards), dtype=np.int64)
            first += len(src.shards)
            rng = _rng(seed, epoch, _TAG_SHARDS, s_id) if shuffle else None
            self.sources.append(_Source(ids, counts_all[ids], rng))
        sizes = np.array([s.total for s in self.sources], dtype=np.float64)
        if sizes.sum() == 0:
            raise ValueError("the shards hold no samples")
        w = np.array(weights, dtype=np.float64) if weights is not None else sizes.copy()
        w[sizes == 0] = 0.0  # an empty source cannot be drawn
        if w.sum() <= 0:
            raise ValueError("every source with a positive weight is empty")
        self.probs = w / w.sum()
        self.mixed = len(self.sources) > 1
        self.length = int(length if length is not None else sizes.sum())
        self._cum_weights = _cumulative_weights(w)
        self._cache: OrderedDict[int, tuple] = OrderedDict()

    def __len__(self) -> int:
        return self.length

    def source_prefix(self, n: int) -> list[int]:
        """Samples of each source among the first n positions, n a multiple of the block
        (or the epoch length): floor(W_s n) - floor(W_{s-1} n), a closed form."""
        floors = [c.numerator * n // c.denominator for c in self._cum_weights]
        return [hi - lo for lo, hi in zip(floors, floors[1:])]

    def _plan(self, b: int) -> tuple:
        """Block b as (perm or None, start of each source's run in the block, each source's
        first rank): position j of the block holds the unpermuted entry perm[j]."""
        if b in self._cache:
            self._cache.move_to_end(b)
            return self._cache[b]
        lo, hi = b * self.block, min((b + 1) * self.block, self.length)
        if self.resample:
            plan = self._resampled(b, lo, hi)
        else:
            if self.mixed:
                before, upto = self.source_prefix(lo), self.source_prefix(hi)
                runs = np.cumsum([0] + [u - p for p, u in zip(before, upto)])
            else:
                before, runs = [lo], np.array([0, hi - lo])
            perm = None
            if self.shuffle or self.mixed:  # unshuffled, weighted sources still interleave in a block
                key = (self.seed, self.epoch, _TAG_BLOCK if self.shuffle else _TAG_MIX, b)
                if hi - lo <= TABLE_MAX:
                    perm = _rng(*key).permutation(hi - lo)
                else:
                    perm = _Feistel(hi - lo, np.random.SeedSequence(list(key)))
            plan = (perm, runs, np.array(before, dtype=np.int64))
        self._cache[b] = plan
        if len(self._cache) > _CACHED_BLOCKS:
            self._cache.popitem(last=False)
        return plan

    def _resampled(self, b: int, lo: int, hi: int) -> tuple:
        rng = _rng(self.seed, self.epoch, _TAG_RESAMPLE, b)
        src = rng.choice(len(self.sources), size=hi - lo, p=self.probs)
        u = rng.random(hi - lo)
        shard = np.empty(hi - lo, dtype=np.int64)
        sample = np.empty(hi - lo, dtype=np.int64)
        for s_id, source in enumerate(self.sources):
            sel = src == s_id
            shard[sel], sample[sel] = source.lookup((u[sel] * source.total).astype(np.int64))
        return shard, sample

    def _lookup(self, b: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard ids, sample indices) of positions [lo, hi) of block b: only those are
        looked up, so a rank's batch costs its size, not the block's."""
        plan = self._plan(b)
        if self.resample:
            return plan[0][lo:hi], plan[1][lo:hi]
        perm, runs, before = plan
        j = perm[lo:hi] if perm is not None else np.arange(lo, hi, dtype=np.int64)
        if len(self.sources) == 1:
            return self.sources[0].lookup(before[0] + j)
        src = np.searchsorted(runs, j, side="right") - 1
        k = before[src] + j - runs[src]
        shard, sample = np.empty(len(j), dtype=np.int64), np.empty(len(j), dtype=np.int64)
        for s_id, source in enumerate(self.sources):
            sel = src == s_id
            if sel.any():
                shard[sel], sample[sel] = source.lookup(k[sel])
        return shard, sample

    def slice(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard ids, sample indices) of global positions [start, stop)."""
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"positions [{start}, {stop}) outside the epoch of {self.length}")
        parts_shard, parts_sample = [], []
        pos = start
        while pos < stop:
            b = pos // self.block
            lo = pos - b * self.block
            hi = min(stop, (b + 1) * self.block, self.length) - b * self.block
            shard, sample = self._lookup(b, lo, hi)
            parts_shard.append(shard)
            parts_sample.append(sample)
            pos += hi - lo
        if not parts_shard:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        return np.concatenate(parts_shard), np.concatenate(parts_sample)
