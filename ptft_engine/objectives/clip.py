"""CLIP: symmetric InfoNCE between normalised image and text embeddings, scaled by the
model's learnable (log-parameterised, clamped) logit scale, via ops.contrastive_loss;
with gather, negatives come from every rank."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptft_engine.objectives.base import Objective, default_group, need, transformer_flops_per_token
from ptft_engine.objectives.config import CLIPObjectiveConfig


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
