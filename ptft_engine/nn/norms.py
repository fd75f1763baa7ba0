"""Normalisation layers: LayerNorm (BERT, GPT-2, ViT) and RMSNorm (Llama)."""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain, computed in fp32 like Llama's reference."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(kind: str, hidden_size: int, eps: float) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(hidden_size, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(hidden_size, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; choose layernorm or rmsnorm")
