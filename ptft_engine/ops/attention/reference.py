"""Plain-PyTorch attention: the specification every backend is tested against.

Also the "plain PyTorch in low precision" baseline of the flash-attention error rule:
it computes in the dtype it is given (pass `upcast=True` for the fp32 reference).

Masking conventions (shared by every backend):
- `key_padding_mask` (B, S_k) bool: True marks a PADDING key that no query may see
  (PyTorch's `nn.MultiheadAttention` convention, the opposite of SDPA's `attn_mask`).
- `segment_ids` (B, S) int: query i sees key j only if their ids are equal
  (block-diagonal attention for packed documents), combined with causal and padding.
- A query row that sees no key outputs zeros; its gradients are zero too.
- Grouped-query attention: k, v may have Hkv heads with Hkv dividing q's H; query head h
  reads kv head h // (H // Hkv) (Hkv == 1: multi-query). The fused kernels index the shared
  head; this spec simply expands it, and autograd sums the gradients of each group.
"""
from __future__ import annotations

import torch


def visible_mask(
    batch: int,
    s_q: int,
    s_k: int,
    device: torch.device,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Bool (B, 1, S_q, S_k): True where query i may attend key j; None when all may."""
    mask = None
    if causal:
        # Queries and keys share positions (S_q == S_k is enforced by the caller).
        i = torch.arange(s_q, device=device)[:, None]
        j = torch.arange(s_k, device=device)[None, :]
        mask = (j <= i).expand(batch, 1, s_q, s_k)
    if key_padding_mask is not None:
        keep = ~key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, S_k)
        mask = keep.expand(batch, 1, s_q, s_k) if mask is None else mask & keep
    if segment_ids is not None:
        same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]  # (B, 1, S, S)
        mask = same if mask is None else mask & same
    return mask


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    scale: float | None = None,
    upcast: bool = False,
    return_lse: bool = False,
):
    """softmax(q k^T * scale + mask) v for q (B, H, S_q, D), k/v (B, Hkv, S_k, D), differentiable.

    With `return_lse` also returns the fp32 log-sum-exp (B, H, S_q) of the scaled,
    masked scores (+inf for rows that see no key), which the fused kernels save.
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    if scale is None:
        scale = q.shape[-1] ** -0.5
    batch, heads, s_q, _ = q.shape
    s_k = k.shape[2]
    if k.shape[1] != heads:  # grouped-query: every kv head serves H // Hkv adjacent query heads
        k = k.repeat_interleave(heads // k.shape[1], dim=1)  # (B, H, S_k, D)
        v = v.repeat_interleave(heads // v.shape[1], dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, S_q, S_k)
    mask = visible_mask(batch, s_q, s_k, q.device, causal=causal,
                        key_padding_mask=key_padding_mask, segment_ids=segment_ids)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    # Subtract a finite row max (0 for empty rows) so empty rows give exp(-inf) = 0, not NaN.
    row_max = scores.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    p = torch.exp(scores - row_max)
    denom = p.sum(dim=-1, keepdim=True)
    probs = p / torch.where(denom > 0, denom, torch.ones_like(denom))
    out = torch.matmul(probs.to(v.dtype), v).to(dtype)
    if not return_lse:
        return out
    lse_dtype = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for gradcheck
    lse = (row_max + torch.log(denom)).squeeze(-1).to(lse_dtype)
    lse = torch.where(denom.squeeze(-1) > 0, lse, torch.full_like(lse, float("inf")))
    return out, lse
