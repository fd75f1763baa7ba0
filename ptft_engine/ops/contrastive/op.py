"""Public contrastive losses: CLIP/InfoNCE (`contrastive_loss`) and SimCLR NT-Xent (`nt_xent_loss`).

Every backend computes the same differentiable core, the custom op ptft::contrastive_lse: the row
(and optionally column) log-sum-exps of S = scale * a @ b.T, tile by tile with an online
log-sum-exp on the kernels, so the (N, M) matrix never exists whole; the backward op recomputes
each tile from the saved log-sum-exps: dS_ij = g_row_i * exp(S_ij - row_lse_i) + g_col_j * exp(S_ij - col_lse_j).
The losses are then `mean(lse - positive_logit)`, the positive logits (an O(N*D) dot product)
being left to PyTorch autograd. With `group`, each rank's rows meet every rank's columns
(distributed.py gathers them).
"""

import torch
from torch import Tensor

from ptft_engine.ops import registry
from ptft_engine.ops.contrastive.distributed import gather_with_grad, rank_layout

OP_NAME = "contrastive"  # the registry's name for the shared core of both losses
DEFAULT_CHUNK = 2048  # rows/cols per tile: a 16 MiB fp32 tile, big enough for efficient GEMMs
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _op_reason(backend: str, x: torch.Tensor) -> str | None:
    """Why this call cannot run on `backend` beyond the registry's generic limits (None: it can)."""
    if backend == "reference":
        return None
    if x.dtype not in _FLOATS:
        return f"dtype {x.dtype} is not a floating type"
    if backend in ("triton", "cuda") and x.dtype == torch.float64:
        return f"the {backend} backend takes float32/float16/bfloat16, got float64"
    if backend == "triton" and x.device.type == "cpu" and x.dtype == torch.bfloat16:
        return "the Triton interpreter has no bfloat16 arithmetic"
    return None


def _kernels(a: Tensor, backend: str):
    return registry.kernels("contrastive", registry.choose(OP_NAME, a, backend, _op_reason))


def _acc(a: Tensor) -> torch.dtype:
    return torch.promote_types(a.dtype, torch.float32)


@torch.library.custom_op("ptft::contrastive_lse", mutates_args=())
def contrastive_lse_op(a: Tensor, b: Tensor, scale: Tensor, exclude: Tensor | None, want_cols: bool,
                       chunk: int, backend: str) -> tuple[Tensor, Tensor]:
    """(row_lse (n,), col_lse (m,), empty unless want_cols); exclude[i]: a column left out of row i (-1: none)."""
    row, col = _kernels(a, backend).forward(a, b, scale, exclude, want_cols, chunk)
    return row.contiguous(), col.contiguous()


@contrastive_lse_op.register_fake
def _(a, b, scale, exclude, want_cols, chunk, backend):
    return a.new_empty(a.shape[0], dtype=_acc(a)), a.new_empty(b.shape[0] if want_cols else 0, dtype=_acc(a))


@torch.library.custom_op("ptft::contrastive_lse_backward", mutates_args=())
def contrastive_lse_backward_op(a: Tensor, b: Tensor, scale: Tensor, exclude: Tensor | None, row_lse: Tensor,
                                col_lse: Tensor, g_row: Tensor, g_col: Tensor | None, chunk: int,
                                backend: str) -> tuple[Tensor, Tensor, Tensor]:
    da, db, ds = _kernels(a, backend).backward(a, b, scale, exclude, row_lse, col_lse, g_row, g_col, chunk)
    return da.to(a.dtype).contiguous(), db.to(b.dtype).contiguous(), ds.to(scale.dtype).reshape(scale.shape)


@contrastive_lse_backward_op.register_fake
def _(a, b, scale, exclude, row_lse, col_lse, g_row, g_col, chunk, backend):
    return a.new_empty(a.shape), b.new_empty(b.shape), scale.new_empty(scale.shape)


def _setup_context(ctx, inputs, output):
    a, b, scale, exclude, want_cols, chunk, backend = inputs
    ctx.save_for_backward(a, b, scale, exclude, *output)
    ctx.want_cols, ctx.chunk, ctx.backend = want_cols, chunk, backend


def _backward(ctx, g_row, g_col):
    a, b, scale, exclude, row_lse, col_lse = ctx.saved_tensors
    da, db, ds = contrastive_lse_backward_op(a, b, scale, exclude, row_lse, col_lse, g_row,
                                             g_col if ctx.want_cols else None, ctx.chunk, ctx.backend)
    return da, db, ds, None, None, None, None


contrastive_lse_op.register_autograd(_backward, setup_context=_setup_context)


def _as_scale(value, name: str, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(float(value), device=like.device)
    if value.numel() != 1:
        raise ValueError(f"{name} must be a scalar (one-element) tensor, got shape {tuple(value.shape)}")
    if value.device != like.device:
        raise ValueError(f"{name} is on {value.device} but the embeddings are on {like.device}")
    return value


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    na, nb = names
    for t, n in ((a, na), (b, nb)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{n} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{n} must be 2-D (N, D), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{n} must be floating point, got {t.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape (N, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] == 0:
        raise ValueError(f"{na} and {nb} are empty (N = 0)")
    if a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"{na} and {nb} must share dtype and device, "
                         f"got {a.dtype}/{a.device} and {b.dtype}/{b.device}")


def _check_chunk(chunk_size: int | None) -> int:
    if chunk_size is None:
        return DEFAULT_CHUNK
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def _gathered(x: Tensor, group) -> Tensor:
    return x if group is None else gather_with_grad(x, group)  # (W * n, D)


def _clip_loss(a, b, scale, symmetric: bool, chunk: int, group, backend: str) -> Tensor:
    """Rows a against all columns b_all (and b against a_all); the positives are local: a_r . b_r."""
    if group is not None:
        rank_layout(a, group, "contrastive_loss")
    b_all = _gathered(b, group)
    if group is None:  # one pass gives both directions
        row_lse, col_lse = contrastive_lse_op(a, b, scale, None, symmetric, chunk, backend)
    else:
        row_lse, _ = contrastive_lse_op(a, b_all, scale, None, False, chunk, backend)
        col_lse = (contrastive_lse_op(b, _gathered(a, group), scale, None, False, chunk, backend)[0]
                   if symmetric else None)
    positive = scale * (a.to(row_lse.dtype) * b.to(row_lse.dtype)).sum(1)  # (n,)
    loss = (row_lse - positive).mean()
    return 0.5 * (loss + (col_lse - positive).mean()) if symmetric else loss


def _nt_xent_loss(z1, z2, temp, chunk: int, group, backend: str) -> Tensor:
    """Anchors [z1; z2] (local) against all views [z1_all; z2_all]; each anchor's own column is left out.
    Local view i of z1 is global view rank*n + i; its positive is view n*W + rank*n + i."""
    rank, world = (0, 1) if group is None else rank_layout(z1, group, "nt_xent_loss")
    n = z1.shape[0]
    anchors = torch.cat([z1, z2])  # (2n, D)
    views = anchors if group is None else torch.cat([_gathered(z1, group), _gathered(z2, group)])  # (2nW, D)
    idx = torch.arange(n, device=z1.device) + rank * n
    exclude = torch.cat([idx, idx + n * world])
    row_lse, _ = contrastive_lse_op(anchors, views, 1.0 / temp, exclude, False, chunk, backend)
    pos = (z1.to(row_lse.dtype) * z2.to(row_lse.dtype)).sum(1) / temp  # (n,)
    return (row_lse - torch.cat([pos, pos])).mean()


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, logit_scale, *, symmetric: bool = True,
                     chunk_size: int | None = None, group=None, backend: str | None = None) -> torch.Tensor:
    """CLIP / InfoNCE loss of logits = logit_scale * a @ b.T with targets on the diagonal.

    a, b: (N, D) embeddings (normalise them first if wanted); logit_scale: one-element tensor
    (CLIP passes exp(learned log-scale)). symmetric: mean of the a->b (rows) and b->a
    (columns) cross-entropies; otherwise rows only. Returns a float32 scalar (float64 for
    float64 inputs), differentiable w.r.t. a, b and logit_scale. chunk_size: rows/columns
    per tile on the cpu backend (default DEFAULT_CHUNK); the Triton and CUDA kernels use
    their own fixed tiles. With `group` (a torch.distributed process group) each rank
    passes its local rows: see distributed.py for how that relates to the global loss.
    """
    _check_pair(a, b, ("a", "b"))
    scale = _as_scale(logit_scale, "logit_scale", a)
    chunk = _check_chunk(chunk_size)
    return _clip_loss(a, b, scale, symmetric, chunk, group, registry.requested(backend))


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature, *, chunk_size: int | None = None,
                 group=None, backend: str | None = None) -> torch.Tensor:
    """SimCLR NT-Xent over the 2N views [z1; z2] (normalise them first).

    Similarity / temperature, self-similarity excluded, the positive of view i is the other
    view of the same image; mean over the 2N anchors. temperature: float or one-element tensor.
    """
    _check_pair(z1, z2, ("z1", "z2"))
    if not isinstance(temperature, torch.Tensor) and not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    temp = _as_scale(temperature, "temperature", z1)
    chunk = _check_chunk(chunk_size)
    return _nt_xent_loss(z1, z2, temp, chunk, group, registry.requested(backend))
