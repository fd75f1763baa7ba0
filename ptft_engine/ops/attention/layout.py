"""The input layout the Triton and CUDA attention kernels accept, in one place."""
from __future__ import annotations

import torch


def rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels address (B, H, S, D) tensors by their batch/head/sequence strides (the models'
    transposed views need no copy); only the head dim must be contiguous."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()
