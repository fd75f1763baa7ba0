"""Naive full-matrix contrastive losses: the specification every backend is tested against.

These build the whole (N, N) logits matrix; use them for tests and small N only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _acc(x: torch.Tensor) -> torch.Tensor:
    # Half-precision logits are upcast (as the kernels accumulate in fp32); float64 stays.
    return x.to(torch.promote_types(x.dtype, torch.float32))


def contrastive_loss_reference(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor,
                               symmetric: bool = True) -> torch.Tensor:
    """CLIP / InfoNCE: cross-entropy of logit_scale * a @ b.T with targets on the diagonal."""
    return local_contrastive_loss_reference(a, b, a, b, logit_scale, 0, symmetric)


def local_contrastive_loss_reference(a_local: torch.Tensor, b_local: torch.Tensor,
                                     a_all: torch.Tensor, b_all: torch.Tensor,
                                     logit_scale: torch.Tensor, offset: int,
                                     symmetric: bool = True) -> torch.Tensor:
    """One rank's loss: its n local rows against all M columns; row i's target is offset + i."""
    labels = torch.arange(a_local.shape[0], device=a_local.device) + offset
    logits_ab = logit_scale * (a_local @ b_all.T)  # (n, M)
    loss = F.cross_entropy(_acc(logits_ab), labels)
    if not symmetric:
        return loss
    logits_ba = logit_scale * (b_local @ a_all.T)  # (n, M)
    return 0.5 * (loss + F.cross_entropy(_acc(logits_ba), labels))


def nt_xent_loss_reference(z1: torch.Tensor, z2: torch.Tensor, temperature) -> torch.Tensor:
    """SimCLR NT-Xent over the 2N views [z1; z2]: self-similarity excluded, positive = other view."""
    return local_nt_xent_loss_reference(z1, z2, z1, z2, temperature, 0)


def local_nt_xent_loss_reference(z1_local: torch.Tensor, z2_local: torch.Tensor,
                                 z1_all: torch.Tensor, z2_all: torch.Tensor,
                                 temperature, offset: int) -> torch.Tensor:
    """One rank's NT-Xent: local anchors [z1_local; z2_local] against all views [z1_all; z2_all].

    Local row i of z1 is global view offset + i; its positive is view N_all + offset + i.
    """
    n, n_all = z1_local.shape[0], z1_all.shape[0]
    anchors = torch.cat([z1_local, z2_local])  # (2n, D)
    views = torch.cat([z1_all, z2_all])  # (2N_all, D)
    sim = _acc(anchors @ views.T) / temperature  # (2n, 2N_all)
    idx = torch.arange(n, device=anchors.device) + offset
    self_col = torch.cat([idx, idx + n_all])
    pos_col = torch.cat([idx + n_all, idx])
    rows = torch.arange(2 * n, device=anchors.device)
    self_mask = torch.zeros_like(sim, dtype=torch.bool)
    self_mask[rows, self_col] = True
    sim = sim.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(sim, pos_col)


# The backend interface (as triton.py and native.py): the row (and column) log-sum-exps of
# S = scale * a @ b.T and their backward, here on the whole (n, m) matrix; op.py wraps them.
def _scores(a, b, scale, exclude):
    """(raw a @ b.T, scaled S with row i's column exclude[i] at -inf), in fp32 (fp64 for fp64)."""
    acc = torch.promote_types(a.dtype, torch.float32)
    raw = a.to(acc) @ b.to(acc).T  # (n, m)
    s = scale.reshape(()).to(acc) * raw
    if exclude is not None:
        rows = torch.nonzero(exclude >= 0).squeeze(1)
        s = s.index_put((rows, exclude[rows]), torch.tensor(float("-inf"), dtype=acc, device=s.device))
    return raw, s


def forward(a, b, scale, exclude, want_cols, chunk):
    """(row_lse (n,), col_lse (m,) or empty); chunk is unused: the spec holds the whole matrix."""
    _, s = _scores(a, b, scale, exclude)
    return s.logsumexp(1), (s.logsumexp(0) if want_cols else s.new_empty(0))


def backward(a, b, scale, exclude, row_lse, col_lse, g_row, g_col, chunk):
    """(da, db, dscale) for dS = g_row * exp(S - row_lse) + g_col * exp(S - col_lse)."""
    raw, s = _scores(a, b, scale, exclude)
    d = g_row[:, None] * torch.exp(s - row_lse[:, None])
    if g_col is not None:
        d = d + g_col[None, :] * torch.exp(s - col_lse[None, :])
    sc = scale.reshape(()).to(s.dtype)
    return sc * (d @ b.to(s.dtype)), sc * (d.T @ a.to(s.dtype)), (d * raw).sum()
