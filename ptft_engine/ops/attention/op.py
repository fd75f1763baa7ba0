"""Public `attention` and its autograd Function; the backend is chosen once per call."""
from __future__ import annotations

import torch

from ptft_engine.ops import registry
from ptft_engine.ops.attention.reference import attention_reference

MAX_HEAD_DIM = 128  # the fused GPU kernels keep a (BLOCK, D) tile in registers/shared memory
MAX_GRID_BH = 65535  # (batch, head) pairs index the GPU grid's second axis
_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _backend_module(name: str):
    if name == "triton":
        from ptft_engine.ops.attention import triton as mod
    else:  # "cpu" and "cuda" both live in the compiled extension
        from ptft_engine.ops.attention import native as mod
    return mod


class AttentionFunction(torch.autograd.Function):
    """Fused forward saves only (out, lse); backward recomputes the probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, causal, key_padding_mask, segment_ids, scale, backend):
        mod = _backend_module(backend)
        out, lse = mod.attention_forward(q, k, v, causal, key_padding_mask, segment_ids, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.masks = (key_padding_mask, segment_ids)  # integer/bool, never differentiated
        ctx.causal, ctx.scale, ctx.backend = causal, scale, backend
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        key_padding_mask, segment_ids = ctx.masks
        mod = _backend_module(ctx.backend)
        dq, dk, dv = mod.attention_backward(grad_out, q, k, v, out, lse, ctx.causal,
                                            key_padding_mask, segment_ids, ctx.scale)
        return dq, dk, dv, None, None, None, None, None


def _check_inputs(q, k, v, causal, key_padding_mask, segment_ids):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be (B, H, S, D), got shape {tuple(t.shape)}")
        if t.dtype not in _FLOAT:
            raise ValueError(f"attention: {name} must be a floating tensor, got {t.dtype}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"attention: {name} is {t.dtype} on {t.device} but q is {q.dtype} on {q.device}")
    b, h, s_q, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d or k.shape[1] == 0 or h % k.shape[1]:
        raise ValueError(f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} must be (B, Hkv, S_k, D) "
                         f"matching q {tuple(q.shape)}, with Hkv dividing H")
    s_k = k.shape[2]
    if s_k != s_q and (causal or segment_ids is not None):
        raise ValueError(f"attention: causal and segment_ids need equal query/key lengths, got {s_q} and {s_k}")
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (b, s_k):
            raise ValueError(f"attention: key_padding_mask must be bool (B, S_k) = ({b}, {s_k}) with True "
                             f"marking padding, got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != q.device:
            raise ValueError(f"attention: key_padding_mask is on {key_padding_mask.device}, q on {q.device}")
    if segment_ids is not None:
        if segment_ids.is_floating_point() or segment_ids.dtype == torch.bool or tuple(segment_ids.shape) != (b, s_q):
            raise ValueError(f"attention: segment_ids must be an integer (B, S) = ({b}, {s_q}) tensor, "
                             f"got {segment_ids.dtype} {tuple(segment_ids.shape)}")
        if segment_ids.device != q.device:
            raise ValueError(f"attention: segment_ids is on {segment_ids.device}, q on {q.device}")




def _op_reason(q: torch.Tensor):
    dtype, head_dim, dev = q.dtype, q.shape[-1], q.device.type

    def reason(backend: str) -> str | None:
        if backend == "reference":
            return None
        if backend in ("cpu", "cuda"):
            from ptft_engine.ops.attention.native import missing_reason

            missing = missing_reason(backend)
            if missing:
                return missing
        if backend == "cpu":
            if dtype not in (torch.float32, torch.bfloat16, torch.float64):
                return f"the C++ CPU kernel takes float32, bfloat16 or float64, got {dtype}"
            return None
        if q.shape[0] * q.shape[1] > MAX_GRID_BH:
            return f"B*H = {q.shape[0] * q.shape[1]} exceeds the {backend} kernel's grid limit {MAX_GRID_BH}"
        if head_dim > MAX_HEAD_DIM:
            return f"head dim {head_dim} > {MAX_HEAD_DIM} is not supported by the fused {backend} kernel"
        if dtype == torch.float64:
            return f"the {backend} kernel does not take float64"
        if backend == "triton" and dev == "cpu" and dtype == torch.bfloat16:
            return "the Triton interpreter has no bfloat16 arithmetic (use float32/float16 on CPU)"
        return None

    return reason


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention over (B, H, S, D) tensors, fused when a kernel can run.

    key_padding_mask: bool (B, S_k), True marks PADDING keys to ignore (PyTorch's
    nn.MultiheadAttention convention; SDPA's bool attn_mask means the opposite).
    segment_ids: int (B, S); query i sees key j only when their ids match (packed
    documents), combined with `causal` and the padding mask. Rows that see no key
    return zeros (and zero gradients). `scale` defaults to D**-0.5. `backend`:
    None | "reference" | "cpu" | "triton" | "cuda" (see ops/registry.py); automatic choice
    takes Triton over the CUDA kernel on GPUs (both on tensor cores for fp16/bf16; CUDA's fp32 path is
    scalar), and the C++ kernel on CPUs.
    """
    _check_inputs(q, k, v, causal, key_padding_mask, segment_ids)
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    name = registry.choose("attention", q.device, backend, _op_reason(q), gpu_order=registry.MATMUL_GPU_ORDER)
    if name == "reference":
        return attention_reference(q, k, v, causal=causal, key_padding_mask=key_padding_mask,
                                   segment_ids=segment_ids, scale=scale)
    kpm = None if key_padding_mask is None else key_padding_mask.contiguous()
    seg = None if segment_ids is None else segment_ids.to(torch.int32).contiguous()
    return AttentionFunction.apply(q, k, v, bool(causal), kpm, seg, scale, name)
