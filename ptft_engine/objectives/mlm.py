"""Masked-LM: cross-entropy over the tokens the pipeline masked (ops.mlm_mask made them)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ptft_engine.objectives.base import Objective, need, transformer_flops_per_token

IGNORE = -100


class MaskedLMObjective(Objective):
    name = "mlm"

    def forward(self, batch: dict) -> dict:
        input_ids, labels = need(batch, "input_ids", "labels", objective="mlm")
        hidden = self.model.encode(
            input_ids,
            attention_mask=batch.get("attention_mask"),
            token_type_ids=batch.get("token_type_ids"),
            segment_ids=batch.get("segment_ids"),
        )  # (B, S, D)
        selected = labels != IGNORE
        # The vocabulary projection is the largest matmul: run it on the ~15 % selected rows only.
        logits = self.model.mlm_logits(hidden[selected])  # (N, V)
        targets = labels[selected].long()
        count = selected.sum()
        denom = count.clamp(min=1)
        loss = F.cross_entropy(logits.float(), targets, reduction="sum") / denom
        with torch.no_grad():
            correct = (logits.argmax(-1) == targets).sum()
        return {
            "loss": loss,
            "num_tokens": input_ids.numel(),
            "num_targets": count.detach(),
            "accuracy": (correct / denom).detach(),
        }

    def flops_per_token(self, seq_len: int | None = None) -> int:
        c = self.model.config
        s = seq_len or c.max_position_embeddings
        n = self.model.matmul_parameters()
        return transformer_flops_per_token(n, c.num_hidden_layers, c.hidden_size, s)
