"""Task models: an engine backbone + a fresh linear head.

  sequence_classification  pooled features -> num_labels logits, cross-entropy
  regression               pooled features -> 1 value, MSE
  token_classification     per-token features -> num_labels logits, cross-entropy (-100 ignored)
  image_classification     ViT features (CLS or mean) -> num_labels logits, cross-entropy

Pooling: `cls` (first token), `mean` (over real tokens), `last` (last real token: what
a causal decoder has seen everything at; used for decoders whatever is asked).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TEXT_TASKS = ("sequence_classification", "token_classification", "regression")


def select_backbone(model: nn.Module, kind: str) -> nn.Module:
    """The part of a pre-trained model a task uses (a dual encoder's tower; no MLM head)."""
    arch = model.config.arch
    if arch == "dual_encoder":
        return model.vision if kind == "image_classification" else model.text
    if arch == "encoder" and getattr(model, "mlm_head", None) is not None:
        model.mlm_head = None  # unused by every task: don't train, save or count it
    return model


def _init_head(head: nn.Linear, std: float) -> None:
    with torch.no_grad():
        head.weight.normal_(0.0, std)
        head.bias.zero_()


class TaskModel(nn.Module):
    def __init__(self, backbone: nn.Module, kind: str, num_outputs: int, pooling: str = "cls", dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.kind = kind
        cfg = backbone.config
        self.arch = cfg.arch
        if kind == "image_classification" and self.arch != "vit":
            raise ValueError(f"task.kind image_classification needs a ViT backbone, got {self.arch}")
        if kind in TEXT_TASKS and self.arch not in ("encoder", "decoder"):
            raise ValueError(f"task.kind {kind} needs a text backbone (encoder or decoder), got {self.arch}")
        self.pooling = "last" if self.arch == "decoder" else pooling
        self.num_outputs = num_outputs
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(cfg.hidden_size, num_outputs)
        _init_head(self.head, cfg.initializer_range)

    # ------------------------------------------------------------------ features
    def _hidden(self, batch: dict) -> torch.Tensor:
        if self.arch == "vit":
            return self.backbone.encode(batch["pixel_values"])  # (B, 1+N, D)
        kwargs = {"attention_mask": batch.get("attention_mask")}
        if self.arch == "encoder":
            kwargs["token_type_ids"] = batch.get("token_type_ids")
        return self.backbone.encode(batch["input_ids"], **kwargs)  # (B, S, D)

    def _pool(self, h: torch.Tensor, batch: dict) -> torch.Tensor:
        mask = batch.get("attention_mask")
        if self.arch == "vit":
            return h[:, 0] if self.pooling == "cls" else h[:, 1:].mean(dim=1)
        if self.pooling == "cls":
            return h[:, 0]
        if mask is None:
            mask = torch.ones(h.shape[:2], dtype=torch.long, device=h.device)
        if self.pooling == "mean":
            m = mask.to(h.dtype)[..., None]  # (B, S, 1)
            return (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        last = mask.long().sum(1).clamp(min=1) - 1  # (B,) index of the last real token
        return h[torch.arange(h.shape[0], device=h.device), last]

    def forward(self, batch: dict) -> torch.Tensor:
        h = self._hidden(batch)
        if self.kind == "token_classification":
            return self.head(self.dropout(h))  # (B, S, C)
        out = self.head(self.dropout(self._pool(h, batch)))  # (B, C)
        return out.squeeze(-1) if self.kind == "regression" else out

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.kind == "regression":
            return F.mse_loss(logits.float(), labels.float())
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
