"""wav2vec 2.0 pre-training (Baevski et al. 2020, section 3 and 4.2; fairseq's wav2vec2 recipe).

1. Span masking of frames (`compute_span_mask`, after fairseq's `compute_mask_indices`):
   each real frame starts a span with probability mask_prob / mask_length (0.65 / 10, rounded
   to a whole number of starts per utterance, at least `min_masks`), spans are mask_length
   (10) frames long and may overlap, so about 49 % of the frames end up masked (the paper's
   figure). Padding frames are never masked: every span lies inside its utterance.
2. The masked frames' projected features are replaced by the model's learned mask embedding;
   the context network sees the rest.
3. A Gumbel-softmax product quantiser turns the (unmasked) conv features into targets:
   G = 2 codebooks of V = 320 entries, straight-through hard one-hot in training, the
   temperature annealed from 2 to 0.5 by a factor 0.999995 per training step.
4. Contrastive loss per masked frame t: cross-entropy over cosine similarities / 0.1 between
   the context vector c_t and [q_t, 100 distractors], the distractors drawn uniformly from the
   quantised targets of other masked frames of the same utterance; a distractor equal to
   q_t is ignored (its logit is -inf).
5. Diversity loss (weight 0.1): (G*V - perplexity) / (G*V), the perplexity of the codebooks'
   softmax averaged over the batch's real frames: it pushes all entries into use.

Why not `ops.contrastive`: that kernel computes InfoNCE over one similarity matrix whose
columns are shared by every row (CLIP, SimCLR); here each row has its own 101 candidates
(its target and distractors from its own utterance), a (N, 101) matrix that plain PyTorch
handles at no memory risk.

Not implemented (fairseq options the paper's BASE uses): the feature encoder's gradient
scaling (0.1) and the L2 penalty on its features.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ptft_engine.data.needs import DataNeeds
from ptft_engine.objectives.base import Objective, need
from ptft_engine.objectives.spec import ObjectiveConfigBase, ObjectiveSpec, register

SAMPLE_RATE = 16000
FRAME_HOP = 320  # samples per frame of the standard feature encoder: 20 ms at 16 kHz
FRAME_EXTRA = 80  # its receptive field is 400 samples: n frames need n * 320 + 80 samples


class Wav2Vec2ObjectiveConfig(ObjectiveConfigBase):
    """Defaults are the paper's BASE settings."""

    name: Literal["wav2vec2"] = "wav2vec2"
    mask_prob: float = Field(0.65, gt=0.0, lt=1.0, description="share of frames that start a span (before overlap)")
    mask_length: int = Field(10, ge=1, description="frames per masked span")
    min_masks: int = Field(2, ge=0, description="spans per utterance at least (where it is long enough)")
    num_negatives: int = Field(100, ge=1, description="distractors per masked frame")
    logit_temperature: float = Field(0.1, gt=0.0, description="kappa: cosine similarity / kappa")
    num_codevector_groups: int = Field(2, ge=1)
    num_codevectors_per_group: int = Field(320, ge=2)
    codevector_dim: int = Field(256, ge=1, description="quantised vector size (split over the groups)")
    proj_codevector_dim: int = Field(256, ge=1, description="space the contrastive similarity is taken in")
    diversity_loss_weight: float = Field(0.1, ge=0.0)
    gumbel_max_temperature: float = Field(2.0, gt=0.0)
    gumbel_min_temperature: float = Field(0.5, gt=0.0)
    gumbel_temperature_decay: float = Field(0.999995, gt=0.0, le=1.0,
                                            description="per training forward (an update without accumulation)")


def compute_span_mask(frame_lengths: torch.Tensor, num_frames: int, mask_prob: float, mask_length: int,
                      min_masks: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) real-frame counts -> (B, num_frames) bool mask of whole spans inside each utterance.

    Utterance b gets n_b = int(mask_prob * len_b / mask_length + u) spans (u ~ U[0, 1): a
    probabilistic rounding; at least min_masks), starting at distinct positions drawn
    uniformly from [0, len_b - mask_length]; an utterance shorter than one span gets none.
    """
    device = frame_lengths.device
    lengths = frame_lengths.long().cpu()
    b = lengths.shape[0]
    starts_possible = (lengths - mask_length + 1).clamp(min=0)  # (B,)
    u = torch.rand(b, generator=generator)
    counts = (mask_prob * lengths / mask_length + u).long().clamp(min=min_masks)
    counts = torch.minimum(counts, starts_possible)  # (B,)
    mask = torch.zeros(b, num_frames, dtype=torch.bool)
    k = int(counts.max()) if b else 0
    if k == 0:
        return mask.to(device)
    # distinct random starts: the k best of random scores over the allowed positions
    scores = torch.rand(b, num_frames, generator=generator)
    allowed = torch.arange(num_frames)[None, :] < starts_possible[:, None]
    scores = scores.masked_fill(~allowed, -1.0)
    starts = scores.topk(k, dim=1).indices  # (B, k)
    keep = torch.arange(k)[None, :] < counts[:, None]  # (B, k): row b uses its first counts[b] starts
    spans = starts[:, :, None] + torch.arange(mask_length)[None, None, :]  # (B, k, L)
    rows = torch.arange(b)[:, None, None].expand_as(spans)
    sel = keep[:, :, None].expand_as(spans)
    mask[rows[sel], spans[sel]] = True
    return mask.to(device)


def frames_and_span_mask(model, batch: dict, audio: torch.Tensor, cfg) -> tuple[int, torch.Tensor, torch.Tensor]:
    """A batch's frame count, (B,) real frames per clip and (B, T) frames to mask (the batch's
    `mask_time_indices`, else spans drawn with cfg's mask_prob / mask_length / min_masks)."""
    attention_mask = batch.get("attention_mask")
    num_frames = model.config.num_frames(audio.shape[1])
    if attention_mask is None:
        lengths = torch.full((audio.shape[0],), num_frames, device=audio.device)
    else:
        lengths = model.frame_lengths(attention_mask.long().sum(-1))
    mask = batch.get("mask_time_indices")
    if mask is None:
        mask = compute_span_mask(lengths, num_frames, cfg.mask_prob, cfg.mask_length, cfg.min_masks)
    return num_frames, lengths, mask


def sample_negatives(mask: torch.Tensor, num_negatives: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Distractor indices into the masked frames (row-major order of `mask`, (N,) of them):
    (N, K), each drawn uniformly from the other masked frames of the same utterance. An
    utterance with a single masked frame can only offer the frame itself (its logit is
    then dropped as equal to the target)."""
    per_row = mask.sum(1)  # (B,)
    row_of = torch.nonzero(mask)[:, 0]  # (N,) utterance of each masked frame
    first = torch.cumsum(per_row, 0) - per_row  # (B,) index of each utterance's first masked frame
    rank = torch.arange(row_of.shape[0], device=mask.device) - first[row_of]  # (N,) position within its utterance
    others = (per_row[row_of] - 1).clamp(min=1)  # (N,) candidates besides itself
    r = torch.rand(row_of.shape[0], num_negatives, device=mask.device, generator=generator)
    pick = (r * others[:, None]).long()  # uniform over [0, others)
    pick = pick + ((pick >= rank[:, None]) & (per_row[row_of] > 1)[:, None]).long()  # skip itself
    return first[row_of][:, None] + pick


class GumbelQuantizer(nn.Module):
    """Product quantiser: G codebooks of V entries; logits from a linear map of the features."""

    def __init__(self, in_dim: int, groups: int, entries: int, codevector_dim: int):
        super().__init__()
        if codevector_dim % groups:
            raise ValueError(f"objective.codevector_dim {codevector_dim} must be divisible by "
                             f"num_codevector_groups {groups}")
        self.groups, self.entries = groups, entries
        self.weight_proj = nn.Linear(in_dim, groups * entries)
        self.codevectors = nn.Parameter(torch.rand(1, groups * entries, codevector_dim // groups))
        with torch.no_grad():  # fairseq / transformers: N(0, 1) logits map, uniform codebook
            self.weight_proj.weight.normal_(0.0, 1.0)
            self.weight_proj.bias.zero_()

    def forward(self, features: torch.Tensor, temperature: float,
                frame_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, C) -> quantised (B, T, codevector_dim), perplexity (a scalar: sum over groups
        of exp(entropy of the average soft assignment over real frames))."""
        b, t, _ = features.shape
        logits = self.weight_proj(features).float().view(b * t, self.groups, self.entries)  # (BT, G, V)
        if self.training:
            onehot = F.gumbel_softmax(logits, tau=temperature, hard=True)  # straight-through
        else:
            onehot = F.one_hot(logits.argmax(-1), self.entries).to(logits.dtype)
        probs = logits.softmax(-1)  # (BT, G, V)
        if frame_mask is not None:
            real = frame_mask.reshape(-1)
            avg = probs[real].mean(0)  # (G, V)
        else:
            avg = probs.mean(0)
        perplexity = torch.exp(-torch.xlogy(avg, avg).sum(-1)).sum()
        onehot = onehot.to(self.codevectors.dtype).view(b * t, self.groups * self.entries)
        # (BT, G*V, 1) * (1, G*V, C/G) -> pick one entry per group, then concatenate the groups
        q = (onehot[:, :, None] * self.codevectors).view(b * t, self.groups, self.entries, -1).sum(2)
        return q.reshape(b, t, -1), perplexity


def forward_flops(model_cfg, num_samples: int) -> int:
    """Forward FLOPs (2 per multiply-add) of the wav2vec 2.0 model on one clip of num_samples:
    the convolutions (which dominate at the bottom: 512 x 512 x 3 per output step), the
    positional conv, and the Transformer (weight matmuls + attention scores and values)."""
    c = model_cfg
    flops, n, c_in = 0, num_samples, 1
    for dim, k, s in zip(c.conv_dim, c.conv_kernel, c.conv_stride):
        n = (n - k) // s + 1 if n >= k else 0
        flops += 2 * c_in * dim * k * n
        c_in = dim
    t, d = n, c.hidden_size
    flops += 2 * c.conv_dim[-1] * d * t  # feature projection
    flops += 2 * d * (d // c.num_conv_pos_embedding_groups) * c.num_conv_pos_embeddings * t
    per_layer = 2 * (4 * d * d + 2 * d * c.intermediate_size) * t + 4 * d * t * t
    return flops + c.num_hidden_layers * per_layer


class Wav2Vec2Objective(Objective):
    name = "wav2vec2"

    def __init__(self, model: nn.Module, cfg: Wav2Vec2ObjectiveConfig | None = None):
        super().__init__(model)
        self.cfg = cfg = cfg or Wav2Vec2ObjectiveConfig()
        if cfg.gumbel_min_temperature > cfg.gumbel_max_temperature:
            raise ValueError(f"objective.gumbel_min_temperature {cfg.gumbel_min_temperature} is above "
                             f"gumbel_max_temperature {cfg.gumbel_max_temperature}")
        c = model.config
        self.quantizer = GumbelQuantizer(c.conv_dim[-1], cfg.num_codevector_groups, cfg.num_codevectors_per_group,
                                         cfg.codevector_dim)
        self.project_hid = nn.Linear(c.hidden_size, cfg.proj_codevector_dim)
        self.project_q = nn.Linear(cfg.codevector_dim, cfg.proj_codevector_dim)
        # training forwards seen (a buffer: checkpointed, so a resumed run anneals on from where it was)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def flops_per_sample(self, num_samples: int) -> int:
        """Training FLOPs of one clip of num_samples audio samples: 3 x the forward (backward
        = 2 x forward), the quantiser and projections included."""
        c, t = self.model.config, self.model.config.num_frames(num_samples)
        heads = sum(p.numel() for m in (self.quantizer.weight_proj, self.project_hid, self.project_q)
                    for p in m.parameters())
        return 3 * (forward_flops(c, num_samples) + 2 * heads * t)

    @property
    def gumbel_temperature(self) -> float:
        c = self.cfg
        return max(c.gumbel_max_temperature * c.gumbel_temperature_decay ** int(self.num_updates),
                   c.gumbel_min_temperature)

    def forward(self, batch: dict) -> dict:
        """batch: input_values (B, L) float, attention_mask (B, L) bool (True = real sample),
        optional: mask_time_indices (B, T) bool frames to mask, sampled_negative_indices (N, K)
        distractors as indices into the masked frames in row-major order (as transformers'
        Wav2Vec2ForPreTraining takes them); drawn here when absent."""
        (audio,) = need(batch, "input_values", objective="wav2vec2")
        attention_mask = batch.get("attention_mask")
        c = self.cfg
        num_frames, lengths, mask = frames_and_span_mask(self.model, batch, audio, c)
        out = self.model.encode(audio, attention_mask, mask_time_indices=mask)
        temperature = self.gumbel_temperature
        quantized, perplexity = self.quantizer(out.features, temperature, out.frame_mask)
        context = self.project_hid(out.hidden[mask])  # (N, P) masked frames, row-major
        targets = self.project_q(quantized[mask])  # (N, P)
        negative_idx = batch.get("sampled_negative_indices")
        if negative_idx is None:
            negative_idx = sample_negatives(mask, c.num_negatives)
        negatives = targets[negative_idx]  # (N, K, P)
        candidates = torch.cat([targets[:, None], negatives], 1).float()  # (N, 1+K, P)
        logits = F.cosine_similarity(context.float()[:, None], candidates, dim=-1) / c.logit_temperature
        same = (negatives == targets[:, None]).all(-1)  # (N, K) a distractor that is the target itself
        logits[:, 1:] = logits[:, 1:].masked_fill(same, float("-inf"))
        n = logits.shape[0]
        zeros = torch.zeros(n, dtype=torch.long, device=logits.device)
        contrastive = F.cross_entropy(logits, zeros) if n else logits.sum()
        entries = c.num_codevector_groups * c.num_codevectors_per_group
        diversity = (entries - perplexity) / entries
        loss = contrastive + c.diversity_loss_weight * diversity
        if self.training:
            self.num_updates += 1
        with torch.no_grad():
            accuracy = (logits.argmax(-1) == 0).float().mean() if n else logits.new_zeros(())
        return {"loss": loss, "num_samples": audio.shape[0], "contrastive_loss": contrastive.detach(),
                "diversity_loss": diversity.detach(), "accuracy": accuracy, "perplexity": perplexity.detach(),
                "num_masked": torch.tensor(n), "gumbel_temperature": torch.tensor(temperature)}


def synthetic_chirps(cfg, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Rising tones (150-600 Hz, 1-3 octaves per second, plus noise), each clip normalised:
    a masked frame's pitch follows from its neighbours, so the contrastive loss can fall.
    cfg.seq_len counts 20 ms frames; clips hold seq_len * 320 + 80 samples at 16 kHz."""
    n = cfg.seq_len * FRAME_HOP + FRAME_EXTRA
    t = torch.arange(n) / SAMPLE_RATE  # (L,)
    f0 = 150 * 2 ** (2 * torch.rand(cfg.batch_size, 1, generator=g))  # (B, 1)
    rate = 1 + 2 * torch.rand(cfg.batch_size, 1, generator=g)
    phase = 2 * math.pi * f0 * (2 ** (rate * t) - 1) / (rate * math.log(2))  # integral of f0 * 2^(rate t)
    wave = torch.sin(phase) + 0.05 * torch.randn(cfg.batch_size, n, generator=g)
    wave = (wave - wave.mean(1, keepdim=True)) / wave.std(1, keepdim=True)
    return {"input_values": wave.float(), "attention_mask": torch.ones(cfg.batch_size, n, dtype=torch.bool)}


SPEC = register(ObjectiveSpec(
    name="wav2vec2", config=Wav2Vec2ObjectiveConfig, arch="wav2vec2",
    data=DataNeeds(kind="audio"),
    synthetic_batch=synthetic_chirps, unit="samples",
    # data.seq_len read as 20 ms frames per clip (None: one second)
    flops_per_unit=lambda objective, seq_len: objective.flops_per_sample(
        (seq_len or 50) * FRAME_HOP + FRAME_EXTRA),
    build=Wav2Vec2Objective,
))
