"""Rank-0 logging: a tqdm bar, JSONL lines and TensorBoard scalars; MFU and memory.

MFU = achieved model FLOP/s ÷ peak FLOP/s of the devices, with the model FLOPs per token
(or sample) for forward + backward reported by the objective.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

# Dense bf16 tensor-core peaks (TFLOP/s), for MFU on known GPUs.
_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "V100": 125.0}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in _PEAK_TFLOPS.items():
            if key in name:
                return value
    return None  # unknown (CPU): MFU is not reported


def memory_stats(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"mem_alloc_gb": torch.cuda.memory_allocated(device) / 2**30,
                "mem_peak_gb": torch.cuda.max_memory_allocated(device) / 2**30}
    try:
        import psutil
        return {"mem_rss_gb": psutil.Process().memory_info().rss / 2**30}
    except ImportError:  # pragma: no cover
        return {}


class MetricsLogger:
    """Does nothing on ranks other than 0, so callers need no rank checks."""

    def __init__(self, run_dir: Path, *, enabled: bool, total_steps: int, start_step: int,
                 tensorboard: bool, progress_bar: bool):
        self.enabled = enabled
        self._jsonl = self._tb = self._bar = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "metrics.jsonl", "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard not installed: JSONL still has everything
                self._tb = None
        if progress_bar:
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, initial=start_step, desc="pretrain", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, Any], *, split: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"{split}/{key}", value, step)
        if self._bar is not None and split == "train":
            shown = {k: metrics[k] for k in ("loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "mfu")
                     if metrics.get(k) is not None}
            self._bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in shown.items()})

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


class DataCounters:
    """The data loader's counters (`Loader.stats`: samples, skipped samples, dropped and pad
    tokens, ...), per log interval and summed over ranks, plus totals for the end-of-run
    summary. A loader replaced at an epoch's end is collected first, so nothing is lost."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self._interval: dict[str, int] = {}
        self._loader = None
        self._seen: dict[str, int] = {}

    def collect(self, loader) -> None:
        stats = dict(getattr(loader, "stats", None) or {})
        if loader is not self._loader:
            self._loader, self._seen = loader, {}
        for key, value in stats.items():
            delta = int(value) - self._seen.get(key, 0)
            if delta:
                self._interval[key] = self._interval.get(key, 0) + delta
        self._seen = stats

    def take(self, world_size: int) -> dict[str, int]:
        """Collective (every rank calls it): this interval's counts of all ranks together."""
        parts = [self._interval]
        if world_size > 1:
            import torch.distributed as dist
            parts = [None] * world_size
            dist.all_gather_object(parts, self._interval)
        self._interval = {}
        out: dict[str, int] = {}
        for part in parts:
            for key, value in part.items():
                out[key] = out.get(key, 0) + value
        for key, value in out.items():
            self.totals[key] = self.totals.get(key, 0) + value
        return out
