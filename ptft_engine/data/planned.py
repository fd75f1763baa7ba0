"""One rank's share of a packed text epoch: rows of the packing plan, split over workers.

As ShardStream (whose reading and worker split it reuses), but the unit is a row of
the plan (data/plan.py) instead of a document. The epoch's rows are, in order: the
previous epoch's tail (the rows after its last whole step, carried over instead of
dropped), then this epoch's plan. Batch `step` of rank `r` holds the rows
[start + (step * world + r) * B, ... + B) of that list and reads the documents they draw
from. The list is the same on every rank, so the rows of a step are too, on any world size.
"""
from __future__ import annotations

import torch

from ptft_engine.data.errors import BadSamples
from ptft_engine.data.order import EpochOrder
from ptft_engine.data.plan import PackingPlan
from ptft_engine.data.stream import ShardStream, flag_unread, steps_left


class PlannedStream(ShardStream):
    def __init__(self, order: EpochOrder, builder, plan: PackingPlan, *, rows: int,
                 carry: tuple[EpochOrder, PackingPlan, int] | None = None, **stream):
        """carry: (order, plan, first row) of the previous epoch, whose rows from `first` on open
        this one; `stream`: ShardStream's keywords (rank, world_size, start, strict, cache, ...)."""
        super().__init__(order, builder, docs=rows, **stream)
        self.parts: list[tuple[ShardStream, PackingPlan, int, int]] = []  # (reader, plan, first row, rows)
        if carry is not None:
            prev_order, prev_plan, first = carry
            # the same shards (an epoch's order only moves positions), read in that epoch's order
            reader = ShardStream(prev_order, builder, rank=self.rank, world_size=self.world_size, docs=rows,
                                 start=0, strict=self.strict, cache=self.cache)
            self.parts.append((reader, prev_plan, first, prev_plan.n_rows - first))
        self.parts.append((self, plan, 0, plan.n_rows))
        self.steps = steps_left(sum(p[3] for p in self.parts), self.start, self.world_size, rows)

    def _spans(self, lo: int, hi: int):
        """(reader, plan, rows [plo, phi) of that plan, docs [d0, d1)) for the rows [lo, hi) of the epoch."""
        at = 0
        for reader, plan, first, n in self.parts:
            a, b = max(lo, at), min(hi, at + n)
            if a < b:
                plo, phi = first + a - at, first + b - at
                yield (reader, plan, plo, phi, *plan.docs_of(plo, phi))
            at += n

    def _upcoming(self, steps: range):
        """Shard ids in the order these steps first read them (what the prefetcher fetches)."""
        seen: set[int] = set()
        for step in steps:
            lo = self._first(step)
            for reader, _, _, _, d0, d1 in self._spans(lo, lo + self.docs):
                for sid in dict.fromkeys(reader._slice(d0, d1)[0].tolist()):
                    if sid not in seen:
                        seen.add(sid)
                        yield sid

    def batch(self, step: int, bad: BadSamples) -> dict:
        lo = self._first(step)
        hi = lo + self.docs
        skipped, unread = bad.count, bad.unread
        pieces, stats = [], {}
        for reader, plan, plo, phi, d0, d1 in self._spans(lo, hi):
            records = reader.read(d0, bad, stop=d1, want=plan.lengths[d0:d1] > 0)
            reader._unpin(reader._step_shards)
            part, part_stats = self.builder.pack_rows(plan, plo, phi, records, bad)
            pieces.append(part)
            for key, value in part_stats.items():
                stats[key] = stats.get(key, 0) + value
            # documents that begin in these rows (a split one is counted where it starts)
            begin = int(plan.row_pos[plo]) + (1 if plan.row_off[plo] > 0 else 0)
            end = int(plan.row_pos[phi]) + (1 if plan.row_off[phi] > 0 else 0)
            stats["samples"] = stats.get("samples", 0) + int((plan.lengths[begin:end] > 0).sum())
        batch = {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]} if len(pieces) > 1 else pieces[0]
        rows = torch.arange(lo, hi, dtype=torch.int64)
        batch = self.builder.finish_rows(batch, rows, self.order.epoch)
        stats["skipped"] = bad.count - skipped
        stats.update(self.counters())
        batch["_stats"] = stats
        if self.emit_sample_index:
            batch["sample_index"] = rows  # row indices in the epoch's list
        return flag_unread(batch, bad, unread)

    def close(self) -> None:
        for reader, *_ in self.parts:
            if reader is not self:
                reader.close()
        super().close()
