"""Transformer block (pre- or post-norm) and the layer stack with activation checkpointing."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class TransformerBlock(nn.Module):
    """attention + feed-forward with residuals.

    pre-norm (GPT-2, ViT, Llama):  x + attn(norm(x)),  x + mlp(norm(x))
    post-norm (BERT):              norm(x + attn(x)),  norm(x + mlp(x))
    """

    def __init__(self, attn: nn.Module, mlp: nn.Module, attn_norm: nn.Module, mlp_norm: nn.Module, pre_norm: bool):
        super().__init__()
        self.attn_norm = attn_norm
        self.attn = attn
        self.mlp_norm = mlp_norm
        self.mlp = mlp
        self.pre_norm = pre_norm

    def forward(self, x: torch.Tensor, **attn_kwargs) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.attn_norm(x), **attn_kwargs)
            return x + self.mlp(self.mlp_norm(x))
        x = self.attn_norm(x + self.attn(x, **attn_kwargs))
        return self.mlp_norm(x + self.mlp(x))


class LayerStack(nn.ModuleList):
    """Runs blocks in order; recomputes each block in backward when checkpointing is on.

    Non-reentrant torch.utils.checkpoint works with ZeRO-3 parameter gathering and
    with inputs that need no grad (frozen embeddings in fine-tuning).
    """

    gradient_checkpointing: bool = False

    def forward(self, x: torch.Tensor, **attn_kwargs) -> torch.Tensor:
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self:
            if recompute:
                x = checkpoint(block, x, use_reentrant=False, **attn_kwargs)
            else:
                x = block(x, **attn_kwargs)
        return x


def set_gradient_checkpointing(module: nn.Module, enabled: bool = True) -> None:
    """Turn activation checkpointing on/off for every LayerStack inside `module`."""
    for m in module.modules():
        if isinstance(m, LayerStack):
            m.gradient_checkpointing = enabled
