"""Plain-PyTorch attention: the specification every backend is tested against.

Also the "plain PyTorch in low precision" baseline of the flash-attention error rule:
it computes in the dtype it is given (pass `upcast=True` for the fp32 reference).

Masking conventions (shared by every backend and the models):
- `attention_mask` (B, S_k) bool: True marks a real key that queries may attend, False a
  padding key (the Hugging Face / SDPA convention; the compiled kernels take the inverse,
  which native.py and triton.py form at their boundary).
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
    attention_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Bool (B, 1, S_q, S_k): True where query i may attend key j; None when all may."""
    mask = None
    if causal:
        # Queries and keys share positions (S_q == S_k is enforced by the caller).
        i = torch.arange(s_q, device=device)[:, None]
        j = torch.arange(s_k, device=device)[None, :]
        mask = (j <= i).expand(batch, 1, s_q, s_k)
    if attention_mask is not None:
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S_k)
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
    attention_mask: torch.Tensor | None = None,
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
                        attention_mask=attention_mask, segment_ids=segment_ids)
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


# The backend interface (as triton.py and native.py): forward saves (out, lse), backward recomputes
# the probabilities from lse; op.py wraps both in the custom op. Accumulates in fp32 (fp64 for fp64).
def forward(q, k, v, causal, attention_mask, segment_ids, scale):
    """(out (B, H, S_q, D) in q's dtype, lse (B, H, S_q) fp32 or fp64, +inf for rows that see no key)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    out, lse = attention_reference(q.to(acc), k.to(acc), v.to(acc), causal=causal, attention_mask=attention_mask,
                                   segment_ids=segment_ids, scale=scale, return_lse=True)
    return out.to(q.dtype), lse


def backward(grad_out, q, k, v, out, lse, causal, attention_mask, segment_ids, scale):
    """(dq, dk, dv): P = exp(S - lse), dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)), dQ = dS K * scale,
    dK = dS^T Q * scale. Masked entries and empty rows (lse = +inf) have P = 0. Grouped-query k, v
    (Hkv heads) are expanded, and each kv head's dK, dV sum over the H / Hkv query heads it serves."""
    acc = lse.dtype
    (b, heads, _, d), h_kv, s_k = q.shape, k.shape[1], k.shape[2]
    qf, kf, vf, do = q.to(acc), k.to(acc), v.to(acc), grad_out.to(acc)
    if h_kv != heads:
        group = heads // h_kv
        kf, vf = kf.repeat_interleave(group, dim=1), vf.repeat_interleave(group, dim=1)  # (B, H, S_k, D)
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale  # (B, H, S_q, S_k)
    mask = visible_mask(q.shape[0], q.shape[2], k.shape[2], q.device, causal=causal,
                        attention_mask=attention_mask, segment_ids=segment_ids)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    p = torch.exp(scores - lse.unsqueeze(-1))
    dv = torch.matmul(p.transpose(-1, -2), do)
    delta = (do * out.to(acc)).sum(-1, keepdim=True)  # (B, H, S_q, 1)
    ds = p * (torch.matmul(do, vf.transpose(-1, -2)) - delta)
    dq = torch.matmul(ds, kf) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qf) * scale
    if h_kv != heads:  # (B, H, S_k, D) -> (B, Hkv, S_k, D): a group's query heads are adjacent
        dk, dv = (g.view(b, h_kv, heads // h_kv, s_k, d).sum(2) for g in (dk, dv))
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
