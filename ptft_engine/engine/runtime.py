"""The process's device, seed and batches, for the DeepSpeed trainer and the plain-PyTorch
fine-tuning loop alike: torch and numpy only, so fine-tuning never needs DeepSpeed."""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def pick_device(want: str, key: str = "run.device") -> torch.device:
    """'auto' | 'cpu' | 'cuda' -> this process's device (its LOCAL_RANK's GPU under a
    launcher); `key` names the setting in the error when no GPU is visible."""
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{key}: cuda requested but no CUDA device is visible")
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Python, numpy and torch (every device) from one seed. Model init must match on every
    rank, so ranks share the seed; data order and augmentation come from their own seeds."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def move_batch(batch: dict[str, Any], device: torch.device, float_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The batch's tensors on `device` (non-tensors as they are); floating ones cast to
    `float_dtype` when given, since DeepSpeed casts the module to bf16/fp16, not its inputs."""
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            value = value.to(device, non_blocking=True)
            if float_dtype is not None and value.is_floating_point():
                value = value.to(float_dtype)
        out[key] = value
    return out
