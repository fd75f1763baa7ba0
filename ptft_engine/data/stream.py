"""One rank's share of an epoch as a torch IterableDataset, split further over workers.

Batch `step` of rank `r` (counted from the resume position `start`) holds the global
positions [start + (step * world + r) * D, ... + D) of the epoch order, D documents
or images per batch. Worker w of n builds the steps with step % n == w, which is the
order in which DataLoader hands batches out, so the batch sequence does not depend on
the number of workers. The epoch is cut to whole steps, so every rank yields the same
number of batches and none waits alone in a collective.

Shards are opened through the ShardCache (remote ones downloaded into the node-local
cache, local ones sha256-checked on first open); a Prefetcher thread opens the shards
of this worker's next steps ahead of them. A shard that fails is skipped whole.

A batch the trainer must not train on carries `_problem` (one line) and `_problem_kind`:
"unreachable" when samples were skipped because their source did not answer (an outage:
the data comes back, so the run stops and a resume trains them), "corrupt" when strict mode
met a bad sample. The batch itself is then still one of the step's shape (read without
strict), so every rank can run the step's collectives before they all stop.
"""
from __future__ import annotations

import tarfile
import threading
import time
from collections import OrderedDict

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ptft_engine.data.cache import Opened, Prefetcher, ShardCache, ShardFailed
from ptft_engine.data.errors import BadSamples, CorruptSampleError, log
from ptft_engine.data.index import ShardInfo, read_members
from ptft_engine.data.order import EpochOrder
from ptft_engine.data.remote import is_remote, redact

MAX_OPEN_FILES = 64


def steps_left(length: int, start: int, world_size: int, docs: int) -> int:
    return max(0, (length - start) // (world_size * docs))


class ShardStream(IterableDataset):
    def __init__(self, order: EpochOrder, builder, *, rank: int, world_size: int, docs: int, start: int,
                 strict: bool, emit_sample_index: bool = False, cache: ShardCache | None = None,
                 prefetch_shards: int = 0):
        super().__init__()
        self.order, self.builder = order, builder
        self.rank, self.world_size, self.docs, self.start = rank, world_size, docs, start
        self.strict, self.emit_sample_index = strict, emit_sample_index
        self.steps = steps_left(len(order), start, world_size, docs)
        self.cache = cache or ShardCache()
        self.prefetch_shards = prefetch_shards
        self._files: OrderedDict[int, Opened] = OrderedDict()
        self._failed: dict[int, str] = {}  # shard id -> why it is skipped whole
        self._taken: set[int] = set()  # shards the prefetcher handed over
        self._cached: set[int] = set()  # remote shards (read from the cache)
        self._prefetcher: Prefetcher | None = None
        self._order_lock = threading.Lock()  # the order caches blocks; the prefetch thread reads it too
        self._reported = dict(self.cache.counts)
        self.corrupt_shards = 0
        self.unreachable_shards = 0
        self._unreachable: set[int] = set()  # failed shards whose source did not answer

    def _slice(self, first: int, stop: int | None = None):
        with self._order_lock:
            return self.order.slice(first, first + self.docs if stop is None else stop)

    def _first(self, step: int) -> int:
        return self.start + (step * self.world_size + self.rank) * self.docs

    def _upcoming(self, steps: range):
        """Shard ids in the order these steps first read them (what the prefetcher fetches)."""
        seen: set[int] = set()
        for step in steps:
            for sid in dict.fromkeys(self._slice(self._first(step))[0].tolist()):
                if sid not in seen:
                    seen.add(sid)
                    yield sid

    def _open(self, shard_id: int) -> Opened:
        """The open shard, kept for the most recently used shards only."""
        entry = self._files.get(shard_id)
        if entry is not None:
            self._files.move_to_end(shard_id)
            return entry
        shard = self.order.shards[shard_id]
        entry = None
        start = time.perf_counter()
        try:
            if self._prefetcher is not None and shard_id not in self._taken:
                self._taken.add(shard_id)
                entry = self._prefetcher.take(shard_id)
            if entry is None:
                entry = self.cache.open(shard)
        finally:  # the time this step waited for a download or a sha256 check
            self.cache.count("download_wait_ms", int((time.perf_counter() - start) * 1000))
        self._files[shard_id] = entry
        if is_remote(shard.path):
            self._cached.add(shard_id)
        if len(self._files) > MAX_OPEN_FILES:
            self._files.popitem(last=False)[1].fh.close()
        return entry

    def _unpin(self, keep: set[int]) -> None:
        """Close the cached shards this step did not read: an open one is pinned in the cache,
        and the cache bound should only have to hold the shards in use and those prefetched."""
        for sid in [s for s in self._files if s not in keep and s in self._cached]:
            self._files.pop(sid).fh.close()

    def read(self, first: int, bad: BadSamples, stop: int | None = None,
             want=None) -> list[tuple[int, str, str, dict]]:
        """Records of positions [first, stop) (default: one batch of docs); `want`, a bool
        per position, leaves out positions the caller does not need (not read at all)."""
        shard_ids, idxs = self._slice(first, stop)
        self._step_shards = set(shard_ids.tolist())
        records = []
        for j, (s, i) in enumerate(zip(shard_ids.tolist(), idxs.tolist())):
            if want is not None and not want[j]:
                continue
            shard: ShardInfo = self.order.shards[s]
            name = redact(shard.path)
            if s not in self._failed:
                try:
                    opened = self._open(s)  # a wrong offset file raises DataError: the index is broken
                except ShardFailed as exc:
                    self._failed[s] = str(exc)
                    if exc.unreachable:  # not corrupt: said once per shard, not per sample
                        self._unreachable.add(s)
                        self.unreachable_shards += exc.counted
                        if exc.counted:  # by the process that reached the verdict, once for the node
                            log.error("data source unreachable: shard %s, its %d samples are skipped (%s)",
                                      name, shard.samples, str(exc).removeprefix(f"{name}: "))
                    else:
                        self.corrupt_shards += exc.counted  # a node-wide verdict is counted where it was reached
                        if not bad.strict:  # strict: the skip below raises, naming the shard
                            log.warning("skipping shard %s: %s", name, exc)
                except OSError as exc:
                    bad.skip(name, f"sample #{i}", f"cannot open ({exc})")
                    continue
            if s in self._unreachable:
                bad.unreachable(name, self._failed[s])
                continue
            if s in self._failed:
                bad.skip(name, f"sample #{i}", self._failed[s])
                continue
            try:
                members = read_members(opened.fh, opened.table, i)
            except (ValueError, tarfile.TarError, OSError, EOFError) as exc:
                bad.skip(name, f"sample #{i}", f"unreadable ({exc})")
                continue
            records.append((first + j, name, members.pop("__key__"), members))
        return records

    def _totals(self) -> dict[str, int]:
        return {**self.cache.counts, "corrupt_shards": self.corrupt_shards,
                "unreachable_shards": self.unreachable_shards}

    def counters(self) -> dict[str, int]:
        """Shard and cache counters since the last call (this process only)."""
        now = self._totals()
        delta = {k: v - self._reported.get(k, 0) for k, v in now.items()}
        self._reported = now
        return delta

    def batch(self, step: int, bad: BadSamples) -> dict:
        first = self._first(step)
        skipped, unread = bad.count, bad.unread
        records = self.read(first, bad)
        self._unpin(self._step_shards)
        batch, stats, kept = self.builder.build(records, epoch=self.order.epoch, first_pos=first, bad=bad)
        stats["skipped"] = bad.count - skipped
        stats.update(self.counters())
        stats["samples"] = len(kept)
        batch["_stats"] = stats
        if self.emit_sample_index:
            batch["sample_index"] = torch.tensor(kept, dtype=torch.int64)
        return flag_unread(batch, bad, unread)

    def _checked(self, step: int, bad: BadSamples) -> dict:
        """batch(step), or in strict mode on a bad sample the same step read without strict,
        flagged "corrupt" (a plain Loader raises it; the trainer stops on it)."""
        try:
            return self.batch(step, bad)
        except CorruptSampleError as exc:
            try:
                batch = self.batch(step, BadSamples(strict=False, log_limit=0))
            except ValueError:  # nothing decodable in it (images): the trainer uses its last batch
                batch = {"_stats": {}}
            batch["_problem"], batch["_problem_kind"] = str(exc), "corrupt"
            return batch

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        for entry in self._files.values():
            entry.fh.close()
        self._files.clear()

    def __iter__(self):
        info = get_worker_info()
        wid, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        bad = BadSamples(self.strict)
        steps = range(wid, self.steps, n_workers)
        self._reported = self._totals()
        if self.prefetch_shards > 0:
            self._taken.clear()
            self._prefetcher = Prefetcher(self.cache, self.order.shards, self._upcoming(steps), self.prefetch_shards)
        try:
            for step in steps:
                yield self._checked(step, bad)
        finally:
            self.close()


def flag_unread(batch: dict, bad: BadSamples, unread_before: int) -> dict:
    """Count the batch's samples whose source was unreachable; flag the batch if there are any."""
    unread = bad.unread - unread_before
    batch["_stats"]["unreachable"] = unread
    if unread:
        batch["_problem"], batch["_problem_kind"] = f"data source unreachable: {bad.source}", "unreachable"
    return batch
