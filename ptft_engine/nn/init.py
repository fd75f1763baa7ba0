"""GPT-2 / BERT style initialisation: normal(0, std) weights, zero biases, unit norms."""
from __future__ import annotations

import math

import torch
from torch import nn

from ptft_engine.nn.embeddings import PatchEmbedding
from ptft_engine.nn.norms import RMSNorm

# Projections that write into the residual stream (GPT-2 scales their init by 1/sqrt(2L)).
RESIDUAL_OUT = ("o_proj", "fc_out", "down_proj")


@torch.no_grad()
def init_weights(model: nn.Module, std: float, num_layers: int = 0) -> None:
    """Re-initialise every parameter of `model` in a fixed (module-tree) order.

    With num_layers > 0, residual-output projections get std / sqrt(2 * num_layers)
    (GPT-2), which keeps the residual stream's variance flat in depth. Deterministic
    given torch's seed; on the meta device it allocates nothing.
    """
    out_std = std / math.sqrt(2 * num_layers) if num_layers else std
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            leaf = name.rsplit(".", 1)[-1]
            m.weight.normal_(0.0, out_std if leaf in RESIDUAL_OUT else std)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.Embedding):
            m.weight.normal_(0.0, std)
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                m.weight.fill_(1.0)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, RMSNorm):
            m.weight.fill_(1.0)
        elif isinstance(m, PatchEmbedding):
            m.cls_token.normal_(0.0, std)
            m.position_embeddings.normal_(0.0, std)
