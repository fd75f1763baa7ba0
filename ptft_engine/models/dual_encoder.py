"""CLIP-style dual encoder: ViT image tower + BERT-like text tower, each projected
(no bias, like CLIP's visual_projection / text_projection) into a shared space, and a
learnable temperature kept as log(scale) and clamped at logit_scale_max in use."""
from __future__ import annotations

import math

import torch
from torch import nn

from ptft_engine.models.base import PtftModel
from ptft_engine.models.config import DualEncoderConfig
from ptft_engine.models.encoder import TransformerEncoder
from ptft_engine.models.vit import VisionTransformer
from ptft_engine.nn import Linear, init_std


class DualEncoder(PtftModel):
    def __init__(self, config: DualEncoderConfig):
        super().__init__()
        self.config = c = config
        self.vision = VisionTransformer(c.vision)
        self.text = TransformerEncoder(c.text, with_mlm_head=False)
        # CLIP's rule: std = width ** -0.5 keeps projected norms near 1
        with init_std(c.vision.hidden_size ** -0.5):
            self.visual_projection = Linear(c.vision.hidden_size, c.projection_dim, bias=False)
        with init_std(c.text.hidden_size ** -0.5):
            self.text_projection = Linear(c.text.hidden_size, c.projection_dim, bias=False)
        # shape (1,), not a 0-dim scalar as in CLIP: DeepSpeed's zero.Init cannot partition 0-dim tensors
        self.logit_scale = nn.Parameter(torch.full((1,), float(c.logit_scale_init)))
        if c.gradient_checkpointing:  # also when set by model_copy, which skips the config's validator
            self.set_gradient_checkpointing(True)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.vision.set_gradient_checkpointing(enabled)
        self.text.set_gradient_checkpointing(enabled)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, projection_dim), not normalised."""
        return self.visual_projection(self.vision(pixel_values))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) -> (B, projection_dim), not normalised; pooled by [CLS] or masked mean."""
        h = self.text.encode(input_ids, attention_mask)  # (B, S, D)
        if self.config.text_pooling == "cls":
            pooled = h[:, 0]
        elif attention_mask is None:
            pooled = h.mean(dim=1)
        else:
            m = attention_mask.to(h.dtype)[..., None]  # (B, S, 1)
            pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return self.text_projection(pooled)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at logit_scale_max (CLIP: 100) so training cannot blow it up."""
        return self.logit_scale.clamp(max=math.log(self.config.logit_scale_max)).exp().squeeze(0)  # 0-dim

    def forward(self, pixel_values, input_ids, attention_mask=None) -> dict[str, torch.Tensor]:
        return {
            "image_embeds": self.encode_image(pixel_values),
            "text_embeds": self.encode_text(input_ids, attention_mask),
            "logit_scale": self.scale(),
        }
