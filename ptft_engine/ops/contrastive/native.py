"""Autograd wrapper over ptft_engine._C's contrastive kernels (C++ CPU, and CUDA when built)."""
from __future__ import annotations

import torch

from ptft_engine.ops._native import native


class NativeScaledLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, scale, exclude, want_cols, chunk):
        row_lse, col_lse = native().contrastive_lse_forward(a, b, scale.detach(), exclude, want_cols, chunk)
        ctx.save_for_backward(a, b, scale, exclude, row_lse, col_lse)
        ctx.want_cols, ctx.chunk = want_cols, chunk
        ctx.set_materialize_grads(False)
        return row_lse, col_lse

    @staticmethod
    def backward(ctx, g_row, g_col):
        a, b, scale, exclude, row_lse, col_lse = ctx.saved_tensors
        if not ctx.want_cols:
            g_col = None
        if g_row is None and g_col is None:
            return None, None, None, None, None, None
        da, db, ds = native().contrastive_lse_backward(
            a, b, scale.detach(), exclude, row_lse, col_lse, g_row, g_col, ctx.chunk)
        return da.to(a.dtype), db.to(b.dtype), ds.to(scale.dtype).reshape(scale.shape), None, None, None


def scaled_lse(a, b, scale, exclude, want_cols, chunk):
    row_lse, col_lse = NativeScaledLSE.apply(a, b, scale, exclude, want_cols, chunk)
    return row_lse, (col_lse if want_cols else None)
