"""Triton kernels for the chunked contrastive log-sum-exps (forward) and their backward.

Forward: a 2-D grid of (BLOCK_M rows) x (column splits); each program sweeps its share of
the columns of S = scale * a @ b.T in BLOCK_N tiles (tl.dot over D in BLOCK_K slices) keeping
an online row max / sum, and writes that partial (max, sum); a tiny torch reduction combines
the splits. Splitting the columns fills the GPU: n = 4096 rows make only 64 row blocks of 64
for 132 SMs. The column lse is the same kernel on (b, a): the column lse of S is the row lse
of S.T.
Backward: one program per (BLOCK_M rows, BLOCK_D feature slice, column split) recomputes each
S tile, forms dS = g_row * exp(S - row_lse) + g_col * exp(S - col_lse) and accumulates
da = scale * dS @ b over its columns; with more than one split the partial da are added by
fp32 atomics (summation order then varies run to run: not bitwise deterministic; one split,
as on small inputs, stores directly). db is the same kernel with a and b swapped.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ptft_engine.ops.registry import triton_interpret


@triton.jit
def _scaled_tile(a_ptr, b_ptr, rows, cols, n, m, D, stride_a, stride_b,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """Raw (BLOCK_M, BLOCK_N) tile a[rows] @ b[cols].T in float32."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + rows[:, None] * stride_a + ks[None, :], mask=(rows < n)[:, None] & (ks < D)[None, :],
                    other=0.0)
        b = tl.load(b_ptr + cols[:, None] * stride_b + ks[None, :], mask=(cols < m)[:, None] & (ks < D)[None, :],
                    other=0.0)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _contrastive_row_lse_kernel(a_ptr, b_ptr, scale_ptr, excl_ptr, pmax_ptr, psum_ptr, n, m, D, stride_a, stride_b,
                                cols_per_split, HAS_EXCL: tl.constexpr, PRECISION: tl.constexpr,
                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Partial (max, sum of exp(S - max)) of rows over columns [split * cols_per_split, +cols_per_split)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    j_lo = split * cols_per_split
    j_hi = tl.minimum(m, j_lo + cols_per_split)
    scale = tl.load(scale_ptr).to(tl.float32)
    row_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    row_sum = tl.zeros((BLOCK_M,), tl.float32)
    if HAS_EXCL:
        excl = tl.load(excl_ptr + rows, mask=rows < n, other=-1)
    for j0 in range(j_lo, j_hi, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        t = _scaled_tile(a_ptr, b_ptr, rows, cols, n, j_hi, D, stride_a, stride_b,
                         BLOCK_M, BLOCK_N, BLOCK_K, PRECISION) * scale
        valid = (cols < j_hi)[None, :] & (rows >= 0)[:, None]
        if HAS_EXCL:
            valid = valid & (cols[None, :] != excl[:, None])
        t = tl.where(valid, t, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(t, 1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # rows with every entry excluded so far
        row_sum = row_sum * tl.exp(row_max - shift) + tl.sum(tl.exp(t - shift[:, None]), 1)
        row_max = new_max
    tl.store(pmax_ptr + rows * n_splits + split, row_max, mask=rows < n)
    tl.store(psum_ptr + rows * n_splits + split, row_sum, mask=rows < n)


@triton.jit
def _contrastive_bwd_kernel(a_ptr, b_ptr, scale_ptr, excl_ptr, rlse_ptr, grow_ptr, clse_ptr, gcol_ptr,
                            da_ptr, ds_ptr, n, m, D, stride_a, stride_b, stride_da, cols_per_split,
                            HAS_EXCL: tl.constexpr, HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr,
                            WANT_DS: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m, pid_d, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_splits = tl.num_programs(2)
    j_lo = split * cols_per_split
    j_hi = tl.minimum(m, j_lo + cols_per_split)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dcols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < n
    scale = tl.load(scale_ptr).to(tl.float32)
    if HAS_EXCL:
        excl = tl.load(excl_ptr + rows, mask=rmask, other=-1)
    if HAS_ROW:
        rlse = tl.load(rlse_ptr + rows, mask=rmask, other=0.0)
        grow = tl.load(grow_ptr + rows, mask=rmask, other=0.0)
    da = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    ds = tl.zeros((BLOCK_M,), tl.float32)
    for j0 in range(j_lo, j_hi, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        cmask = cols < j_hi
        raw = _scaled_tile(a_ptr, b_ptr, rows, cols, n, j_hi, D, stride_a, stride_b,
                           BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
        valid = cmask[None, :] & rmask[:, None]
        if HAS_EXCL:
            valid = valid & (cols[None, :] != excl[:, None])
        t = tl.where(valid, raw * scale, float("-inf"))  # excluded / padding entries get dS = 0
        d = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        if HAS_ROW:
            d += grow[:, None] * tl.exp(t - rlse[:, None])
        if HAS_COL:
            clse = tl.load(clse_ptr + cols, mask=cmask, other=0.0)
            gcol = tl.load(gcol_ptr + cols, mask=cmask, other=0.0)
            d += gcol[None, :] * tl.exp(t - clse[None, :])
        if WANT_DS:
            ds += tl.sum(d * raw, 1)
        b = tl.load(b_ptr + cols[:, None] * stride_b + dcols[None, :], mask=cmask[:, None] & (dcols < D)[None, :],
                    other=0.0)
        da = tl.dot((d * scale).to(b.dtype), b, da, input_precision=PRECISION)
    da_mask = rmask[:, None] & (dcols < D)[None, :]
    if n_splits == 1:
        tl.store(da_ptr + rows[:, None] * stride_da + dcols[None, :], da, mask=da_mask)
    else:  # da was zeroed; each split adds its columns' share
        tl.atomic_add(da_ptr + rows[:, None] * stride_da + dcols[None, :], da, mask=da_mask, sem="relaxed")
    if WANT_DS:
        if pid_d == 0:  # every feature slice computes the same dscale share: count it once
            tl.store(ds_ptr + pid_m * n_splits + split, tl.sum(ds, 0))


KERNELS = {"row_lse": _contrastive_row_lse_kernel, "bwd": _contrastive_bwd_kernel}  # (compile test)
GPU_CONFIG = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, BLOCK_D=128, num_warps=4)
INTERPRET_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, BLOCK_D=32, num_warps=1)


def _config(x: torch.Tensor) -> dict:
    # small tiles under the interpreter: its cost grows with the tile size (tests run GPU_CONFIG there too)
    return INTERPRET_CONFIG if triton_interpret() else GPU_CONFIG


# Column splits per launch: None sizes them to fill the GPU (split_count); tests set a number.
FORCE_SPLITS: int | None = None
_PROGRAMS_PER_SM = 2


def split_count(programs: int, col_blocks: int, device: torch.device) -> int:
    """Column splits so that `programs` x splits covers every SM about twice (at most one
    split per BLOCK_N column tile; 1 under the interpreter, where programs run one by one)."""
    if FORCE_SPLITS is not None:
        return max(1, min(FORCE_SPLITS, col_blocks))
    if device.type != "cuda":
        return 1
    return splits_to_fill(programs, col_blocks, torch.cuda.get_device_properties(device).multi_processor_count)


def splits_to_fill(programs: int, col_blocks: int, sms: int) -> int:
    return max(1, min(col_blocks, triton.cdiv(_PROGRAMS_PER_SM * sms, programs)))


def _split_columns(m: int, block_n: int, splits: int) -> tuple[int, int]:
    """(columns per split, a whole number of BLOCK_N tiles; splits actually launched)."""
    per = triton.cdiv(triton.cdiv(m, splits), block_n) * block_n
    return per, triton.cdiv(m, per)


def _precision(x: torch.Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"


def transpose_exclude(exclude: torch.Tensor | None, m: int) -> torch.Tensor | None:
    """Row i excludes column exclude[i] -> column j excludes row t[j] (exclude is one-to-one)."""
    if exclude is None:
        return None
    t = torch.full((m,), -1, dtype=torch.int64, device=exclude.device)
    rows = torch.nonzero(exclude >= 0).squeeze(1)
    t[exclude[rows]] = rows
    return t


def row_lse(a, b, scale, exclude) -> torch.Tensor:
    """logsumexp over j of scale * a_i . b_j (j != exclude[i]), float32 (n,)."""
    n, d = a.shape
    m = b.shape[0]
    cfg = _config(a)
    row_blocks = triton.cdiv(n, cfg["BLOCK_M"])
    splits = split_count(row_blocks, triton.cdiv(m, cfg["BLOCK_N"]), a.device)
    per, splits = _split_columns(m, cfg["BLOCK_N"], splits)
    pmax = torch.empty(n, splits, dtype=torch.float32, device=a.device)
    psum = torch.empty(n, splits, dtype=torch.float32, device=a.device)
    _contrastive_row_lse_kernel[(row_blocks, splits)](
        a, b, scale, exclude if exclude is not None else pmax, pmax, psum, n, m, d, a.stride(0), b.stride(0), per,
        HAS_EXCL=exclude is not None, PRECISION=_precision(a), BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"])
    if splits == 1:
        return (pmax + psum.log()).squeeze(1)
    top = pmax.amax(1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a split with every column excluded
    return (top + (psum * torch.exp(pmax - top)).sum(1, keepdim=True).log()).squeeze(1)


def grad_rows(a, b, scale, exclude, rlse, grow, clse, gcol, want_ds: bool):
    """(dLoss/da in float32, dLoss/dscale or None) for dS = grow*exp(S-rlse) + gcol*exp(S-clse)."""
    n, d = a.shape
    m = b.shape[0]
    cfg = _config(a)
    block_d = min(cfg["BLOCK_D"], max(16, triton.next_power_of_2(d)))
    row_blocks, d_blocks = triton.cdiv(n, cfg["BLOCK_M"]), triton.cdiv(d, block_d)
    splits = split_count(row_blocks * d_blocks, triton.cdiv(m, cfg["BLOCK_N"]), a.device)
    per, splits = _split_columns(m, cfg["BLOCK_N"], splits)
    da = (torch.zeros if splits > 1 else torch.empty)(n, d, dtype=torch.float32, device=a.device)
    grid = (row_blocks, d_blocks, splits)
    ds = torch.zeros(row_blocks * splits, dtype=torch.float32, device=a.device)
    dummy = ds
    _contrastive_bwd_kernel[grid](
        a, b, scale, exclude if exclude is not None else dummy,
        rlse if grow is not None else dummy, grow if grow is not None else dummy,
        clse if gcol is not None else dummy, gcol if gcol is not None else dummy,
        da, ds, n, m, d, a.stride(0), b.stride(0), da.stride(0), per,
        HAS_EXCL=exclude is not None, HAS_ROW=grow is not None, HAS_COL=gcol is not None, WANT_DS=want_ds,
        PRECISION=_precision(a), BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        BLOCK_D=block_d, num_warps=cfg["num_warps"])
    return da, (ds.sum() if want_ds else None)


def _scale_arg(scale: torch.Tensor) -> torch.Tensor:
    return scale.detach().reshape(1).to(torch.float32)


def forward(a, b, scale, exclude, want_cols, chunk):
    """(row_lse (n,), col_lse (m,) or empty) fp32; chunk is unused: the BLOCK_M x BLOCK_N tiles are the chunks."""
    a, b = a.contiguous(), b.contiguous()
    rl = row_lse(a, b, _scale_arg(scale), exclude)
    cl = row_lse(b, a, _scale_arg(scale), transpose_exclude(exclude, b.shape[0])) if want_cols else rl.new_empty(0)
    return rl, cl


def backward(a, b, scale, exclude, rl, cl, g_row, g_col, chunk):
    """(da, db, dscale) in fp32; dS.T has the same form as dS with rows and columns swapped."""
    a, b = a.contiguous(), b.contiguous()
    sc = _scale_arg(scale)
    g_row = g_row.float().contiguous()
    g_col = g_col.float().contiguous() if g_col is not None else None
    da, ds = grad_rows(a, b, sc, exclude, rl, g_row, cl, g_col, True)
    db, _ = grad_rows(b, a, sc, transpose_exclude(exclude, b.shape[0]), cl, g_col, rl, g_row, False)
    return da, db, ds
