"""HuBERT pre-training (Hsu et al. 2021, "HuBERT: Self-Supervised Speech Representation Learning
by Masked Prediction of Hidden Units"; fairseq's hubert recipe), first iteration: the targets
are k-means cluster ids of MFCC frames (objectives/speech_targets.py, `ptft speech-targets`).

The model is wav2vec 2.0's (models/wav2vec2.py) and frames are masked as the wav2vec2
objective masks them (`compute_span_mask`: spans of mask_length inside each utterance,
min_masks 2, as fairseq's HuBERT calls it), replaced by the learned mask embedding. Each
frame's context vector is projected to final_dim; its logits are the cosine similarities to
one learned embedding per cluster, / 0.1 (fairseq's logit_temp), and the loss is the
cross-entropy with the frame's cluster id, averaged over the masked frames, plus
unmasked_weight x the same over the unmasked real frames (the paper's alpha = 1, masked
frames only, is unmasked_weight 0; fairseq's pred_nomask_weight). Defaults: fairseq's
hubert_base_librispeech.yaml (mask_prob 0.80, final_dim 256) and HubertConfig (mask_length
10, logit_temp 0.1); the cluster embeddings start uniform in [0, 1) as there.

Not implemented: the feature encoder's 0.1 gradient scale and the L2 feature penalty, dropout
on the input features, LayerDrop, later iterations (targets from a trained model's layer).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ptft_engine.data.needs import DataNeeds
from ptft_engine.labels import IGNORE_INDEX
from ptft_engine.objectives import speech_targets
from ptft_engine.objectives.base import Objective, need
from ptft_engine.objectives.spec import ObjectiveConfigBase, ObjectiveSpec, register
from ptft_engine.objectives.wav2vec2 import FRAME_EXTRA, forward_flops, frames_and_span_mask, synthetic_chirps

RANDOM_CLUSTERS = 100  # targets without a k-means file: as many ids as HuBERT's MFCC iteration has clusters


class HubertObjectiveConfig(ObjectiveConfigBase):
    """Defaults: fairseq's HuBERT BASE settings."""

    name: Literal["hubert"] = "hubert"
    kmeans_path: str | None = Field(None, description="k-means targets file (`ptft speech-targets`); required "
                                                      "for audio shards; synthetic data without it: random ids")
    final_dim: int = Field(256, ge=1, description="space the context vectors and cluster embeddings meet in")
    unmasked_weight: float = Field(0.0, ge=0.0, description="weight of the loss on unmasked frames (paper: 0)")
    mask_prob: float = Field(0.8, gt=0.0, lt=1.0, description="share of frames that start a span (before overlap)")
    mask_length: int = Field(10, ge=1, description="frames per masked span")
    min_masks: int = Field(2, ge=0, description="spans per utterance at least (where it is long enough)")
    logit_temperature: float = Field(0.1, gt=0.0, description="cosine similarity / this")

    def check_data(self, data) -> None:
        if self.kmeans_path is None and not getattr(data, "synthetic", False):
            raise ValueError("objective.kmeans_path: required to train on audio shards (the cluster ids are the "
                             "targets); fit one with `ptft speech-targets SHARDS --output km.json`")


class HubertObjective(Objective):
    name = "hubert"

    def __init__(self, model: nn.Module, cfg: HubertObjectiveConfig | None = None):
        super().__init__(model)
        self.cfg = cfg = cfg or HubertObjectiveConfig()
        c = model.config
        hop = math.prod(c.conv_stride)
        if hop != speech_targets.HOP:
            raise ValueError(f"objective hubert: the model makes a frame every {hop} samples; the MFCC targets "
                             f"are {speech_targets.HOP} apart (conv_stride must multiply to {speech_targets.HOP})")
        # a plain attribute, not buffers: the targets stay float32 whatever precision trains
        self.targets = speech_targets.KMeansTargets.load(cfg.kmeans_path) if cfg.kmeans_path else None
        k = self.targets.num_clusters if self.targets else RANDOM_CLUSTERS
        self.final_proj = nn.Linear(c.hidden_size, cfg.final_dim)
        self.label_embs = nn.Parameter(torch.rand(k, cfg.final_dim))

    def flops_per_sample(self, num_samples: int) -> int:
        """Training FLOPs of one clip: 3 x (the model's forward + projection + cluster logits)."""
        c, t = self.model.config, self.model.config.num_frames(num_samples)
        head = self.final_proj.weight.numel() + self.label_embs.numel()
        return 3 * (forward_flops(c, num_samples) + 2 * head * t)

    def cluster_ids(self, audio: torch.Tensor, attention_mask: torch.Tensor | None, num_frames: int) -> torch.Tensor:
        """(B, num_frames) target ids aligned with the model's frames; IGNORE_INDEX where none."""
        if self.targets is None:  # synthetic data only (the config refuses shards without a k-means file)
            ids = torch.randint(0, self.label_embs.shape[0], (audio.shape[0], num_frames), device=audio.device)
        else:
            ids = self.targets.cluster_ids(audio, attention_mask)
        if ids.shape[1] >= num_frames:  # the same count for the standard conv stack; trim or pad otherwise
            return ids[:, :num_frames]
        return F.pad(ids, (0, num_frames - ids.shape[1]), value=IGNORE_INDEX)

    def _score(self, proj: torch.Tensor, ids: torch.Tensor, where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy and accuracy over the frames `where` (B, T)."""
        x = F.normalize(proj[where].float(), dim=-1)  # (N, F)
        logits = x @ F.normalize(self.label_embs.float(), dim=-1).T / self.cfg.logit_temperature  # (N, K)
        target = ids[where]
        if target.numel() == 0:
            return proj.sum() * 0.0, proj.new_zeros((), dtype=torch.float32)
        with torch.no_grad():
            acc = (logits.argmax(-1) == target).float().mean()
        return F.cross_entropy(logits, target), acc

    def forward(self, batch: dict) -> dict:
        """batch: input_values (B, L) float, attention_mask (B, L) bool (True = real sample),
        optional: mask_time_indices (B, T) bool frames to mask and cluster_ids (B, T) targets
        (IGNORE_INDEX: none); made here when absent."""
        (audio,) = need(batch, "input_values", objective="hubert")
        attention_mask = batch.get("attention_mask")
        c = self.cfg
        num_frames, lengths, mask = frames_and_span_mask(self.model, batch, audio, c)
        ids = batch.get("cluster_ids")
        if ids is None:
            ids = self.cluster_ids(audio, attention_mask, num_frames)
        out = self.model.encode(audio, attention_mask, mask_time_indices=mask)
        real = torch.arange(num_frames, device=audio.device)[None, :] < lengths[:, None]  # (B, T)
        real = real & (ids != IGNORE_INDEX)
        proj = self.final_proj(out.hidden)  # (B, T, F)
        masked_loss, masked_acc = self._score(proj, ids, mask & real)
        if c.unmasked_weight > 0:
            unmasked_loss, unmasked_acc = self._score(proj, ids, ~mask & real)
        else:  # not in the loss: measured without building its graph
            with torch.no_grad():
                unmasked_loss, unmasked_acc = self._score(proj, ids, ~mask & real)
        loss = masked_loss + c.unmasked_weight * unmasked_loss
        return {"loss": loss, "num_samples": audio.shape[0], "masked_loss": masked_loss.detach(),
                "unmasked_loss": unmasked_loss.detach(), "masked_accuracy": masked_acc,
                "unmasked_accuracy": unmasked_acc, "num_masked": (mask & real).sum()}


SPEC = register(ObjectiveSpec(
    name="hubert", config=HubertObjectiveConfig, arch="wav2vec2",
    data=DataNeeds(kind="audio", sample_rate=speech_targets.SAMPLE_RATE),  # its MFCC targets are at 16 kHz
    # synthetic: wav2vec2's rising tones; without a k-means file the targets are random ids
    synthetic_batch=synthetic_chirps, unit="samples",
    flops_per_unit=lambda objective, seq_len: objective.flops_per_sample(
        (seq_len or 50) * speech_targets.HOP + FRAME_EXTRA),
    build=HubertObjective,
))
