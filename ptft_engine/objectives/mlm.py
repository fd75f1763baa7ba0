"""Masked-LM: cross-entropy over the tokens the pipeline masked (ops.mlm_mask made them)."""
from __future__ import annotations

from typing import Literal

import torch

from ptft_engine.data.needs import DataNeeds
from ptft_engine.labels import IGNORE_INDEX
from ptft_engine.objectives.base import TokenPredictionObjective, need
from ptft_engine.objectives.spec import ObjectiveConfigBase, ObjectiveSpec, register
from ptft_engine.objectives.synthetic import token_progressions


class MLMObjectiveConfig(ObjectiveConfigBase):
    """Cross-entropy over the tokens the data pipeline selected (labels != -100)."""

    name: Literal["mlm"] = "mlm"


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
        selected = labels != IGNORE_INDEX
        # The vocabulary projection is the largest matmul: run it on the ~15 % selected rows only.
        logits = self.model.mlm_logits(hidden[selected])  # (N, V)
        return self.token_loss(logits, labels[selected].long(), input_ids.numel())


def synthetic_mlm_batch(cfg, g: torch.Generator) -> dict:
    """Progressions with ~15 % of the tokens (and each row's first) replaced by the last id."""
    ids = token_progressions(cfg, g)
    selected = torch.rand(ids.shape, generator=g) < 0.15
    selected[:, 0] = True  # at least one target per row
    return {"input_ids": torch.where(selected, torch.full_like(ids, cfg.vocab_size - 1), ids),
            "attention_mask": torch.ones_like(ids),
            "labels": torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))}


SPEC = register(ObjectiveSpec(
    name="mlm", config=MLMObjectiveConfig, arch="encoder",
    data=DataNeeds(kind="text", tokenizer=True, text_layout="segments", mlm_mask=True),
    synthetic_batch=synthetic_mlm_batch, unit="tokens",
    flops_per_unit=lambda objective, seq_len: objective.flops_per_token(seq_len),
    build=lambda model, cfg: MaskedLMObjective(model),
))
