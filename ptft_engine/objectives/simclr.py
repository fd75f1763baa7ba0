"""SimCLR: two augmented views -> ViT features -> projection MLP -> NT-Xent (ops.nt_xent_loss).

The projection MLP belongs to the objective, not the model: downstream tasks use the
encoder's features, as in the SimCLR paper."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ptft_engine.data.needs import DataNeeds
from ptft_engine.nn import Linear, init_std
from ptft_engine.objectives.base import Objective, default_group, need, transformer_flops_per_token
from ptft_engine.objectives.spec import ObjectiveConfigBase, ObjectiveSpec, register
from ptft_engine.objectives.synthetic import template_images


class SimCLRObjectiveConfig(ObjectiveConfigBase):
    """ViT features -> projection MLP -> NT-Xent over the two views."""

    name: Literal["simclr"] = "simclr"
    temperature: float = Field(0.1, gt=0)
    projection_dim: int = Field(128, gt=0)
    projection_hidden_dim: int | None = Field(None, gt=0, description="default: the encoder's hidden size")
    gather: bool = Field(False, description="negatives from every rank (torch.distributed's default group)")
    chunk_size: int | None = Field(None, gt=0, description="rows per block of the fused contrastive kernel")


class SimCLRObjective(Objective):
    name = "simclr"

    def __init__(self, model: nn.Module, cfg: SimCLRObjectiveConfig):
        super().__init__(model)
        self.cfg = cfg
        d = model.config.hidden_size
        hidden = cfg.projection_hidden_dim or d
        # fan-in scaled init: with the encoder's 0.02 the head's zero-init biases would
        # dominate its outputs at small widths and every sample would map to one point
        with init_std(d ** -0.5):
            first = Linear(d, hidden)
        with init_std(hidden ** -0.5):
            second = Linear(hidden, cfg.projection_dim)
        self.projector = nn.Sequential(first, nn.ReLU(), second)

    def forward(self, batch: dict) -> dict:
        view1, view2 = need(batch, "view1", "view2", objective="simclr")
        n = view1.shape[0]
        feats = self.model(torch.cat([view1, view2]))  # (2N, D): one pass over both views
        z = F.normalize(self.projector(feats), dim=-1)  # (2N, P)
        z1, z2 = z[:n], z[n:]
        from ptft_engine.ops import nt_xent_loss

        loss = nt_xent_loss(z1, z2, self.cfg.temperature, chunk_size=self.cfg.chunk_size,
                            group=default_group(self.cfg.gather))
        with torch.no_grad():  # local top-1: is the other view the nearest of the 2N-1 candidates?
            sim = z.float() @ z.float().T
            sim.fill_diagonal_(float("-inf"))
            target = torch.arange(2 * n, device=z.device).roll(n)
            accuracy = (sim.argmax(-1) == target).float().mean()
        return {"loss": loss, "num_samples": n, "accuracy": accuracy}

    def flops_per_sample(self) -> int:
        """Both views through the encoder (+ the small projector), forward and backward."""
        c = self.model.config
        t = self.model.num_tokens
        n = self.model.matmul_parameters()
        proj = sum(p.numel() for p in self.projector.parameters())
        per_view = transformer_flops_per_token(n, c.num_hidden_layers, c.hidden_size, t) * t + 6 * proj
        return 2 * per_view


def synthetic_views(cfg, g: torch.Generator) -> dict:
    """Two noisy copies of each template image: (B, C, H, W) each."""
    images, _ = template_images(cfg, g)
    noise = 0.3 * torch.randn(images.shape, generator=g)
    return {"view1": images, "view2": images + noise}


SPEC = register(ObjectiveSpec(
    name="simclr", config=SimCLRObjectiveConfig, arch="vit",
    data=DataNeeds(kind="image", image_views=2),
    synthetic_batch=synthetic_views, unit="samples",
    flops_per_unit=lambda objective, seq_len: objective.flops_per_sample(),
    build=SimCLRObjective,
))
