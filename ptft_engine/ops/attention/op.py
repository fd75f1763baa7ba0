"""Public `attention`: the custom op ptft::attention (+ its backward op), its fake and autograd.

The backend is chosen inside the ops, so torch.compile sees one opaque node per direction and
never traces the choice; the request (argument, default, environment) is resolved at the call and
passed along, so the backward picks the same backend as the forward.
"""

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula, sdpa_flop_count

from ptft_engine.ops import registry

MAX_HEAD_DIM = 128  # the fused GPU kernels keep a (BLOCK, D) tile in registers/shared memory
MAX_GRID_BH = 65535  # (batch, head) pairs index the GPU grid's second axis
_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _op_reason(backend: str, q: torch.Tensor) -> str | None:
    """Why this call cannot run on `backend` beyond the registry's generic limits (None: it can)."""
    dtype, head_dim = q.dtype, q.shape[-1]
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
    if backend == "triton" and q.device.type == "cpu" and dtype == torch.bfloat16:
        return "the Triton interpreter has no bfloat16 arithmetic (use float32/float16 on CPU)"
    return None


def _kernels(q: Tensor, backend: str):
    return registry.kernels("attention", registry.choose("attention", q, backend, _op_reason))


def _lse_dtype(q: Tensor) -> torch.dtype:
    return torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for gradcheck


@torch.library.custom_op("ptft::attention", mutates_args=())
def attention_op(q: Tensor, k: Tensor, v: Tensor, attention_mask: Tensor | None, segment_ids: Tensor | None,
                 causal: bool, scale: float, backend: str) -> tuple[Tensor, Tensor]:
    """(out (B, H, S_q, D), lse (B, H, S_q)); lse is saved for the backward, not differentiable."""
    out, lse = _kernels(q, backend).forward(q, k, v, causal, attention_mask, segment_ids, scale)
    return out.contiguous(), lse.contiguous()


@attention_op.register_fake
def _(q, k, v, attention_mask, segment_ids, causal, scale, backend):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=_lse_dtype(q))


@torch.library.custom_op("ptft::attention_backward", mutates_args=())
def attention_backward_op(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                          attention_mask: Tensor | None, segment_ids: Tensor | None, causal: bool,
                          scale: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    grads = _kernels(q, backend).backward(grad_out, q, k, v, out, lse, causal, attention_mask, segment_ids, scale)
    return tuple(g.contiguous() for g in grads)


@attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, attention_mask, segment_ids, causal, scale, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, attention_mask, segment_ids, causal, scale, backend = inputs
    ctx.save_for_backward(q, k, v, *output, attention_mask, segment_ids)
    ctx.causal, ctx.scale, ctx.backend = causal, scale, backend


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse, attention_mask, segment_ids = ctx.saved_tensors
    dq, dk, dv = attention_backward_op(grad_out, q, k, v, out, lse, attention_mask, segment_ids,
                                       ctx.causal, ctx.scale, ctx.backend)
    return dq, dk, dv, None, None, None, None, None


attention_op.register_autograd(_backward, setup_context=_setup_context)


# FlopCounterMode (MFU tools, the FLOPs test) counts our op as SDPA's: every score, masks ignored.
# K/V are counted with the query's head count, as the math is the same with grouped heads.
def _as_query_heads(q_shape, kv_shape):
    return (*kv_shape[:1], q_shape[1], *kv_shape[2:])


@register_flop_formula(torch.ops.ptft.attention)
def _attention_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q_shape, _as_query_heads(q_shape, k_shape), _as_query_heads(q_shape, v_shape))


@register_flop_formula(torch.ops.ptft.attention_backward)
def _attention_backward_flops(grad_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    # the gradient's four matmuls (dV, dP, dQ, dK), twice the forward, as plain autograd counts them and
    # MFU conventions (6N + 12LSd per token) assume; a kernel's recomputation of QK^T is not useful work
    return 2 * _attention_flops(q_shape, k_shape, v_shape)


def _check_inputs(q, k, v, causal, attention_mask, segment_ids):
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
    if attention_mask is not None:
        if attention_mask.dtype != torch.bool or tuple(attention_mask.shape) != (b, s_k):
            raise ValueError(f"attention: attention_mask must be bool (B, S_k) = ({b}, {s_k}) with True "
                             f"marking keys to attend, got {attention_mask.dtype} {tuple(attention_mask.shape)}")
        if attention_mask.device != q.device:
            raise ValueError(f"attention: attention_mask is on {attention_mask.device}, q on {q.device}")
    if segment_ids is not None:
        if segment_ids.is_floating_point() or segment_ids.dtype == torch.bool or tuple(segment_ids.shape) != (b, s_q):
            raise ValueError(f"attention: segment_ids must be an integer (B, S) = ({b}, {s_q}) tensor, "
                             f"got {segment_ids.dtype} {tuple(segment_ids.shape)}")
        if segment_ids.device != q.device:
            raise ValueError(f"attention: segment_ids is on {segment_ids.device}, q on {q.device}")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    attention_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention over (B, H, S, D) tensors, fused when a kernel can run.

    attention_mask: bool (B, S_k), True marks keys to attend, False padding (the convention of
    the models, the data and Hugging Face). segment_ids: int (B, S); query i sees key j only when
    their ids match (packed documents), combined with `causal` and the mask. Rows that see no key
    return zeros (and zero gradients). `scale` defaults to D**-0.5. `backend`: None | "reference" |
    "cpu" | "triton" | "cuda" (see ops/registry.py); automatic choice takes a tensor-core kernel
    first on GPUs (registry.TENSOR_CORE_KERNELS) and the C++ kernel on CPUs.
    """
    _check_inputs(q, k, v, causal, attention_mask, segment_ids)
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    mask = None if attention_mask is None else attention_mask.contiguous()
    seg = None if segment_ids is None else segment_ids.to(torch.int32).contiguous()
    out, _ = attention_op(q, k, v, mask, seg, bool(causal), scale, registry.requested(backend))
    return out
