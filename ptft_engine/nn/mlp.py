"""Feed-forward blocks: two-layer MLP (BERT, GPT-2, ViT) and SwiGLU (Llama)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptft_engine.nn.init import Linear, ResidualLinear


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


# Names follow transformers' ACT2FN so that exported configs keep their meaning.
ACTIVATIONS = {
    "gelu": F.gelu,  # exact (erf) GELU, BERT's "gelu"
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's tanh approximation
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None


class MLP(nn.Module):
    """fc_in -> activation -> fc_out -> dropout."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.fc_in = Linear(hidden_size, intermediate_size, bias=bias)
        self.fc_out = ResidualLinear(intermediate_size, hidden_size, bias=bias)
        self.act = activation(act)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc_out(self.act(self.fc_in(x))))


class SwiGLU(nn.Module):
    """down(act(gate(x)) * up(x)); names match Llama's gate_proj / up_proj / down_proj."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "silu", bias: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self.gate_proj = Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = ResidualLinear(intermediate_size, hidden_size, bias=bias)
        self.act = activation(act)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x)))

