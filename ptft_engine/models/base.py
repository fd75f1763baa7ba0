"""What every model shares: its config, the checkpointing switch, parameter counts."""
from __future__ import annotations

from torch import nn

from ptft_engine.nn.block import set_gradient_checkpointing


class PtftModel(nn.Module):
    config: object

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute block activations in backward instead of storing them."""
        set_gradient_checkpointing(self, enabled)

    def num_parameters(self, exclude_position_embeddings: bool = False) -> int:
        """Unique parameters (tied weights counted once); optionally without learned
        position tables, which cost memory but no matmul FLOPs."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_position_embeddings:
            for name, p in self.named_parameters():
                if name.endswith("position_embeddings.weight") or name.endswith("position_embeddings"):
                    total -= p.numel()
        return total
