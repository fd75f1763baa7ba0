"""Causal LM: next-token cross-entropy. labels arrive unshifted (= input_ids); targets
that cross a packed-document boundary or land on padding are ignored."""
from __future__ import annotations

from typing import Literal

import torch

from ptft_engine.data.needs import DataNeeds
from ptft_engine.labels import IGNORE_INDEX
from ptft_engine.objectives.base import TokenPredictionObjective, need
from ptft_engine.objectives.spec import ObjectiveConfigBase, ObjectiveSpec, register
from ptft_engine.objectives.synthetic import token_batch


class CLMObjectiveConfig(ObjectiveConfigBase):
    """Next-token cross-entropy; labels are shifted here, never across packed documents."""

    name: Literal["clm"] = "clm"


def shifted_targets(labels: torch.Tensor, segment_ids=None, attention_mask=None) -> torch.Tensor:
    """(B, S) labels -> (B, S-1) targets for positions 0..S-2."""
    targets = labels[:, 1:].to(torch.long, copy=True)  # edited below: never write into the batch
    if segment_ids is not None:
        targets[segment_ids[:, 1:] != segment_ids[:, :-1]] = IGNORE_INDEX  # next token belongs to another document
    if attention_mask is not None:
        targets[~attention_mask[:, 1:].bool()] = IGNORE_INDEX
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


SPEC = register(ObjectiveSpec(
    name="clm", config=CLMObjectiveConfig, arch="decoder",
    data=DataNeeds(kind="text", tokenizer=True, text_layout="causal"),
    synthetic_batch=token_batch, unit="tokens",
    flops_per_unit=lambda objective, seq_len: objective.flops_per_token(seq_len),
    build=lambda model, cfg: CausalLMObjective(model),
))
