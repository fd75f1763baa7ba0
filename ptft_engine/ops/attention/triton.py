"""Flash-attention-2 style Triton kernels: online softmax forward saving the log-sum-exp, and
one backward kernel on FlashAttention-2's schedule (per key block, 5 matmuls per block pair:
S = K Q^T, dV += P^T dO, dP = V dO^T, dK += dS^T Q, dQ += dS K; no S x S matrix).

dQ is accumulated across key blocks with fp32 atomic adds into a float32 buffer: the order
of the additions varies run to run, so dQ is NOT bitwise deterministic (differences at the
fp32 rounding level); dK, dV and the forward are deterministic.

Inputs are read by their batch/head/sequence strides (the models' transposed (B, H, S, D)
views need no copy; the head dim must be contiguous). k and v may have fewer heads than q
(grouped-query, Hkv dividing H): a query head reads its group's kv head in place, and the
backward runs one program per key block of each (batch, kv head) that loops over the group's
query heads, so dK/dV stay deterministic. Head dims up to 128 (odd ones padded to a
power-of-two BLOCK_D and masked), any sequence length, causal / key padding / segments.
With padding or segments a tiny pre-pass (`_chunk_ranges`) gives every 16 queries and keys
their [min, max] segment id and whether a key is padded: key blocks whose range misses the
query block's are skipped, blocks provably fully visible run without mask arithmetic.
Runs under TRITON_INTERPRET=1 on CPU for fp32/fp16 with fixed small blocks; on a GPU the
block shapes are autotuned once per shape bucket and shared by all ranks (ops/autotune.py), or
pinned with `pin_config`.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ptft_engine.ops import autotune
from ptft_engine.ops.attention.layout import rows_contiguous
from ptft_engine.ops.registry import triton_interpret

LOG2E = 1.4426950408889634  # kernels work in base 2: exp(x) = exp2(x * log2(e))
CHUNK = 16  # granularity of the segment-range pre-pass (the kernels' literal 16); BLOCK_M/N are multiples
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)


@triton.jit
def _key_keep(pad_row, cols, s_k, HAS_PAD: tl.constexpr):
    """Keys a query may see at all: in range and not padding."""
    keep = cols < s_k
    if HAS_PAD:
        keep = keep & (tl.load(pad_row + cols, mask=cols < s_k, other=1) == 0)
    return keep


@triton.jit
def _seg_ids(seg_row, idx, n, other, HAS_SEG: tl.constexpr):
    if HAS_SEG:
        ids = tl.load(seg_row + idx, mask=idx < n, other=other)
    else:
        ids = idx
    return ids


@triton.jit
def _visible(r, c, s_q, keep_c, seg_r, seg_c, CAUSAL: tl.constexpr, HAS_SEG: tl.constexpr):
    """Query row r may attend key col c, for operands already laid out to broadcast: rows[:, None]
    and cols[None, :] give (M, N), rows[None, :] and cols[:, None] the transposed (N, M), so the
    backward builds its mask in its own layout instead of transposing a boolean tile. keep_c
    (bounds and padding of the keys) and the segment ids are loaded by the caller, once per
    program for the side its loop holds fixed."""
    ok = (r < s_q) & keep_c
    if CAUSAL:
        ok = ok & (c <= r)
    if HAS_SEG:
        ok = ok & (seg_r == seg_c)
    return ok


@triton.jit
def _chunk_range(ranges_row, n_chunks, start, BLOCK: tl.constexpr):
    """[min, max] segment id and 'has a padded key' of positions [start, start + BLOCK) from the
    pre-pass table (rows: lo, hi, any padding; one column per CHUNK positions)."""
    idx = start // 16 + tl.arange(0, BLOCK // 16)
    ok = idx < n_chunks
    lo = tl.min(tl.load(ranges_row + idx, mask=ok, other=2147483647), 0)
    hi = tl.max(tl.load(ranges_row + n_chunks + idx, mask=ok, other=-2147483648), 0)
    padded = tl.max(tl.load(ranges_row + 2 * n_chunks + idx, mask=ok, other=0), 0)
    return lo, hi, padded


@triton.jit
def _block_class(q_lo, q_hi, k_lo, k_hi, k_padded, start_m, start_n, s_k, CAUSAL: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(visit, full) for query block start_m and key block start_n: no visible pair when the
    segment ranges are disjoint (a fully padded key block has an empty range); every pair
    visible when both blocks hold one and the same segment, no padded or out-of-range key,
    and (causal) the block's first query row is past its last key."""
    visit = (k_lo <= q_hi) & (k_hi >= q_lo)
    full = visit & (q_lo == q_hi) & (k_lo == k_hi) & (q_lo == k_lo) & (k_padded == 0)
    full = full & (start_n + BLOCK_N <= s_k)
    if CAUSAL:
        full = full & (start_n + BLOCK_N - 1 <= start_m)
    return visit, full


@triton.jit
def _fwd_step(acc, l_i, m_i, q, rows, start_n, dims, dim_ok, k_base, v_base, stride_ks, stride_vs,
              s_q, s_k, pad_row, seg_row, seg_q, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
              HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr, DOT_PREC: tl.constexpr, BLOCK_N: tl.constexpr):
    """Online-softmax update of (acc, l_i, m_i) with key block start_n."""
    cols = start_n + tl.arange(0, BLOCK_N)
    kv_mask = (cols[:, None] < s_k) & dim_ok[None, :]
    k = tl.load(k_base + cols[:, None] * stride_ks + dims[None, :], mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
    if MASKED:
        keep = _key_keep(pad_row, cols, s_k, HAS_PAD)
        seg_k = _seg_ids(seg_row, cols, s_k, -2, HAS_SEG)
        ok = _visible(rows[:, None], cols[None, :], s_q, keep[None, :], seg_q[:, None], seg_k[None, :],
                      CAUSAL, HAS_SEG)
        s = tl.where(ok, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + cols[:, None] * stride_vs + dims[None, :], mask=kv_mask, other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, pad_ptr, seg_ptr, qr_ptr, kr_ptr,
                     stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                     stride_vb, stride_vh, stride_vs, stride_ob, stride_oh, stride_os,
                     s_q, s_k, head_dim, n_heads, kv_group, qk_scale,
                     CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr,
                     DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    """One query block of one (batch, query head) per program; kv_group query heads share a
    k/v head (grouped-query attention), read in place."""
    tl.static_assert(BLOCK_M % BLOCK_N == 0, "causal splitting needs BLOCK_M to be a multiple of BLOCK_N")
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    batch = (bh // n_heads).to(tl.int64)
    head = (bh % n_heads).to(tl.int64)
    kv_head = head // kv_group
    rows = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    k_base = k_ptr + batch * stride_kb + kv_head * stride_kh
    v_base = v_ptr + batch * stride_vb + kv_head * stride_vh
    pad_row = pad_ptr + batch * s_k
    seg_row = seg_ptr + batch * s_q
    q = tl.load(q_ptr + batch * stride_qb + head * stride_qh + rows[:, None] * stride_qs + dims[None, :],
                mask=(rows[:, None] < s_q) & dim_ok[None, :], other=0.0)
    seg_q = _seg_ids(seg_row, rows, s_q, -1, HAS_SEG)  # hoisted: the query block is fixed
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max, base-2 units
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = s_k
    if CAUSAL:  # keys past this block's last row are invisible to all of it
        hi = tl.minimum(s_k, start_m + BLOCK_M)
    if HAS_PAD or HAS_SEG:
        # Per key block: skip it (disjoint segments, all padding), run it unmasked, or masked.
        n_qc = tl.cdiv(s_q, 16)
        n_kc = tl.cdiv(s_k, 16)
        q_lo, q_hi, _ = _chunk_range(qr_ptr + batch * 3 * n_qc, n_qc, start_m, BLOCK_M)
        for start_n in range(0, hi, BLOCK_N):
            k_lo, k_hi, k_pad = _chunk_range(kr_ptr + batch * 3 * n_kc, n_kc, start_n, BLOCK_N)
            visit, full = _block_class(q_lo, q_hi, k_lo, k_hi, k_pad, start_m, start_n, s_k, CAUSAL,
                                       BLOCK_M, BLOCK_N)
            if visit:
                if full:
                    acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, rows, start_n, dims, dim_ok, k_base, v_base,
                                              stride_ks, stride_vs, s_q, s_k, pad_row, seg_row, seg_q, qk_scale,
                                              False, CAUSAL, HAS_PAD, HAS_SEG, DOT_PREC, BLOCK_N)
                else:
                    acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, rows, start_n, dims, dim_ok, k_base, v_base,
                                              stride_ks, stride_vs, s_q, s_k, pad_row, seg_row, seg_q, qk_scale,
                                              True, CAUSAL, HAS_PAD, HAS_SEG, DOT_PREC, BLOCK_N)
    else:
        # Key blocks every row sees in full run without mask arithmetic; the rest (diagonal,
        # ragged tail) are masked.
        if CAUSAL:
            split = start_m
        else:
            split = (s_k // BLOCK_N) * BLOCK_N
        for start_n in range(0, split, BLOCK_N):
            acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, rows, start_n, dims, dim_ok, k_base, v_base,
                                      stride_ks, stride_vs, s_q, s_k, pad_row, seg_row, seg_q, qk_scale,
                                      False, CAUSAL, HAS_PAD, HAS_SEG, DOT_PREC, BLOCK_N)
        for start_n in range(split, hi, BLOCK_N):
            acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, rows, start_n, dims, dim_ok, k_base, v_base,
                                      stride_ks, stride_vs, s_q, s_k, pad_row, seg_row, seg_q, qk_scale,
                                      True, CAUSAL, HAS_PAD, HAS_SEG, DOT_PREC, BLOCK_N)
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    tl.store(o_ptr + batch * stride_ob + head * stride_oh + rows[:, None] * stride_os + dims[None, :],
             out.to(o_ptr.dtype.element_ty), mask=(rows[:, None] < s_q) & dim_ok[None, :])
    lse = tl.where(empty, float("inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    tl.store(lse_ptr + bh * s_q + rows, lse, mask=rows < s_q)


@triton.jit
def _attn_bwd_preprocess(o_ptr, do_ptr, delta_ptr, stride_ob, stride_oh, stride_os,
                         stride_dob, stride_doh, stride_dos, s_q, head_dim, n_heads,
                         BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """delta_i = dO_i . O_i (= sum_j P_ij dP_ij), one value per query row."""
    bh = tl.program_id(1)
    batch = (bh // n_heads).to(tl.int64)
    head = (bh % n_heads).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < s_q) & (dims[None, :] < head_dim)
    o = tl.load(o_ptr + batch * stride_ob + head * stride_oh + rows[:, None] * stride_os + dims[None, :],
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(do_ptr + batch * stride_dob + head * stride_doh + rows[:, None] * stride_dos + dims[None, :],
                 mask=mask, other=0.0).to(tl.float32)
    tl.store(delta_ptr + bh.to(tl.int64) * s_q + rows, tl.sum(o * do, 1), mask=rows < s_q)


@triton.jit
def _bwd_step(dk, dv, k, v, cols, keep_k, seg_k, start_m, dims, dim_ok, q_base, do_base, dq_base,
              stride_qs, stride_dos, lse_row, delta_row, s_q, head_dim, seg_row, scale,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_SEG: tl.constexpr,
              DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """One (key block, query block) pair: the 5 matmuls; dK, dV accumulate in registers,
    dQ (scaled) goes to the fp32 buffer by atomic adds."""
    rows = start_m + tl.arange(0, BLOCK_M)
    q_mask = (rows[:, None] < s_q) & dim_ok[None, :]
    q = tl.load(q_base + rows[:, None] * stride_qs + dims[None, :], mask=q_mask, other=0.0)
    do = tl.load(do_base + rows[:, None] * stride_dos + dims[None, :], mask=q_mask, other=0.0)
    lse = tl.load(lse_row + rows, mask=rows < s_q, other=float("inf"))  # +inf: p = 0
    delta = tl.load(delta_row + rows, mask=rows < s_q, other=0.0)
    s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * (scale * 1.4426950408889634)
    p_t = tl.exp2(s_t - lse[None, :] * 1.4426950408889634)  # (BLOCK_N, BLOCK_M)
    if MASKED:
        seg_q = _seg_ids(seg_row, rows, s_q, -1, HAS_SEG)
        ok_t = _visible(rows[None, :], cols[:, None], s_q, keep_k[:, None], seg_q[None, :], seg_k[:, None],
                        CAUSAL, HAS_SEG)
        p_t = tl.where(ok_t, p_t, 0.0)
    dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PREC)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
    ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
    dk += tl.dot(ds_t, q, input_precision=DOT_PREC)
    dq = tl.dot(tl.trans(ds_t), k, input_precision=DOT_PREC) * scale
    tl.atomic_add(dq_base + rows[:, None] * head_dim + dims[None, :], dq, mask=q_mask, sem="relaxed")
    return dk, dv


@triton.jit
def _attn_bwd_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dk_ptr, dv_ptr,
                     pad_ptr, seg_ptr, qr_ptr, kr_ptr,
                     stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                     stride_vb, stride_vh, stride_vs, stride_dob, stride_doh, stride_dos,
                     stride_gb, stride_gh, stride_gs,
                     s_q, s_k, head_dim, n_heads, kv_group, scale,
                     CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr,
                     DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    """One key block of one (batch, kv head) per program, looping over the kv_group query heads
    that share it and, per head, the query blocks that can see it: dK/dV sum the whole group in
    registers, in a fixed order (deterministic, no atomics). dq_ptr is a zeroed contiguous fp32
    (B, H, S_q, D) buffer; dk/dv, (B, H / kv_group, S_k, D), share the strides stride_g*."""
    start_n = tl.program_id(0) * BLOCK_N
    n_kv_heads = n_heads // kv_group
    bkv = tl.program_id(1)
    batch = (bkv // n_kv_heads).to(tl.int64)
    kv_head = (bkv % n_kv_heads).to(tl.int64)
    cols = start_n + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    kv_mask = (cols[:, None] < s_k) & dim_ok[None, :]
    k = tl.load(k_ptr + batch * stride_kb + kv_head * stride_kh + cols[:, None] * stride_ks + dims[None, :],
                mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + batch * stride_vb + kv_head * stride_vh + cols[:, None] * stride_vs + dims[None, :],
                mask=kv_mask, other=0.0)
    seg_row = seg_ptr + batch * s_q
    # hoisted: the key block is fixed for the whole loop
    keep_k = _key_keep(pad_ptr + batch * s_k, cols, s_k, HAS_PAD)
    seg_k = _seg_ids(seg_row, cols, s_k, -2, HAS_SEG)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo = 0
    if CAUSAL:  # rows before this block's first key see none of it
        lo = (start_n // BLOCK_M) * BLOCK_M
    for g in range(0, kv_group):
        head = kv_head * kv_group + g
        bh = batch * n_heads + head
        q_base = q_ptr + batch * stride_qb + head * stride_qh
        do_base = do_ptr + batch * stride_dob + head * stride_doh
        dq_base = dq_ptr + bh * s_q * head_dim
        lse_row = lse_ptr + bh * s_q
        delta_row = delta_ptr + bh * s_q
        if HAS_PAD or HAS_SEG:
            n_qc = tl.cdiv(s_q, 16)
            n_kc = tl.cdiv(s_k, 16)
            k_lo, k_hi, k_pad = _chunk_range(kr_ptr + batch * 3 * n_kc, n_kc, start_n, BLOCK_N)
            for start_m in range(lo, s_q, BLOCK_M):
                q_lo, q_hi, _ = _chunk_range(qr_ptr + batch * 3 * n_qc, n_qc, start_m, BLOCK_M)
                visit, full = _block_class(q_lo, q_hi, k_lo, k_hi, k_pad, start_m, start_n, s_k, CAUSAL,
                                           BLOCK_M, BLOCK_N)
                if visit:
                    if full:
                        dk, dv = _bwd_step(dk, dv, k, v, cols, keep_k, seg_k, start_m, dims, dim_ok, q_base,
                                           do_base, dq_base, stride_qs, stride_dos, lse_row, delta_row, s_q,
                                           head_dim, seg_row, scale, False, CAUSAL, HAS_SEG, DOT_PREC, BLOCK_M,
                                           BLOCK_D)
                    else:
                        dk, dv = _bwd_step(dk, dv, k, v, cols, keep_k, seg_k, start_m, dims, dim_ok, q_base,
                                           do_base, dq_base, stride_qs, stride_dos, lse_row, delta_row, s_q,
                                           head_dim, seg_row, scale, True, CAUSAL, HAS_SEG, DOT_PREC, BLOCK_M,
                                           BLOCK_D)
        else:
            # Query blocks [lo, mid) need masks (causal diagonal); from mid on every row sees this
            # whole key block. A ragged last key block is masked throughout: its out-of-range keys
            # must not reach dQ. Out-of-range rows load lse = +inf (p = 0).
            if CAUSAL:
                mid = tl.minimum(s_q, tl.cdiv(start_n + BLOCK_N, BLOCK_M) * BLOCK_M)
            else:
                mid = lo
            if start_n + BLOCK_N > s_k:
                mid = s_q
            for start_m in range(lo, mid, BLOCK_M):
                dk, dv = _bwd_step(dk, dv, k, v, cols, keep_k, seg_k, start_m, dims, dim_ok, q_base, do_base,
                                   dq_base, stride_qs, stride_dos, lse_row, delta_row, s_q, head_dim, seg_row,
                                   scale, True, CAUSAL, HAS_SEG, DOT_PREC, BLOCK_M, BLOCK_D)
            for start_m in range(mid, s_q, BLOCK_M):
                dk, dv = _bwd_step(dk, dv, k, v, cols, keep_k, seg_k, start_m, dims, dim_ok, q_base, do_base,
                                   dq_base, stride_qs, stride_dos, lse_row, delta_row, s_q, head_dim, seg_row,
                                   scale, False, CAUSAL, HAS_SEG, DOT_PREC, BLOCK_M, BLOCK_D)
    g_offs = batch * stride_gb + kv_head * stride_gh + cols[:, None] * stride_gs + dims[None, :]
    tl.store(dk_ptr + g_offs, (dk * scale).to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + g_offs, dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


def _configs(kind: str):
    """Block shapes (BLOCK_M, BLOCK_N, warps, stages) for H100/H200-class GPUs (228 KB shared
    memory, bf16 tensor cores), sized for head dim 128. fwd splits its key loop at a
    query-block start, so it needs BLOCK_M % BLOCK_N == 0; bwd (one key block of BLOCK_N per
    program, query steps of BLOCK_M) does not. Chosen by compiling for sm_90 at D=128 bf16
    (tests/ops/test_triton_compile.py): every fwd entry compiles without register spills
    except 128x128 (a 40-48 byte stack); 128-row tiles need 8 warps (with 4 they spill 600+
    bytes; 64x64 with 4 warps spills 120 with masks). bwd holds K, V, dK, dV of its key block
    plus a dQ tile in registers and spills at every shape tried (128-1600 byte stacks); 8 warps
    spill least, the list runs from least to most (the FA2-like 64x128 last)."""
    shapes = {
        "fwd": [(128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 8, 3), (128, 32, 8, 4), (64, 32, 4, 4)],
        "bwd": [(32, 64, 8, 3), (32, 128, 8, 2), (16, 128, 8, 3), (64, 64, 8, 2), (64, 128, 8, 2)],
    }[kind]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st in shapes]


# PTFT_TRITON_AUTOTUNE=0 uses the first (no-spill / least-spill) config on GPU (tests: no tuning sweep).
AUTOTUNE = os.environ.get("PTFT_TRITON_AUTOTUNE", "1") != "0"
_raw = {"fwd": _attn_fwd_kernel, "bwd": _attn_bwd_kernel}
# The interpreter runs one numpy op per block: fixed 32-wide blocks, no tuning sweep.
_INTERPRET_META = {"BLOCK_M": 32, "BLOCK_N": 32}


# kind -> launch meta that every call uses instead of tuning (pin_config): tests run each
# autotune entry under the interpreter with it.
_pinned: dict[str, dict] = {}


def configs(kind: str) -> list[dict]:
    """The autotune list of kernel `kind` ("fwd", "bwd") as launch meta dicts."""
    return [{**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages} for c in _configs(kind)]


def pin_config(kind: str, meta: dict | None) -> None:
    """Use `meta` (BLOCK_M, BLOCK_N, num_warps, num_stages) for every launch of `kind`; None unpins."""
    if kind not in _raw:
        raise ValueError(f"unknown attention kernel {kind!r}; choose one of {', '.join(_raw)}")
    if meta is None:
        _pinned.pop(kind, None)
    else:
        _pinned[kind] = dict(meta)


def _candidates(kind: str) -> list[dict]:
    """Launch metas a call may pick from: the pinned one, the interpreter's fixed blocks, the
    first entry without autotuning, else the whole autotune list."""
    if kind in _pinned:
        return [_pinned[kind]]
    if triton_interpret():
        return [_INTERPRET_META]
    return configs(kind) if AUTOTUNE else configs(kind)[:1]


def _launch(kind: str, n_blocks_of: int, bh: int, key: tuple, args: tuple, consts: dict,
            zero: torch.Tensor | None = None) -> None:
    """Launch kernel `kind`; `zero` (the bwd's atomically accumulated dQ) is cleared before every
    launch, tuning trials included. With several candidates the choice comes from
    autotune.choose: timed once per key and shared by all ranks, so they run identical kernels.
    The key is the power-of-two sequence bucket plus what changes the compiled kernel, not the
    exact length: packed batches vary in length every step."""
    block = "BLOCK_N" if kind == "bwd" else "BLOCK_M"

    def launcher(meta: dict):
        if triton_interpret():  # warps and stages mean nothing to the interpreter
            meta = {name: meta[name] for name in ("BLOCK_M", "BLOCK_N")}

        def run():
            if zero is not None:
                zero.zero_()
            _raw[kind][(triton.cdiv(n_blocks_of, meta[block]), bh)](*args, **consts, **meta)
        return run

    metas = _candidates(kind)
    meta = metas[0] if len(metas) == 1 else autotune.choose(f"attention_{kind}", key, metas, launcher)
    launcher(meta)()


def _tune_key(q: torch.Tensor, s_k: int, consts: dict) -> tuple:
    return (triton.next_power_of_2(max(q.shape[2], s_k)), str(q.dtype).replace("torch.", ""),
            *(f"{name}={value}" for name, value in sorted(consts.items())))


def _chunk_ranges(ids: torch.Tensor, padded: torch.Tensor | None) -> torch.Tensor:
    """int32 (B, 3, ceil(S / CHUNK)): per CHUNK positions the min and max segment id of the
    non-padded ones (an empty range, min > max, when all are padding) and whether any is padded."""
    b, s = ids.shape
    n = triton.cdiv(s, CHUNK)
    fill = n * CHUNK - s
    if padded is None:
        padded = torch.zeros(b, s, dtype=torch.bool, device=ids.device)
    lo = torch.nn.functional.pad(ids.masked_fill(padded, INT32_MAX), (0, fill), value=INT32_MAX)
    hi = torch.nn.functional.pad(ids.masked_fill(padded, INT32_MIN), (0, fill), value=INT32_MIN)
    any_pad = torch.nn.functional.pad(padded, (0, fill), value=False)
    return torch.stack([lo.view(b, n, CHUNK).amin(-1), hi.view(b, n, CHUNK).amax(-1),
                        any_pad.view(b, n, CHUNK).any(-1).to(torch.int32)], dim=1).contiguous()


def _mask_args(q, s_k, key_padding_mask, segment_ids):
    """(pad, seg, query ranges, key ranges) kernel arguments. Absent masks still need a pointer
    argument; the constexpr flags keep it unread."""
    if key_padding_mask is None and segment_ids is None:
        return q, q, q, q
    b, s_q = q.shape[0], q.shape[2]
    pad = q if key_padding_mask is None else key_padding_mask.contiguous().view(torch.uint8)
    if segment_ids is None:
        seg = q
        q_ids = torch.zeros(b, s_q, dtype=torch.int32, device=q.device)
        k_ids = torch.zeros(b, s_k, dtype=torch.int32, device=q.device)
    else:
        seg = q_ids = k_ids = segment_ids.to(torch.int32).contiguous()  # S_q == S_k here
    q_ranges = _chunk_ranges(q_ids, None)
    k_ranges = _chunk_ranges(k_ids, key_padding_mask)
    return pad, seg, q_ranges, k_ranges


def _consts(q, causal, key_padding_mask, segment_ids):
    head_dim = q.shape[-1]
    return dict(CAUSAL=bool(causal), HAS_PAD=key_padding_mask is not None, HAS_SEG=segment_ids is not None,
                DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
                BLOCK_D=max(16, triton.next_power_of_2(head_dim)))


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _padding(attention_mask):
    """The kernels take True = padding key: the one place the mask is inverted for them."""
    return None if attention_mask is None else ~attention_mask


def forward(q, k, v, causal, attention_mask, segment_ids, scale):
    """(out (B, H, S_q, D) in q's dtype, lse (B, H, S_q) fp32, natural log, +inf if empty)."""
    key_padding_mask = _padding(attention_mask)
    q, k, v = (rows_contiguous(t) for t in (q, k, v))
    b, h, s_q, d = q.shape
    s_k = k.shape[2]
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    lse = torch.empty((b, h, s_q), device=q.device, dtype=torch.float32)
    masks = _mask_args(q, s_k, key_padding_mask, segment_ids)
    consts = _consts(q, causal, key_padding_mask, segment_ids)
    _launch("fwd", s_q, b * h, _tune_key(q, s_k, consts),
            (q, k, v, out, lse, *masks, *_strides(q), *_strides(k), *_strides(v), *_strides(out),
             s_q, s_k, d, h, h // k.shape[1], scale * LOG2E), consts)
    return out, lse


def backward(grad_out, q, k, v, out, lse, causal, attention_mask, segment_ids, scale):
    """(dq, dk, dv) in the inputs' dtype, recomputing probabilities from lse."""
    key_padding_mask = _padding(attention_mask)
    grad_out, q, k, v, out = (rows_contiguous(t) for t in (grad_out, q, k, v, out))
    b, h, s_q, d = q.shape
    s_k = k.shape[2]
    consts = _consts(q, causal, key_padding_mask, segment_ids)
    delta = torch.empty((b, h, s_q), device=q.device, dtype=torch.float32)
    pre_block = 32 if triton_interpret() else 64
    _attn_bwd_preprocess[(triton.cdiv(s_q, pre_block), b * h)](
        out, grad_out, delta, *_strides(out), *_strides(grad_out), s_q, d, h,
        BLOCK_M=pre_block, BLOCK_D=consts["BLOCK_D"])
    dq = torch.empty((b, h, s_q, d), device=q.device, dtype=torch.float32)  # fp32 atomics; _launch zeroes it
    dk = torch.empty(k.shape, device=k.device, dtype=k.dtype)
    dv = torch.empty(k.shape, device=k.device, dtype=v.dtype)
    h_kv = k.shape[1]  # one program per key block of each (batch, kv head); it loops the group
    _launch("bwd", s_k, b * h_kv, _tune_key(q, s_k, consts),
            (q, k, v, grad_out, lse, delta, dq, dk, dv, *_mask_args(q, s_k, key_padding_mask, segment_ids),
             *_strides(q), *_strides(k), *_strides(v), *_strides(grad_out), *_strides(dk),
             s_q, s_k, d, h, h // h_kv, scale), consts, zero=dq)
    return dq.to(q.dtype), dk, dv
