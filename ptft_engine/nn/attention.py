"""Multi-head self-attention; the score/softmax/value part is `ptft_engine.ops.attention`."""
from __future__ import annotations

import torch
from torch import nn

from ptft_engine.nn.embeddings import apply_rotary
from ptft_engine.nn.init import Linear, ResidualLinear

_attention_fn = None


def _attention():
    """ptft_engine.ops.attention, imported on first use (building or counting a model
    on the meta device needs neither the extension nor Triton), then cached."""
    global _attention_fn
    if _attention_fn is None:
        from ptft_engine.ops.attention.op import attention

        _attention_fn = attention
    return _attention_fn


class SelfAttention(nn.Module):
    """Projections around `ops.attention`.

    fused_qkv=True keeps one `qkv_proj` (out = [q; k; v]) so a GPT-2 export is its
    Conv1D `c_attn` transposed; otherwise separate q/k/v projections (BERT, ViT,
    Llama). num_kv_heads < num_heads gives grouped-query attention (Llama). attention_mask: bool
    (B, S), True = attend (the convention everywhere; only the kernels' launchers invert it).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        bias: bool = True,
        fused_qkv: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not divisible by num_kv_heads {num_kv_heads}")
        if fused_qkv and num_kv_heads != num_heads:
            raise ValueError("fused_qkv needs num_kv_heads == num_heads")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = hidden_size // num_heads
        kv_size = num_kv_heads * self.head_dim
        self.fused_qkv = fused_qkv
        if fused_qkv:
            self.qkv_proj = Linear(hidden_size, 3 * hidden_size, bias=bias)
        else:
            self.q_proj = Linear(hidden_size, hidden_size, bias=bias)
            self.k_proj = Linear(hidden_size, kv_size, bias=bias)
            self.v_proj = Linear(hidden_size, kv_size, bias=bias)
        self.o_proj = ResidualLinear(hidden_size, hidden_size, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool = False,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, S, D = x.shape
        if self.fused_qkv:
            q, k, v = self.qkv_proj(x).split(D, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, S, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, S, Dh)
        k = k.view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, S, Dh)
        v = v.view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, S, Dh)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        # Grouped-query: the kernels read each kv head for its H / Hkv query heads in place.
        out = _attention()(q, k, v, causal=causal, attention_mask=attention_mask, segment_ids=segment_ids)
        out = out.transpose(1, 2).reshape(B, S, D)  # (B, S, H*Dh)
        return self.dropout(self.o_proj(out))
