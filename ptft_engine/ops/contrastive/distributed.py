"""Contrastive losses across ranks: local rows against all ranks' columns.

Each of the W ranks of `group` passes its local n rows (the same n on every rank). The
embeddings are all-gathered with gradients (`gather_with_grad`: the backward all-reduces
the gathered gradient and keeps this rank's slice, as OpenCLIP's gather_with_grad does),
and each rank computes the loss of its rows only (OpenCLIP's local_loss):

- CLIP: rank r's loss is the cross-entropy of logit_scale * a_r @ b_all.T with row i's
  target at column r*n + i (and, when symmetric, the mean with that of b_r @ a_all.T).
- NT-Xent: rank r's anchors are its 2n views [z1_r; z2_r] against all 2*n*W views
  [z1_all; z2_all]; local view i of z1 is global view r*n + i, its positive is
  view n*W + r*n + i, and the anchor itself is left out (and symmetrically for z2).

How this relates to one process holding all N = n*W rows (global loss L):
- mean over ranks of the rank losses == L (every rank averages over the same count).
- On rank r, the gradient w.r.t. its local inputs equals W * dL/d(inputs of rank r): every
  rank's loss reaches rank r's rows through the gather, and the gather's backward sums
  those contributions. So the gradient of any parameter that produced the inputs,
  averaged over ranks as data-parallel training does, equals dL/d(parameter).
- The gradient w.r.t. logit_scale / temperature on rank r is that of its own loss; its
  mean over ranks (data-parallel averaging) equals dL/d(logit_scale).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ptft_engine.ops.contrastive import reference
from ptft_engine.ops.contrastive.op import clip_loss_from_lse, scaled_lse


class GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums the gradient over ranks and keeps our slice."""

    @staticmethod
    def forward(ctx, x, group):
        world = dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.group, ctx.rank, ctx.n = group, dist.get_rank(group), x.shape[0]
        return torch.cat(parts)  # (W * n, D)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None


def gather_with_grad(x: torch.Tensor, group) -> torch.Tensor:
    return GatherWithGrad.apply(x, group)


def _rank_layout(x: torch.Tensor, group, name: str) -> tuple[int, int]:
    """(rank, world) after checking that every rank passes the same (n, D)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{name}: group= was given but torch.distributed is not initialised")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    shape = torch.tensor(list(x.shape), dtype=torch.int64, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    seen = [tuple(s.tolist()) for s in shapes]
    if len(set(seen)) != 1:
        raise ValueError(f"{name}: every rank must pass the same (n, D); got {seen} across ranks")
    return rank, world


def contrastive_loss_distributed(a, b, scale, symmetric: bool, chunk: int, group, backend: str):
    rank, _ = _rank_layout(a, group, "contrastive_loss")
    n = a.shape[0]
    b_all = gather_with_grad(b, group)  # (W * n, D)
    a_all = gather_with_grad(a, group) if symmetric else None
    if backend == "reference":
        return reference.local_contrastive_loss_reference(a, b, a_all, b_all, scale, rank * n, symmetric)
    row_lse, _ = scaled_lse(backend, a, b_all, scale, None, False, chunk)
    # The positives are local: a_r . b_r, whichever copy of b_r the gradient flows through.
    positive = scale * (a.to(row_lse.dtype) * b.to(row_lse.dtype)).sum(1)  # (n,)
    col_lse = scaled_lse(backend, b, a_all, scale, None, False, chunk)[0] if symmetric else None
    return clip_loss_from_lse(row_lse, col_lse, positive)


def nt_xent_loss_distributed(z1, z2, temperature, chunk: int, group, backend: str):
    rank, world = _rank_layout(z1, group, "nt_xent_loss")
    n = z1.shape[0]
    z1_all, z2_all = gather_with_grad(z1, group), gather_with_grad(z2, group)  # (W * n, D) each
    if backend == "reference":
        return reference.local_nt_xent_loss_reference(z1, z2, z1_all, z2_all, temperature, rank * n)
    anchors = torch.cat([z1, z2])  # (2n, D)
    views = torch.cat([z1_all, z2_all])  # (2 n W, D)
    idx = torch.arange(n, device=z1.device) + rank * n
    exclude = torch.cat([idx, idx + n * world])  # each anchor's own column
    row_lse, _ = scaled_lse(backend, anchors, views, 1.0 / temperature, exclude, False, chunk)
    pos = (z1.to(row_lse.dtype) * z2.to(row_lse.dtype)).sum(1) / temperature  # (n,)
    return (row_lse - torch.cat([pos, pos])).mean()
