"""DeepSpeed pre-training engine: trainer, atomic checkpoints, schedules, metrics, launcher.

The trainer (torch, DeepSpeed) is imported on first use, so the launcher
(`python -m ptft_engine.engine.launcher`) starts without them.
"""
from __future__ import annotations

import importlib

__all__ = ["Trainer", "TrainingStopped", "TrainState"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("ptft_engine.engine.trainer"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
