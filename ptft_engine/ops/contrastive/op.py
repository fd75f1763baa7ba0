"""Public contrastive losses: CLIP/InfoNCE (`contrastive_loss`) and SimCLR NT-Xent (`nt_xent_loss`).

Every non-reference backend computes the same differentiable core, `scaled_lse`: the row
(and optionally column) log-sum-exps of S = scale * a @ b.T, tile by tile with an online
log-sum-exp, so the (N, M) matrix never exists whole; backward recomputes each tile from
the saved log-sum-exps: dS_ij = g_row_i * exp(S_ij - row_lse_i) + g_col_j * exp(S_ij - col_lse_j).
The losses are then `mean(lse - positive_logit)`, the positive logits (an O(N*D) dot
product) being left to PyTorch autograd.
"""
from __future__ import annotations

import torch

from ptft_engine.ops import registry
from ptft_engine.ops.contrastive import reference

DEFAULT_CHUNK = 2048  # rows/cols per tile: a 16 MiB fp32 tile, big enough for efficient GEMMs
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _op_reason(name: str, x: torch.Tensor) -> str | None:
    if name == "reference":
        return None
    if x.dtype not in _FLOATS:
        return f"dtype {x.dtype} is not a floating type"
    if name in ("triton", "cuda") and x.dtype == torch.float64:
        return f"the {name} backend takes float32/float16/bfloat16, got float64"
    if name == "triton" and x.device.type == "cpu" and x.dtype == torch.bfloat16:
        return "the Triton interpreter has no bfloat16 arithmetic"
    return None


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
        raise ValueError(f"{na} and {nb} must share dtype and device, got {a.dtype}/{a.device} and {b.dtype}/{b.device}")


def _check_chunk(chunk_size: int | None) -> int:
    if chunk_size is None:
        return DEFAULT_CHUNK
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def scaled_lse(backend: str, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
               exclude: torch.Tensor | None, want_cols: bool, chunk: int):
    """(row_lse (n,), col_lse (m,) or None) of S = scale * a @ b.T, float32 (float64 for float64).

    `exclude[i]` is a column left out of row i (-1: none), e.g. self-similarity in NT-Xent.
    Differentiable w.r.t. a, b and scale on every backend.
    """
    if backend == "reference":
        s = scale * (a @ b.T).to(torch.promote_types(a.dtype, torch.float32))  # (n, m)
        if exclude is not None:
            rows = torch.nonzero(exclude >= 0).squeeze(1)
            mask = torch.zeros_like(s, dtype=torch.bool)
            mask[rows, exclude[rows]] = True
            s = s.masked_fill(mask, float("-inf"))
        return s.logsumexp(1), (s.logsumexp(0) if want_cols else None)
    if backend == "chunked":
        from ptft_engine.ops.contrastive import chunked as impl
    elif backend == "cpu" or backend == "cuda":
        from ptft_engine.ops.contrastive import native as impl
    elif backend == "triton":
        from ptft_engine.ops.contrastive import triton as impl
    else:
        raise ValueError(f"unknown contrastive backend {backend!r}")
    return impl.scaled_lse(a, b, scale, exclude, want_cols, chunk)


def clip_loss_from_lse(row_lse, col_lse, positive):
    """mean(row_lse - positive), averaged with the column direction when col_lse is given."""
    loss = (row_lse - positive).mean()
    if col_lse is None:
        return loss
    return 0.5 * (loss + (col_lse - positive).mean())


def clip_loss_on(backend: str, a, b, scale, symmetric: bool, chunk: int) -> torch.Tensor:
    """Single-process CLIP loss on a given backend ("chunked" too), inputs already checked."""
    if backend == "reference":
        return reference.contrastive_loss_reference(a, b, scale, symmetric)
    row_lse, col_lse = scaled_lse(backend, a, b, scale, None, symmetric, chunk)
    positive = scale * (a.to(row_lse.dtype) * b.to(row_lse.dtype)).sum(1)  # (N,)
    return clip_loss_from_lse(row_lse, col_lse, positive)


def nt_xent_loss_on(backend: str, z1, z2, temp, chunk: int) -> torch.Tensor:
    """Single-process NT-Xent on a given backend ("chunked" too), inputs already checked."""
    if backend == "reference":
        return reference.nt_xent_loss_reference(z1, z2, temp)
    n = z1.shape[0]
    z = torch.cat([z1, z2])  # (2N, D)
    exclude = torch.arange(2 * n, device=z.device)
    row_lse, _ = scaled_lse(backend, z, z, 1.0 / temp, exclude, False, chunk)
    zf = z.to(row_lse.dtype)
    positive = (zf * zf.roll(n, 0)).sum(1) / temp  # (2N,) view i pairs with view (i + N) mod 2N
    return (row_lse - positive).mean()


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
    name = registry.choose("contrastive_loss", a.device, backend, lambda n: _op_reason(n, a),
                           gpu_order=registry.MATMUL_GPU_ORDER)
    if group is not None:
        from ptft_engine.ops.contrastive import distributed

        return distributed.contrastive_loss_distributed(a, b, scale, symmetric, chunk, group, name)
    return clip_loss_on(name, a, b, scale, symmetric, chunk)


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
    name = registry.choose("nt_xent_loss", z1.device, backend, lambda n: _op_reason(n, z1),
                           gpu_order=registry.MATMUL_GPU_ORDER)
    if group is not None:
        from ptft_engine.ops.contrastive import distributed

        return distributed.nt_xent_loss_distributed(z1, z2, temp, chunk, group, name)
    return nt_xent_loss_on(name, z1, z2, temp, chunk)
