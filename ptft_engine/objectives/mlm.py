"""Masked-LM: cross-entropy over the tokens the pipeline masked (ops.mlm_mask made them)."""
from __future__ import annotations

from ptft_engine.objectives.base import IGNORE, TokenPredictionObjective, need


class MaskedLMObjective(TokenPredictionObjective):
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
        return self.token_loss(logits, labels[selected].long(), input_ids.numel())
