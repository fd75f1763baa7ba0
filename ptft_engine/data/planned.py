"""One rank's share of a packed text epoch: rows of the packing plan, split over workers.

As ShardStream (whose reading and worker split it reuses), but the unit is a row of
the plan (data/plan.py) instead of a document: batch `step` of rank `r` holds the rows
[start + (step * world + r) * B, ... + B) and reads the documents those rows draw from.
The plan is the same on every rank, so the rows of a step are too, on any world size.
"""
from __future__ import annotations

import torch

from ptft_engine.data.errors import BadSamples
from ptft_engine.data.order import EpochOrder
from ptft_engine.data.plan import PackingPlan
from ptft_engine.data.stream import ShardStream, steps_left


class PlannedStream(ShardStream):
    def __init__(self, order: EpochOrder, builder, plan: PackingPlan, *, rank: int, world_size: int, rows: int,
                 start: int, strict: bool, emit_sample_index: bool = False):
        super().__init__(order, builder, rank=rank, world_size=world_size, docs=rows, start=start, strict=strict,
                         emit_sample_index=emit_sample_index)
        self.plan = plan
        self.steps = steps_left(plan.n_rows, start, world_size, rows)

    def batch(self, step: int, bad: BadSamples) -> dict:
        plan = self.plan
        lo = self.start + (step * self.world_size + self.rank) * self.docs
        hi = lo + self.docs
        first, stop = plan.docs_of(lo, hi)
        skipped = bad.count
        records = self.read(first, bad, stop=stop, want=plan.lengths[first:stop] > 0)
        batch, stats = self.builder.build_rows(plan, lo, hi, records, epoch=self.order.epoch, bad=bad)
        stats["skipped"] = bad.count - skipped
        # documents that begin in these rows (a split one is counted where it starts)
        begin = int(plan.row_pos[lo]) + (1 if plan.row_off[lo] > 0 else 0)
        end = int(plan.row_pos[hi]) + (1 if plan.row_off[hi] > 0 else 0)
        stats["samples"] = int((plan.lengths[begin:end] > 0).sum())
        batch["_stats"] = stats
        if self.emit_sample_index:
            batch["sample_index"] = torch.arange(lo, hi, dtype=torch.int64)  # the plan's row indices
        return batch
