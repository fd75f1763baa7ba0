"""Launchers for the compiled attention kernels in ptft_engine._C (C++ CPU and CUDA)."""
from __future__ import annotations

import torch

from ptft_engine.ops import _native
from ptft_engine.ops.attention.layout import rows_contiguous

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


def _padding(attention_mask):
    """The kernels take True = padding key: the one place the mask is inverted for them."""
    return None if attention_mask is None else (~attention_mask).contiguous()


def _layout(t: torch.Tensor) -> torch.Tensor:
    """The CUDA kernels read q/k/v/dO/out by their strides (the models' transposed views are not
    copied). The C++ CPU kernel packs a kv group's rows as one contiguous block and indexes
    plain (B, H, S, D) arrays, so on CPU a strided view is copied once here."""
    return rows_contiguous(t) if t.device.type == "cuda" else t.contiguous()


def forward(q, k, v, causal, attention_mask, segment_ids, scale):
    """(out (B, H, S_q, D) in q's dtype, lse (B, H, S_q) fp32 or fp64)."""
    return _fn("forward", q.device)(_layout(q), _layout(k), _layout(v), causal, _padding(attention_mask),
                                    segment_ids, scale)


def backward(grad_out, q, k, v, out, lse, causal, attention_mask, segment_ids, scale):
    """(dq, dk, dv) in the inputs' dtype; recomputes the probabilities from lse."""
    return _fn("backward", q.device)(_layout(grad_out), _layout(q), _layout(k), _layout(v), _layout(out),
                                     lse.contiguous(), causal, _padding(attention_mask), segment_ids, scale)
