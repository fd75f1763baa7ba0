"""Contrastive losses across ranks (the gather and its layout; op.py computes the losses).

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


def rank_layout(x: torch.Tensor, group, name: str) -> tuple[int, int]:
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
