"""GPT-2 / BERT style initialisation done by each layer as it is built.

Layers draw normal(0, std) weights (zero biases, unit norms) inside their own
constructor, from the std set by the enclosing `init_std(...)` block. Initialising at
construction (not in a later pass over the model) matters for DeepSpeed's
zero.Init, which partitions each module's parameters as soon as its constructor
returns: a later pass would only see empty shards. Deterministic given torch's seed
(construction order is fixed); on the meta device it allocates nothing.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch
from torch import nn

_STD: contextvars.ContextVar[tuple[float, float]] = contextvars.ContextVar("ptft_init_std", default=(0.02, 0.02))


@contextlib.contextmanager
def init_std(std: float, num_layers: int = 0) -> Iterator[None]:
    """Layers built inside draw weights with `std`; with num_layers > 0, projections
    that write into the residual stream use std / sqrt(2 * num_layers) (GPT-2), which
    keeps the residual stream's variance flat in depth."""
    residual = std / math.sqrt(2 * num_layers) if num_layers else std
    token = _STD.set((std, residual))
    try:
        yield
    finally:
        _STD.reset(token)


def current_std(residual: bool = False) -> float:
    std, res = _STD.get()
    return res if residual else std


class Linear(nn.Linear):
    residual = False

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.weight.normal_(0.0, current_std(self.residual))
        if self.bias is not None:
            self.bias.zero_()


class ResidualLinear(Linear):
    """A projection whose output is added to the residual stream (scaled init)."""

    residual = True


class Embedding(nn.Embedding):
    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.weight.normal_(0.0, current_std())


class Conv2d(nn.Conv2d):
    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.weight.normal_(0.0, current_std())
        if self.bias is not None:
            self.bias.zero_()
