"""Causal LM: next-token cross-entropy. labels arrive unshifted (= input_ids); targets
that cross a packed-document boundary or land on padding are ignored."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ptft_engine.objectives.base import Objective, need, transformer_flops_per_token

IGNORE = -100


def shifted_targets(labels: torch.Tensor, segment_ids=None, attention_mask=None) -> torch.Tensor:
    """(B, S) labels -> (B, S-1) targets for positions 0..S-2."""
    targets = labels[:, 1:].to(torch.long, copy=True)  # edited below: never write into the batch
    if segment_ids is not None:
        targets[segment_ids[:, 1:] != segment_ids[:, :-1]] = IGNORE  # next token belongs to another document
    if attention_mask is not None:
        targets[~attention_mask[:, 1:].bool()] = IGNORE
    return targets


class CausalLMObjective(Objective):
    name = "clm"

    def forward(self, batch: dict) -> dict:
        (input_ids,) = need(batch, "input_ids", objective="clm")
        labels = batch.get("labels", input_ids)
        segment_ids, attention_mask = batch.get("segment_ids"), batch.get("attention_mask")
        hidden = self.model.encode(input_ids, attention_mask=attention_mask, segment_ids=segment_ids)  # (B, S, D)
        logits = self.model.lm_logits(hidden[:, :-1])  # (B, S-1, V)
        targets = shifted_targets(labels, segment_ids, attention_mask)
        valid = targets != IGNORE
        count = valid.sum()
        denom = count.clamp(min=1)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum") / denom
        with torch.no_grad():
            correct = ((logits.argmax(-1) == targets) & valid).sum()
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
