"""Causal LM: next-token cross-entropy. labels arrive unshifted (= input_ids); targets
that cross a packed-document boundary or land on padding are ignored."""
from __future__ import annotations

import torch

from ptft_engine.objectives.base import IGNORE, TokenPredictionObjective, need


def shifted_targets(labels: torch.Tensor, segment_ids=None, attention_mask=None) -> torch.Tensor:
    """(B, S) labels -> (B, S-1) targets for positions 0..S-2."""
    targets = labels[:, 1:].to(torch.long, copy=True)  # edited below: never write into the batch
    if segment_ids is not None:
        targets[segment_ids[:, 1:] != segment_ids[:, :-1]] = IGNORE  # next token belongs to another document
    if attention_mask is not None:
        targets[~attention_mask[:, 1:].bool()] = IGNORE
    return targets


class CausalLMObjective(TokenPredictionObjective):
    name = "clm"

    def forward(self, batch: dict) -> dict:
        (input_ids,) = need(batch, "input_ids", objective="clm")
        labels = batch.get("labels", input_ids)
        segment_ids, attention_mask = batch.get("segment_ids"), batch.get("attention_mask")
        hidden = self.model.encode(input_ids, attention_mask=attention_mask, segment_ids=segment_ids)  # (B, S, D)
        logits = self.model.lm_logits(hidden[:, :-1])  # (B, S-1, V)
        targets = shifted_targets(labels, segment_ids, attention_mask)
        return self.token_loss(logits.flatten(0, 1), targets.flatten(), input_ids.numel())
