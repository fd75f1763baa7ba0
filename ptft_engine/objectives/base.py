"""What every objective shares: it owns the model, turns a batch into a loss dict, and
knows its FLOPs for MFU."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ptft_engine.labels import IGNORE_INDEX


def transformer_flops_per_token(matmul_params: int, num_layers: int, hidden_size: int, seq_len: int) -> int:
    """Training FLOPs per token, PaLM's estimate: 6*N for the weight matmuls (forward +
    backward) plus 12*L*D*S for attention scores and values (not halved for causal
    masks, the usual MFU convention)."""
    return 6 * matmul_params + 12 * num_layers * hidden_size * seq_len


def default_group(gather: bool):
    """torch.distributed's default group when gathering across >1 ranks, else None (local)."""
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def need(batch: dict, *keys: str, objective: str) -> list[torch.Tensor]:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"{objective} batch lacks {', '.join(missing)} (has {', '.join(sorted(batch)) or 'nothing'})")
    return [batch[k] for k in keys]


class Objective(nn.Module):
    """model + loss. forward(batch) -> {"loss", "num_tokens" | "num_samples", metrics...};
    metrics are detached tensors (no host sync), counts are Python ints."""

    name: str

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.model.set_gradient_checkpointing(enabled)


class TokenPredictionObjective(Objective):
    """An objective scored token by token (MLM, CLM) on an encoder or decoder model."""

    @staticmethod
    def token_loss(logits: torch.Tensor, targets: torch.Tensor, num_tokens: int) -> dict:
        """Mean cross-entropy and accuracy over the targets that are not IGNORE_INDEX.
        logits (N, V), targets (N,)."""
        valid = targets != IGNORE_INDEX
        count = valid.sum()
        denom = count.clamp(min=1)
        loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum") / denom
        with torch.no_grad():
            correct = ((logits.argmax(-1) == targets) & valid).sum()
        return {
            "loss": loss,
            "num_tokens": num_tokens,
            "num_targets": count.detach(),
            "accuracy": (correct / denom).detach(),
        }

    def flops_per_token(self, seq_len: int | None = None) -> int:
        c = self.model.config
        s = seq_len or c.max_position_embeddings
        return transformer_flops_per_token(self.model.matmul_parameters(), c.num_hidden_layers, c.hidden_size, s)
