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
from ptft_engine.data.stream import ShardStream, steps_left


class PlannedStream(ShardStream):
    def __init__(self, order: EpochOrder, builder, plan: PackingPlan, *, rank: int, world_size: int, rows: int,
                 start: int, strict: bool, emit_sample_index: bool = False,
                 carry: tuple[EpochOrder, PackingPlan, int] | None = None):
        """carry: (order, plan, first row) of the previous epoch, whose rows from `first` on open this one."""
        super().__init__(order, builder, rank=rank, world_size=world_size, docs=rows, start=start, strict=strict,
                         emit_sample_index=emit_sample_index)
        self.parts: list[tuple[ShardStream, PackingPlan, int, int]] = []  # (reader, plan, first row, rows)
        if carry is not None:
            prev_order, prev_plan, first = carry
            reader = ShardStream(prev_order, builder, rank=rank, world_size=world_size, docs=rows, start=0,
                                 strict=strict)
            self.parts.append((reader, prev_plan, first, prev_plan.n_rows - first))
        self.parts.append((self, plan, 0, plan.n_rows))
        self.steps = steps_left(sum(p[3] for p in self.parts), start, world_size, rows)

    def batch(self, step: int, bad: BadSamples) -> dict:
        lo = self.start + (step * self.world_size + self.rank) * self.docs
        hi = lo + self.docs
        skipped = bad.count
        pieces, stats, at = [], {}, 0
        for reader, plan, first, n in self.parts:
            a, b = max(lo, at), min(hi, at + n)
            at += n
            if a >= b:
                continue
            plo, phi = first + a - (at - n), first + b - (at - n)  # rows of this part's plan
            d0, d1 = plan.docs_of(plo, phi)
            records = reader.read(d0, bad, stop=d1, want=plan.lengths[d0:d1] > 0)
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
        batch["_stats"] = stats
        if self.emit_sample_index:
            batch["sample_index"] = rows  # row indices in the epoch's list
        return batch

    def close(self) -> None:
        for reader, *_ in self.parts:
            if reader is not self:
                reader.close()
        super().close()
