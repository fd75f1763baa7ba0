"""ViT image encoder: patches + [CLS] + learned positions, pre-LN blocks, final LayerNorm.

Parameter layout (-> transformers ViTModel, a renaming):
  embeddings.patch_proj            -> embeddings.patch_embeddings.projection (Conv2d)
  embeddings.cls_token / position_embeddings -> embeddings.cls_token / position_embeddings
  layers.{i}.attn_norm / mlp_norm  -> encoder.layer.{i}.layernorm_before / layernorm_after
  layers.{i}.attn.{q,k,v}_proj     -> encoder.layer.{i}.attention.attention.{query,key,value}
  layers.{i}.attn.o_proj           -> encoder.layer.{i}.attention.output.dense
  layers.{i}.mlp.fc_in / fc_out    -> encoder.layer.{i}.intermediate.dense / output.dense
  final_norm                       -> layernorm
"""
from __future__ import annotations

import torch
from torch import nn

from ptft_engine.models.base import PtftModel, layer_norm_blocks
from ptft_engine.models.config import ViTConfig
from ptft_engine.nn import PatchEmbedding, init_std


class VisionTransformer(PtftModel):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        with init_std(config.initializer_range):
            self._build(config)
        self.set_gradient_checkpointing(config.gradient_checkpointing)

    def _build(self, c: ViTConfig) -> None:
        self.embeddings = PatchEmbedding(c.image_size, c.patch_size, c.num_channels, c.hidden_size,
                                         c.hidden_dropout_prob)
        self.layers = layer_norm_blocks(c, pre_norm=True)
        self.final_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_tokens(self) -> int:
        return self.embeddings.num_patches + 1

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1 + num_patches, D); token 0 is [CLS]."""
        return self.final_norm(self.layers(self.embeddings(pixel_values)))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> pooled image features (B, D)."""
        h = self.encode(pixel_values)
        return h[:, 0] if self.config.pooling == "cls" else h[:, 1:].mean(dim=1)
