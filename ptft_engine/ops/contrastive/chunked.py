"""The tiled algorithm in plain PyTorch: row/column log-sum-exps of S = scale * a @ b.T.

It never holds more than one (chunk, chunk) tile of S. It is the readable statement of
what the native and Triton kernels do (and runs where they do not: float64 gradcheck,
any device). Online log-sum-exp: lse over all tiles = logaddexp of the per-tile lses.
"""
from __future__ import annotations

import torch


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tile(af, bf, s, exclude, i0, i1, j0, j1):
    """(raw tile a_I @ b_J.T, scaled tile with excluded entries at -inf)."""
    raw = af[i0:i1] @ bf[j0:j1].T  # (ci, cj)
    t = s * raw
    if exclude is not None:
        ex = exclude[i0:i1]
        hit = torch.nonzero((ex >= j0) & (ex < j1)).squeeze(1)
        if hit.numel():
            t = t.index_put((hit, ex[hit] - j0), torch.tensor(float("-inf"), dtype=t.dtype, device=t.device))
    return raw, t


class ChunkedScaledLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, scale, exclude, want_cols, chunk):
        acc = _acc_dtype(a.dtype)
        af, bf, s = a.to(acc), b.to(acc), scale.reshape(()).to(acc)
        n, m = af.shape[0], bf.shape[0]
        row_lse = torch.full((n,), float("-inf"), dtype=acc, device=a.device)
        col_lse = torch.full((m if want_cols else 0,), float("-inf"), dtype=acc, device=a.device)
        for i0 in range(0, n, chunk):
            i1 = min(i0 + chunk, n)
            for j0 in range(0, m, chunk):
                j1 = min(j0 + chunk, m)
                _, t = _tile(af, bf, s, exclude, i0, i1, j0, j1)
                row_lse[i0:i1] = torch.logaddexp(row_lse[i0:i1], t.logsumexp(1))
                if want_cols:
                    col_lse[j0:j1] = torch.logaddexp(col_lse[j0:j1], t.logsumexp(0))
        ctx.save_for_backward(a, b, scale, exclude, row_lse, col_lse)
        ctx.want_cols, ctx.chunk = want_cols, chunk
        ctx.set_materialize_grads(False)
        return row_lse, col_lse

    @staticmethod
    def backward(ctx, g_row, g_col):
        a, b, scale, exclude, row_lse, col_lse = ctx.saved_tensors
        chunk = ctx.chunk
        acc = row_lse.dtype
        af, bf, s = a.to(acc), b.to(acc), scale.reshape(()).to(acc)
        n, m = af.shape[0], bf.shape[0]
        if not ctx.want_cols:
            g_col = None
        da, db = torch.zeros_like(af), torch.zeros_like(bf)
        ds = torch.zeros((), dtype=acc, device=a.device)
        for i0 in range(0, n, chunk):
            i1 = min(i0 + chunk, n)
            for j0 in range(0, m, chunk):
                j1 = min(j0 + chunk, m)
                raw, t = _tile(af, bf, s, exclude, i0, i1, j0, j1)
                d = torch.zeros_like(t)  # dLoss/dS on this tile
                if g_row is not None:
                    d += g_row[i0:i1, None] * torch.exp(t - row_lse[i0:i1, None])
                if g_col is not None:
                    d += g_col[None, j0:j1] * torch.exp(t - col_lse[None, j0:j1])
                ds += (d * raw).sum()
                da[i0:i1] += s * (d @ bf[j0:j1])
                db[j0:j1] += s * (d.T @ af[i0:i1])
        return da.to(a.dtype), db.to(b.dtype), ds.to(scale.dtype).reshape(scale.shape), None, None, None


def scaled_lse(a, b, scale, exclude, want_cols, chunk):
    row_lse, col_lse = ChunkedScaledLSE.apply(a, b, scale, exclude, want_cols, chunk)
    return row_lse, (col_lse if want_cols else None)
