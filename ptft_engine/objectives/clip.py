"""CLIP: symmetric InfoNCE between normalised image and text embeddings, scaled by the
model's learnable (log-parameterised, clamped) logit scale, via ops.contrastive_loss;
with gather, negatives come from every rank."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ptft_engine.data.needs import DataNeeds
from ptft_engine.objectives.base import Objective, default_group, need, transformer_flops_per_token
from ptft_engine.objectives.spec import ObjectiveConfigBase, ObjectiveSpec, register
from ptft_engine.objectives.synthetic import template_images


class CLIPObjectiveConfig(ObjectiveConfigBase):
    """Symmetric InfoNCE between image and text embeddings with the model's learnable scale."""

    name: Literal["clip"] = "clip"
    gather: bool = Field(False, description="negatives from every rank (torch.distributed's default group)")
    chunk_size: int | None = Field(None, gt=0, description="rows per block of the fused contrastive kernel")


class CLIPObjective(Objective):
    name = "clip"

    def __init__(self, model: nn.Module, cfg: CLIPObjectiveConfig):
        super().__init__(model)
        self.cfg = cfg

    def forward(self, batch: dict) -> dict:
        pixel_values, input_ids = need(batch, "pixel_values", "input_ids", objective="clip")
        out = self.model(pixel_values, input_ids, batch.get("attention_mask"))
        a = F.normalize(out["image_embeds"], dim=-1)  # (N, P)
        b = F.normalize(out["text_embeds"], dim=-1)  # (N, P)
        from ptft_engine.ops import contrastive_loss

        loss = contrastive_loss(a, b, out["logit_scale"], symmetric=True, chunk_size=self.cfg.chunk_size,
                                group=default_group(self.cfg.gather))
        with torch.no_grad():  # local image -> text retrieval top-1
            target = torch.arange(a.shape[0], device=a.device)
            accuracy = ((a.float() @ b.float().T).argmax(-1) == target).float().mean()
        return {"loss": loss, "num_samples": a.shape[0], "accuracy": accuracy,
                "logit_scale": out["logit_scale"].detach()}

    def flops_per_sample(self) -> int:
        """One image and one text (at max length) through their towers, forward and backward."""
        m, c = self.model, self.model.config
        v_params = m.vision.matmul_parameters()
        t_params = m.text.matmul_parameters()
        t_img, t_txt = m.vision.num_tokens, c.text.max_position_embeddings
        image = transformer_flops_per_token(v_params, c.vision.num_hidden_layers, c.vision.hidden_size, t_img) * t_img
        text = transformer_flops_per_token(t_params, c.text.num_hidden_layers, c.text.hidden_size, t_txt) * t_txt
        proj = m.visual_projection.weight.numel() + m.text_projection.weight.numel()
        return image + text + 6 * proj


def synthetic_pairs(cfg, g: torch.Generator) -> dict:
    """Template images with captions that spell the template id: learnable image <-> text pairs."""
    images, ids = template_images(cfg, g)
    pos = torch.arange(cfg.seq_len).unsqueeze(0)
    tokens = (ids.unsqueeze(1) * 3 + pos) % cfg.vocab_size  # (B, S)
    return {"pixel_values": images, "input_ids": tokens, "attention_mask": torch.ones_like(tokens)}


SPEC = register(ObjectiveSpec(
    name="clip", config=CLIPObjectiveConfig, arch="dual_encoder",
    data=DataNeeds(kind="image_text", tokenizer=True, image_views=1),
    synthetic_batch=synthetic_pairs, unit="samples",
    flops_per_unit=lambda objective, seq_len: objective.flops_per_sample(),
    build=CLIPObjective,
))
