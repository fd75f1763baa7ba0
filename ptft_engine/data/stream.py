"""One rank's share of an epoch as a torch IterableDataset, split further over workers.

Batch `step` of rank `r` (counted from the resume position `start`) holds the global
positions [start + (step * world + r) * D, ... + D) of the epoch order, D documents
or images per batch. Worker w of n builds the steps with step % n == w, which is the
order in which DataLoader hands batches out, so the batch sequence does not depend on
the number of workers. The epoch is cut to whole steps, so every rank yields the same
number of batches and none waits alone in a collective.
"""
from __future__ import annotations

import tarfile
from collections import OrderedDict

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ptft_engine.data.errors import BadSamples
from ptft_engine.data.index import ShardInfo, read_members
from ptft_engine.data.order import EpochOrder

MAX_OPEN_FILES = 64


def steps_left(length: int, start: int, world_size: int, docs: int) -> int:
    return max(0, (length - start) // (world_size * docs))


class ShardStream(IterableDataset):
    def __init__(self, order: EpochOrder, builder, *, rank: int, world_size: int, docs: int, start: int,
                 strict: bool, emit_sample_index: bool = False):
        super().__init__()
        self.order, self.builder = order, builder
        self.rank, self.world_size, self.docs, self.start = rank, world_size, docs, start
        self.strict, self.emit_sample_index = strict, emit_sample_index
        self.steps = steps_left(len(order), start, world_size, docs)
        self._files: OrderedDict[int, object] = OrderedDict()

    def _open(self, shard_id: int):
        """(file, offset table) of a shard, kept for the most recently used shards only."""
        entry = self._files.get(shard_id)
        if entry is None:
            shard = self.order.shards[shard_id]
            entry = (open(shard.path, "rb"), shard.offset_table())
            self._files[shard_id] = entry
            if len(self._files) > MAX_OPEN_FILES:
                self._files.popitem(last=False)[1][0].close()
        else:
            self._files.move_to_end(shard_id)
        return entry

    def read(self, first: int, bad: BadSamples, stop: int | None = None,
             want=None) -> list[tuple[int, str, str, dict]]:
        """Records of positions [first, stop) (default: one batch of docs); `want`, a bool
        per position, leaves out positions the caller does not need (not read at all)."""
        shard_ids, idxs = self.order.slice(first, first + self.docs if stop is None else stop)
        records = []
        for j, (s, i) in enumerate(zip(shard_ids.tolist(), idxs.tolist())):
            if want is not None and not want[j]:
                continue
            shard: ShardInfo = self.order.shards[s]
            try:
                fh, table = self._open(s)  # a wrong offset file raises DataError: the index is broken
            except OSError as exc:
                bad.skip(shard.path, f"sample #{i}", f"cannot open ({exc})")
                continue
            try:
                members = read_members(fh, table, i)
            except (ValueError, tarfile.TarError, OSError, EOFError) as exc:
                bad.skip(shard.path, f"sample #{i}", f"unreadable ({exc})")
                continue
            records.append((first + j, shard.path, members.pop("__key__"), members))
        return records

    def batch(self, step: int, bad: BadSamples) -> dict:
        first = self.start + (step * self.world_size + self.rank) * self.docs
        skipped = bad.count
        records = self.read(first, bad)
        batch, stats, kept = self.builder.build(records, epoch=self.order.epoch, first_pos=first, bad=bad)
        stats["skipped"] = bad.count - skipped
        stats["samples"] = len(kept)
        batch["_stats"] = stats
        if self.emit_sample_index:
            batch["sample_index"] = torch.tensor(kept, dtype=torch.int64)
        return batch

    def close(self) -> None:
        for fh, _ in self._files.values():
            fh.close()
        self._files.clear()

    def __iter__(self):
        info = get_worker_info()
        wid, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        bad = BadSamples(self.strict)
        try:
            for step in range(wid, self.steps, n_workers):
                yield self.batch(step, bad)
        finally:
            self.close()
