"""The data plan before issue 17 (commit a303a6a), kept only as bench_scale.py's "peer".

EpochOrder is that commit's order.py verbatim (its weighted mixing draws one random
number per sample to build the prefix: O(samples) at start); load_index is its JSON
index loader (one stat per shard and offset file), except that a missing file is
counted instead of raised, since the synthetic shards do not exist.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict

import numpy as np

from ptft_engine.data.index import ShardIndex, ShardInfo

_TAG_SHARDS, _TAG_BLOCK, _TAG_MIX, _TAG_RESAMPLE = 1, 2, 3, 4


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


class _Source:
    """One source's samples in a seeded shard order: rank k -> (global shard id, sample)."""

    def __init__(self, shard_ids: np.ndarray, counts: np.ndarray, rng: np.random.Generator | None):
        perm = rng.permutation(len(shard_ids)) if rng is not None else np.arange(len(shard_ids))
        self.shard_ids = shard_ids[perm]
        self.ends = np.cumsum(counts[perm])
        self.starts = self.ends - counts[perm]
        self.total = int(self.ends[-1]) if len(self.ends) else 0

    def lookup(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = k % self.total  # a source drawn more often than it has samples wraps around
        j = np.searchsorted(self.ends, k, side="right")
        return self.shard_ids[j], k - self.starts[j]


class EpochOrder:
    def __init__(self, sources: list[ShardIndex], *, seed: int, epoch: int, shuffle: bool = True,
                 block: int = 10_000, resample: bool = False, weights: list[float] | None = None,
                 length: int | None = None):
        if weights is None and not resample and len(sources) > 1:
            # no weights: the sources simply pool, so each sample comes exactly once
            sources = [ShardIndex(shards=[s for src in sources for s in src.shards])]
        self.shards = [s for src in sources for s in src.shards]
        counts_all = np.array([s.samples for s in self.shards], dtype=np.int64)
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
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        if self.mixed and not resample:
            self._prefix = self._mix_prefix()

    def __len__(self) -> int:
        return self.length

    # --- weighted interleave (no resampling): per-block source draws and their prefix counts
    def _mix_choice(self, b: int) -> np.ndarray:
        n = min(self.block, self.length - b * self.block)
        return _rng(self.seed, self.epoch, _TAG_MIX, b).choice(len(self.sources), size=n, p=self.probs)

    def _mix_prefix(self) -> np.ndarray:
        n_blocks = -(-self.length // self.block)
        prefix = np.zeros((n_blocks + 1, len(self.sources)), dtype=np.int64)  # samples of each source before block b
        for b in range(n_blocks):
            prefix[b + 1] = prefix[b] + np.bincount(self._mix_choice(b), minlength=len(self.sources))
        return prefix

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        if b in self._cache:
            self._cache.move_to_end(b)
            return self._cache[b]
        lo, hi = b * self.block, min((b + 1) * self.block, self.length)
        shard = np.empty(hi - lo, dtype=np.int64)
        sample = np.empty(hi - lo, dtype=np.int64)
        if self.resample:
            rng = _rng(self.seed, self.epoch, _TAG_RESAMPLE, b)
            src = rng.choice(len(self.sources), size=hi - lo, p=self.probs)
            u = rng.random(hi - lo)
            for s_id, source in enumerate(self.sources):
                sel = src == s_id
                shard[sel], sample[sel] = source.lookup((u[sel] * source.total).astype(np.int64))
        elif self.mixed:
            src = self._mix_choice(b)
            for s_id, source in enumerate(self.sources):
                sel = np.flatnonzero(src == s_id)
                k = self._prefix[b, s_id] + np.arange(len(sel))
                shard[sel], sample[sel] = source.lookup(k)
        else:
            shard[:], sample[:] = self.sources[0].lookup(np.arange(lo, hi, dtype=np.int64))
        if self.shuffle and not self.resample:
            perm = _rng(self.seed, self.epoch, _TAG_BLOCK, b).permutation(hi - lo)
            shard, sample = shard[perm], sample[perm]
        self._cache[b] = (shard, sample)
        if len(self._cache) > 4:
            self._cache.popitem(last=False)
        return shard, sample

    def slice(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard ids, sample indices) of global positions [start, stop)."""
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"positions [{start}, {stop}) outside the epoch of {self.length}")
        parts_shard, parts_sample = [], []
        pos = start
        while pos < stop:
            b = pos // self.block
            shard, sample = self._block(b)
            lo = pos - b * self.block
            hi = min(stop - b * self.block, len(shard))
            parts_shard.append(shard[lo:hi])
            parts_sample.append(sample[lo:hi])
            pos += hi - lo
        if not parts_shard:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        return np.concatenate(parts_shard), np.concatenate(parts_sample)


def load_index(path: str) -> tuple[ShardIndex, int]:
    """(index, stat calls made) with the old per-shard existence checks."""
    with open(path) as f:
        doc = json.load(f)
    root = os.path.dirname(os.path.abspath(path))
    shards, stats = [], 0
    for entry in doc["shards"]:
        p = os.path.join(root, entry["path"])
        os.path.exists(p)
        stats += 1
        offsets, offsets_path = entry.get("offsets"), None
        if isinstance(offsets, str):
            offsets_path, offsets = os.path.join(root, offsets), None
            os.path.exists(offsets_path)
            stats += 1
        shards.append(ShardInfo(path=p, samples=int(entry["samples"]), offsets=offsets, offsets_path=offsets_path,
                                bytes=int(entry.get("bytes", 0)), sha256=entry.get("sha256")))
    return ShardIndex(shards=shards, kind=doc.get("kind")), stats
