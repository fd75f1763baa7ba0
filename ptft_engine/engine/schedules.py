"""Learning-rate schedules: linear warmup, then cosine or linear decay to a floor.

A pure function of the step, so a resumed run needs no scheduler state to get the
same learning rate as an uninterrupted one.
"""
from __future__ import annotations

import math


def lr_at(step: int, *, base_lr: float, total_steps: int, warmup_steps: int = 0,
          schedule: str = "cosine", min_lr_ratio: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    floor = base_lr * min_lr_ratio
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "cosine":
        return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return base_lr - (base_lr - floor) * progress
    raise ValueError(f"train.schedule: unknown schedule {schedule!r}; choose cosine, linear or constant")
