"""Launchers for ptft_engine._C's contrastive kernels (C++ CPU, and CUDA when built): tiled
log-sum-exps of S = scale * a @ b.T, `chunk` rows/columns per tile."""
from __future__ import annotations

from ptft_engine.ops._native import native


def forward(a, b, scale, exclude, want_cols, chunk):
    """(row_lse (n,), col_lse (m,) or empty), fp32 (fp64 for fp64)."""
    return native().contrastive_lse_forward(a, b, scale.detach(), exclude, want_cols, chunk)


def backward(a, b, scale, exclude, row_lse, col_lse, g_row, g_col, chunk):
    """(da, db, dscale); each tile of S is recomputed from the saved log-sum-exps."""
    return native().contrastive_lse_backward(a, b, scale.detach(), exclude, row_lse, col_lse, g_row, g_col, chunk)
