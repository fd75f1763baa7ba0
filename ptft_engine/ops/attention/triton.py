"""Flash-attention-2 style Triton kernels: online softmax forward saving the log-sum-exp,
backward recomputing probabilities (one kernel for dK/dV, one for dQ: no atomics, no
S x S matrix). Head dims up to 128 (odd ones padded to a power-of-two BLOCK_D and masked),
any sequence length, causal / key padding / segments. Runs under TRITON_INTERPRET=1 on
CPU for fp32/fp16 with fixed small blocks; on a GPU the block shapes are autotuned.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ptft_engine.ops.registry import triton_interpret

LOG2E = 1.4426950408889634  # kernels work in base 2: exp(x) = exp2(x * log2(e))


@triton.jit
def _visible(r, c, s_q, s_k, pad_row_ptr, seg_row_ptr,
             CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr):
    """Query row r may attend key col c (bounds included), for r and c already laid out to broadcast:
    rows[:, None] and cols[None, :] give (M, N), rows[None, :] and cols[:, None] the transposed (N, M),
    so the backward builds its mask in its own layout instead of transposing a boolean tile."""
    ok = (r < s_q) & (c < s_k)
    if CAUSAL:
        ok = ok & (c <= r)
    if HAS_PAD:
        is_pad = tl.load(pad_row_ptr + c, mask=c < s_k, other=1)
        ok = ok & (is_pad == 0)
    if HAS_SEG:
        seg_q = tl.load(seg_row_ptr + r, mask=r < s_q, other=-1)
        seg_k = tl.load(seg_row_ptr + c, mask=c < s_k, other=-2)
        ok = ok & (seg_q == seg_k)
    return ok


@triton.jit
def _full_blocks_end(start_m, s_k, CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keys [0, end) are visible to every row of query block start_m, in whole BLOCK_N steps."""
    tl.static_assert(BLOCK_M % BLOCK_N == 0, "causal splitting needs BLOCK_M to be a multiple of BLOCK_N")
    if HAS_PAD:  # (separate branches: constexpr conditions, no boolean operators)
        end = 0
    elif HAS_SEG:
        end = 0
    elif CAUSAL:
        end = start_m * BLOCK_M
    else:
        end = (s_k // BLOCK_N) * BLOCK_N
    return end


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, rows, dims, dim_ok, k_base, v_base, lo, hi, s_q, s_k, head_dim,
               pad_row, seg_row, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr, DOT_PREC: tl.constexpr, BLOCK_N: tl.constexpr):
    """Online-softmax update of (acc, l_i, m_i) over key blocks [lo, hi)."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (cols[:, None] < s_k) & dim_ok[None, :]
        k = tl.load(k_base + cols[:, None] * head_dim + dims[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        if MASKED:
            ok = _visible(rows[:, None], cols[None, :], s_q, s_k, pad_row, seg_row, CAUSAL, HAS_PAD, HAS_SEG)
            s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * head_dim + dims[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, pad_ptr, seg_ptr,
                     s_q, s_k, head_dim, n_heads, qk_scale, seq_bucket,
                     CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr,
                     DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    batch = bh // n_heads
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    q_base = q_ptr + bh.to(tl.int64) * s_q * head_dim
    kv_base = bh.to(tl.int64) * s_k * head_dim
    pad_row = pad_ptr + batch * s_k
    seg_row = seg_ptr + batch * s_q
    q = tl.load(q_base + rows[:, None] * head_dim + dims[None, :],
                mask=(rows[:, None] < s_q) & dim_ok[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max, base-2 units
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = s_k
    if CAUSAL:  # keys past this block's last row are invisible to all of it
        hi = tl.minimum(s_k, (start_m + 1) * BLOCK_M)
    # Key blocks every row sees in full run without mask arithmetic; the rest (diagonal,
    # ragged tail, padding/segments) are masked.
    split = _full_blocks_end(start_m, s_k, CAUSAL, HAS_PAD, HAS_SEG, BLOCK_M, BLOCK_N)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, rows, dims, dim_ok, k_ptr + kv_base, v_ptr + kv_base, 0, split,
                               s_q, s_k, head_dim, pad_row, seg_row, qk_scale, False, CAUSAL, HAS_PAD, HAS_SEG,
                               DOT_PREC, BLOCK_N)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, rows, dims, dim_ok, k_ptr + kv_base, v_ptr + kv_base, split, hi,
                               s_q, s_k, head_dim, pad_row, seg_row, qk_scale, True, CAUSAL, HAS_PAD, HAS_SEG,
                               DOT_PREC, BLOCK_N)
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    tl.store(o_ptr + bh.to(tl.int64) * s_q * head_dim + rows[:, None] * head_dim + dims[None, :],
             out.to(o_ptr.dtype.element_ty), mask=(rows[:, None] < s_q) & dim_ok[None, :])
    lse = tl.where(empty, float("inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    tl.store(lse_ptr + bh * s_q + rows, lse, mask=rows < s_q)


@triton.jit
def _attn_bwd_preprocess(o_ptr, do_ptr, delta_ptr, n_rows, head_dim,
                         BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """delta_i = dO_i . O_i (= sum_j P_ij dP_ij), one value per query row."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n_rows) & (dims[None, :] < head_dim)
    offs = rows.to(tl.int64)[:, None] * head_dim + dims[None, :]
    o = tl.load(o_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(do_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(delta_ptr + rows, tl.sum(o * do, 1), mask=rows < n_rows)


@triton.jit
def _dkdv_inner(dk, dv, k, v, cols, dims, dim_ok, q_base, do_base, lse_row, delta_row, lo, hi, s_q, s_k,
                head_dim, pad_row, seg_row, scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr, DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr):
    """Accumulates dK, dV of one key block over query blocks [lo, hi)."""
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        q_mask = (rows[:, None] < s_q) & dim_ok[None, :]
        q = tl.load(q_base + rows[:, None] * head_dim + dims[None, :], mask=q_mask, other=0.0)
        do = tl.load(do_base + rows[:, None] * head_dim + dims[None, :], mask=q_mask, other=0.0)
        lse = tl.load(lse_row + rows, mask=rows < s_q, other=float("inf"))
        delta = tl.load(delta_row + rows, mask=rows < s_q, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * (scale * 1.4426950408889634)
        p_t = tl.exp2(s_t - lse[None, :] * 1.4426950408889634)  # (BLOCK_N, BLOCK_M)
        if MASKED:
            ok_t = _visible(rows[None, :], cols[:, None], s_q, s_k, pad_row, seg_row, CAUSAL, HAS_PAD, HAS_SEG)
            p_t = tl.where(ok_t, p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PREC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PREC)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                          pad_ptr, seg_ptr, s_q, s_k, head_dim, n_heads, scale, seq_bucket,
                          CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr,
                          DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_D: tl.constexpr):
    """One key block per program; loops over the query blocks that can see it."""
    start_n = tl.program_id(0)
    bh = tl.program_id(1)
    batch = bh // n_heads
    cols = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    q_base = bh.to(tl.int64) * s_q * head_dim
    kv_offs = bh.to(tl.int64) * s_k * head_dim + cols[:, None] * head_dim + dims[None, :]
    kv_mask = (cols[:, None] < s_k) & dim_ok[None, :]
    k = tl.load(k_ptr + kv_offs, mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + kv_offs, mask=kv_mask, other=0.0)
    pad_row = pad_ptr + batch * s_k
    seg_row = seg_ptr + batch * s_q
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo = 0
    if CAUSAL:  # rows before this block's first key see none of it
        lo = (start_n * BLOCK_N // BLOCK_M) * BLOCK_M
    # Query blocks [lo, mid) need masks; from mid on every row sees this whole key block.
    if HAS_PAD:
        mid = s_q
    elif HAS_SEG:
        mid = s_q
    elif CAUSAL:
        mid = tl.minimum(s_q, tl.cdiv((start_n + 1) * BLOCK_N, BLOCK_M) * BLOCK_M)
    else:
        mid = 0
    # Out-of-range rows load lse = +inf (p = 0) and out-of-range keys are never stored, so
    # unmasked blocks need no bounds arithmetic on the scores.
    dk, dv = _dkdv_inner(dk, dv, k, v, cols, dims, dim_ok, q_ptr + q_base, do_ptr + q_base, lse_ptr + bh * s_q,
                         delta_ptr + bh * s_q, lo, mid, s_q, s_k, head_dim, pad_row, seg_row,
                         scale, True, CAUSAL, HAS_PAD, HAS_SEG, DOT_PREC, BLOCK_M)
    dk, dv = _dkdv_inner(dk, dv, k, v, cols, dims, dim_ok, q_ptr + q_base, do_ptr + q_base, lse_ptr + bh * s_q,
                         delta_ptr + bh * s_q, mid, s_q, s_q, s_k, head_dim, pad_row, seg_row,
                         scale, False, CAUSAL, HAS_PAD, HAS_SEG, DOT_PREC, BLOCK_M)
    tl.store(dk_ptr + kv_offs, (dk * scale).to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + kv_offs, dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, rows, dims, dim_ok, k_base, v_base, lo, hi, s_q, s_k, head_dim,
              pad_row, seg_row, scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr,
              HAS_SEG: tl.constexpr, DOT_PREC: tl.constexpr, BLOCK_N: tl.constexpr):
    """Accumulates dQ of one query block over key blocks [lo, hi)."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (cols[:, None] < s_k) & dim_ok[None, :]
        k = tl.load(k_base + cols[:, None] * head_dim + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + cols[:, None] * head_dim + dims[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * (scale * 1.4426950408889634)
        p = tl.exp2(s - lse[:, None] * 1.4426950408889634)
        if MASKED:
            ok = _visible(rows[:, None], cols[None, :], s_q, s_k, pad_row, seg_row, CAUSAL, HAS_PAD, HAS_SEG)
            p = tl.where(ok, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                        pad_ptr, seg_ptr, s_q, s_k, head_dim, n_heads, scale, seq_bucket,
                        CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr,
                        DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_D: tl.constexpr):
    """One query block per program; loops over the key blocks it can see."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    batch = bh // n_heads
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    q_offs = bh.to(tl.int64) * s_q * head_dim + rows[:, None] * head_dim + dims[None, :]
    q_mask = (rows[:, None] < s_q) & dim_ok[None, :]
    q = tl.load(q_ptr + q_offs, mask=q_mask, other=0.0)
    do = tl.load(do_ptr + q_offs, mask=q_mask, other=0.0)
    lse = tl.load(lse_ptr + bh * s_q + rows, mask=rows < s_q, other=float("inf"))
    delta = tl.load(delta_ptr + bh * s_q + rows, mask=rows < s_q, other=0.0)
    kv_base = bh.to(tl.int64) * s_k * head_dim
    pad_row = pad_ptr + batch * s_k
    seg_row = seg_ptr + batch * s_q
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = s_k
    if CAUSAL:
        hi = tl.minimum(s_k, (start_m + 1) * BLOCK_M)
    split = _full_blocks_end(start_m, s_k, CAUSAL, HAS_PAD, HAS_SEG, BLOCK_M, BLOCK_N)
    dq = _dq_inner(dq, q, do, lse, delta, rows, dims, dim_ok, k_ptr + kv_base, v_ptr + kv_base, 0, split,
                   s_q, s_k, head_dim, pad_row, seg_row, scale, False, CAUSAL, HAS_PAD, HAS_SEG, DOT_PREC, BLOCK_N)
    dq = _dq_inner(dq, q, do, lse, delta, rows, dims, dim_ok, k_ptr + kv_base, v_ptr + kv_base, split, hi,
                   s_q, s_k, head_dim, pad_row, seg_row, scale, True, CAUSAL, HAS_PAD, HAS_SEG, DOT_PREC, BLOCK_N)
    tl.store(dq_ptr + q_offs, (dq * scale).to(dq_ptr.dtype.element_ty), mask=q_mask)


def _configs(kind: str):
    """Block shapes (BLOCK_M, BLOCK_N, warps, stages) for H100/H200-class GPUs (228 KB shared
    memory, bf16 tensor cores). fwd and dq split their key loop at a query-block boundary,
    so they need BLOCK_M % BLOCK_N == 0; dkdv (wide key blocks, narrow query steps) does not."""
    shapes = {
        "fwd": [(128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 4, 4)],
        "dq": [(64, 64, 4, 2), (128, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 3), (32, 32, 4, 3)],
        "dkdv": [(64, 64, 4, 2), (32, 128, 8, 2), (64, 128, 8, 2), (32, 64, 4, 3), (64, 32, 4, 3)],
    }[kind]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st in shapes]


# Tune per power-of-two bucket of the sequence length (seq_bucket, unused by the kernels),
# not per exact length: packed batches vary in length every step.
_KEY = ["seq_bucket", "BLOCK_D", "CAUSAL", "HAS_PAD", "HAS_SEG", "DOT_PREC"]
# PTFT_TRITON_AUTOTUNE=0 uses one fixed config on GPU (tests: no tuning sweep per shape).
AUTOTUNE = os.environ.get("PTFT_TRITON_AUTOTUNE", "1") != "0"
_FIXED_GPU_META = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
_tuned = {
    "fwd": triton.autotune(_configs("fwd"), key=_KEY)(_attn_fwd_kernel),
    "dkdv": triton.autotune(_configs("dkdv"), key=_KEY)(_attn_bwd_dkdv_kernel),
    "dq": triton.autotune(_configs("dq"), key=_KEY)(_attn_bwd_dq_kernel),
}
_raw = {"fwd": _attn_fwd_kernel, "dkdv": _attn_bwd_dkdv_kernel, "dq": _attn_bwd_dq_kernel}
# The interpreter runs one numpy op per block: fixed 32-wide blocks, no tuning sweep.
_INTERPRET_META = {"BLOCK_M": 32, "BLOCK_N": 32}


# kind -> launch meta that every call uses instead of tuning (pin_config): ranks that pin the same
# config run identical kernels, and tests run each autotune entry under the interpreter.
_pinned: dict[str, dict] = {}


def configs(kind: str) -> list[dict]:
    """The autotune list of kernel `kind` ("fwd", "dkdv", "dq") as launch meta dicts."""
    return [{**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages} for c in _configs(kind)]


def pin_config(kind: str, meta: dict | None) -> None:
    """Use `meta` (BLOCK_M, BLOCK_N, num_warps, num_stages) for every launch of `kind`; None unpins."""
    if kind not in _raw:
        raise ValueError(f"unknown attention kernel {kind!r}; choose one of {', '.join(_raw)}")
    if meta is None:
        _pinned.pop(kind, None)
    else:
        _pinned[kind] = dict(meta)


def _launch(kind: str, n_blocks_of, bh: int, *args, **consts):
    block = "BLOCK_N" if kind == "dkdv" else "BLOCK_M"
    if kind in _pinned or triton_interpret() or not AUTOTUNE:
        meta = dict(_pinned.get(kind) or (_INTERPRET_META if triton_interpret() else _FIXED_GPU_META))
        if triton_interpret():  # warps and stages mean nothing to the interpreter
            meta = {key: meta[key] for key in ("BLOCK_M", "BLOCK_N")}
        _raw[kind][(triton.cdiv(n_blocks_of, meta[block]), bh)](*args, **consts, **meta)
        return
    _tuned[kind][lambda meta: (triton.cdiv(n_blocks_of, meta[block]), bh)](*args, **consts)


def _bucket(s_q: int, s_k: int) -> int:
    return triton.next_power_of_2(max(s_q, s_k))


def _mask_args(q, key_padding_mask, segment_ids):
    # Absent masks still need a pointer argument; the constexpr flags keep it unread.
    pad = q if key_padding_mask is None else key_padding_mask.contiguous().view(torch.uint8)
    seg = q if segment_ids is None else segment_ids.to(torch.int32).contiguous()
    return pad, seg


def _consts(q, causal, key_padding_mask, segment_ids):
    head_dim = q.shape[-1]
    return dict(CAUSAL=bool(causal), HAS_PAD=key_padding_mask is not None, HAS_SEG=segment_ids is not None,
                DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
                BLOCK_D=max(16, triton.next_power_of_2(head_dim)))


def attention_forward(q, k, v, causal, key_padding_mask, segment_ids, scale):
    """(out (B, H, S_q, D) in q's dtype, lse (B, H, S_q) fp32, natural log, +inf if empty)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, h, s_q, d = q.shape
    s_k = k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty((b, h, s_q), device=q.device, dtype=torch.float32)
    pad, seg = _mask_args(q, key_padding_mask, segment_ids)
    _launch("fwd", s_q, b * h, q, k, v, out, lse, pad, seg, s_q, s_k, d, h, scale * LOG2E,
            _bucket(s_q, s_k), **_consts(q, causal, key_padding_mask, segment_ids))
    return out, lse


def attention_backward(grad_out, q, k, v, out, lse, causal, key_padding_mask, segment_ids, scale):
    """(dq, dk, dv) in the inputs' dtype, recomputing probabilities from lse."""
    grad_out, q, k, v, out = (t.contiguous() for t in (grad_out, q, k, v, out))
    b, h, s_q, d = q.shape
    s_k = k.shape[2]
    consts = _consts(q, causal, key_padding_mask, segment_ids)
    delta = torch.empty((b, h, s_q), device=q.device, dtype=torch.float32)
    pre_block = 32 if triton_interpret() else 64
    _attn_bwd_preprocess[(triton.cdiv(b * h * s_q, pre_block),)](
        out, grad_out, delta, b * h * s_q, d, BLOCK_M=pre_block, BLOCK_D=consts["BLOCK_D"])
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    pad, seg = _mask_args(q, key_padding_mask, segment_ids)
    bucket = _bucket(s_q, s_k)
    _launch("dkdv", s_k, b * h, q, k, v, grad_out, lse, delta, dk, dv, pad, seg, s_q, s_k, d, h,
            scale, bucket, **consts)
    _launch("dq", s_q, b * h, q, k, v, grad_out, lse, delta, dq, pad, seg, s_q, s_k, d, h,
            scale, bucket, **consts)
    return dq, dk, dv
