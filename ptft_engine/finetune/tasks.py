"""Task models: an engine backbone + a fresh linear head.

  sequence_classification  pooled features -> num_labels logits, cross-entropy
  regression               pooled features -> 1 value, MSE
  token_classification     per-token features -> num_labels logits, cross-entropy (-100 ignored)
  image_classification     ViT features (CLS or mean) -> num_labels logits, cross-entropy
  audio_classification     wav2vec 2.0 frames, mean over the real ones -> projector -> num_labels logits

Pooling: `cls` (first token), `mean` (over real tokens), `last` (last real token: what
a causal decoder has seen everything at). A decoder asked for `cls` (the default) pools
`last` instead: its first token has seen only itself; `mean` is honoured for both.

The heads are transformers' own, so a saved model is served by its task class
(export/task_heads.py): an encoder pooled at [CLS] goes through BERT's pooler,
tanh(dense(h[CLS])), before the output layer (BertForSequenceClassification); a decoder's
sequence head has no bias and reads the rightmost kept token (GPT2/Llama
ForSequenceClassification's `score`; a mean-pooled one has no transformers class);
token heads and ViT's [CLS] head are plain Linear layers on the final hidden states
(BertForTokenClassification, ViTForImageClassification); an audio head is
Wav2Vec2ForSequenceClassification's: the mean over the real frames, a linear projector to
classifier_proj_size (no activation, no dropout), a linear classifier.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptft_engine.labels import IGNORE_INDEX

TEXT_TASKS = ("sequence_classification", "token_classification", "regression")
SEQUENCE_TASKS = ("sequence_classification", "regression")
HEAD_MODULES = ("head", "pooler", "projector")  # what a task adds to the backbone (trained as the head, saved with it)


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
        if head.bias is not None:
            head.bias.zero_()


class TaskModel(nn.Module):
    def __init__(self, backbone: nn.Module, kind: str, num_outputs: int, pooling: str = "cls", dropout: float = 0.1,
                 *, pooler: bool | None = None, head_bias: bool | None = None, projector_size: int = 256):
        """pooler / head_bias: None = transformers' choice for this backbone and task (see
        the module notes); given explicitly only to load a head saved before that rule.
        projector_size: audio only, Wav2Vec2Config.classifier_proj_size (256 by default there)."""
        super().__init__()
        self.backbone = backbone
        self.kind = kind
        cfg = backbone.config
        self.arch = cfg.arch
        if kind == "image_classification" and self.arch != "vit":
            raise ValueError(f"task.kind image_classification needs a ViT backbone, got {self.arch}")
        if kind in TEXT_TASKS and self.arch not in ("encoder", "decoder"):
            raise ValueError(f"task.kind {kind} needs a text backbone (encoder or decoder), got {self.arch}")
        audio = kind == "audio_classification"
        if audio != (self.arch == "wav2vec2"):
            raise ValueError(f"task.kind {kind} on a {self.arch} backbone: audio_classification and a wav2vec 2.0 "
                             "backbone go together")
        if audio:  # transformers' head: mean over real frames, no dropout
            pooling, dropout = "mean", 0.0
        self.pooling = "last" if self.arch == "decoder" and pooling == "cls" else pooling
        self.num_outputs = num_outputs
        self.dropout = nn.Dropout(dropout)
        sequence = kind in SEQUENCE_TASKS
        if pooler is None:
            pooler = self.arch == "encoder" and sequence and self.pooling == "cls"
        if head_bias is None:
            head_bias = not (self.arch == "decoder" and sequence)
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size) if pooler else None
        if self.pooler is not None:
            _init_head(self.pooler, cfg.initializer_range)
        self.projector = nn.Linear(cfg.hidden_size, projector_size) if audio else None
        if self.projector is not None:
            _init_head(self.projector, cfg.initializer_range)
        self.head = nn.Linear(projector_size if audio else cfg.hidden_size, num_outputs, bias=head_bias)
        _init_head(self.head, cfg.initializer_range)

    # ------------------------------------------------------------------ head state
    def head_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.head, self.pooler, self.projector) if m is not None for p in m.parameters()]

    def head_state(self) -> dict[str, torch.Tensor]:
        """{"head.weight": ..., "pooler.weight": ...}: what a save adds to the backbone."""
        return {k: v.detach() for k, v in self.state_dict().items() if k.split(".")[0] in HEAD_MODULES}

    def load_head(self, state: dict[str, torch.Tensor]) -> None:
        mine = self.head_state()
        if set(state) != set(mine):
            raise ValueError(f"saved head has {sorted(state)}, this task model needs {sorted(mine)}")
        self.load_state_dict(state, strict=False)

    # ------------------------------------------------------------------ features
    def _hidden(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, S, D) hidden states and their mask (True/1 = real; None = all real)."""
        if self.arch == "vit":
            return self.backbone.encode(batch["pixel_values"]), None  # (B, 1+N, D)
        if self.arch == "wav2vec2":  # the samples' mask becomes a frames' mask
            out = self.backbone.encode(batch["input_values"], batch.get("attention_mask"))
            return out.hidden, out.frame_mask
        kwargs = {"attention_mask": batch.get("attention_mask")}
        if self.arch == "encoder":
            kwargs["token_type_ids"] = batch.get("token_type_ids")
        return self.backbone.encode(batch["input_ids"], **kwargs), kwargs["attention_mask"]  # (B, S, D)

    def _pool(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.arch == "vit":
            return h[:, 0] if self.pooling == "cls" else h[:, 1:].mean(dim=1)
        if self.pooling == "cls":
            return h[:, 0]
        if mask is None:
            mask = torch.ones(h.shape[:2], dtype=torch.long, device=h.device)
        if self.pooling == "mean":
            m = mask.to(h.dtype)[..., None]  # (B, S, 1)
            return (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        # rightmost kept token (right or left padding), as transformers' *ForSequenceClassification
        positions = torch.arange(h.shape[1], device=h.device)
        last = (positions * mask.bool().long()).argmax(-1)  # (B,)
        return h[torch.arange(h.shape[0], device=h.device), last]

    def forward(self, batch: dict) -> torch.Tensor:
        h, mask = self._hidden(batch)
        if self.kind == "token_classification":
            return self.head(self.dropout(h))  # (B, S, C)
        pooled = self._pool(h, mask)
        if self.pooler is not None:
            pooled = torch.tanh(self.pooler(pooled))  # BERT's pooler
        if self.projector is not None:
            pooled = self.projector(pooled)  # linear: the same as transformers' projecting each frame first
        out = self.head(self.dropout(pooled))  # (B, C)
        return out.squeeze(-1) if self.kind == "regression" else out

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.kind == "regression":
            return F.mse_loss(logits.float(), labels.float())
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX)
