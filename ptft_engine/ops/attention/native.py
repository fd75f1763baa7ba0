"""Launchers for the compiled attention kernels in ptft_engine._C (C++ CPU and CUDA)."""
from __future__ import annotations

import torch

from ptft_engine.ops import _native

_FUNCS = ("attention_{dev}_forward", "attention_{dev}_backward")


def missing_reason(device_type: str) -> str | None:
    """Why the extension cannot run attention on `device_type` (None when it can)."""
    if _native.LOAD_ERROR:
        return _native.LOAD_ERROR
    names = [f.format(dev=device_type) for f in _FUNCS]
    if not all(hasattr(_native.native(), n) for n in names):
        return f"ptft_engine._C has no {names[0]} (stale build: rebuild the extension)"
    return None


def _fn(kind: str, device: torch.device):
    return getattr(_native.native(), f"attention_{device.type}_{kind}")


def attention_forward(q, k, v, causal, key_padding_mask, segment_ids, scale):
    """(out (B, H, S_q, D) in q's dtype, lse (B, H, S_q) fp32 or fp64)."""
    out, lse = _fn("forward", q.device)(q.contiguous(), k.contiguous(), v.contiguous(), causal,
                                        key_padding_mask, segment_ids, scale)
    return out, lse


def attention_backward(grad_out, q, k, v, out, lse, causal, key_padding_mask, segment_ids, scale):
    """(dq, dk, dv) in the inputs' dtype; recomputes the probabilities from lse."""
    dq, dk, dv = _fn("backward", q.device)(grad_out.contiguous(), q.contiguous(), k.contiguous(),
                                           v.contiguous(), out.contiguous(), lse.contiguous(), causal,
                                           key_padding_mask, segment_ids, scale)
    return dq, dk, dv
