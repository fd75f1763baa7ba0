"""Token, position, patch and rotary embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptft_engine.nn.init import Conv2d, Embedding, current_std


def positions_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """Position of each token inside its own document of a packed row.

    segment_ids (B, S) -> (B, S) int64, restarting at 0 wherever the segment id
    changes, so a packed row sees the same positions as its documents alone.
    """
    B, S = segment_ids.shape
    idx = torch.arange(S, device=segment_ids.device).expand(B, S)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    # index of the most recent segment start at or before each position
    last_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - last_start


def default_positions(input_ids: torch.Tensor, segment_ids: torch.Tensor | None) -> torch.Tensor:
    if segment_ids is not None:
        return positions_from_segments(segment_ids)
    B, S = input_ids.shape
    return torch.arange(S, device=input_ids.device).expand(B, S)


class TokenEmbeddings(nn.Module):
    """word (+ learned position) (+ token type) -> optional LayerNorm -> dropout."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        max_position_embeddings: int = 0,
        type_vocab_size: int = 0,
        norm: nn.Module | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.word_embeddings = Embedding(vocab_size, hidden_size)
        self.position_embeddings = Embedding(max_position_embeddings, hidden_size) if max_position_embeddings else None
        self.token_type_embeddings = Embedding(type_vocab_size, hidden_size) if type_vocab_size else None
        self.norm = norm
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.word_embeddings(input_ids)
        if self.position_embeddings is not None:
            if position_ids is None:
                position_ids = default_positions(input_ids, None)
            if input_ids.shape[1] > self.position_embeddings.num_embeddings:
                raise ValueError(
                    f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                    f"{self.position_embeddings.num_embeddings}"
                )
            x = x + self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type_embeddings(token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


class PatchEmbedding(nn.Module):
    """Image -> patch tokens with a [CLS] token and learned positions (ViT)."""

    def __init__(self, image_size: int, patch_size: int, num_channels: int, hidden_size: int, dropout: float = 0.0):
        super().__init__()
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_proj = Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.num_patches + 1, hidden_size))
        with torch.no_grad():
            self.cls_token.normal_(0.0, current_std())
            self.position_embeddings.normal_(0.0, current_std())
        self.dropout = nn.Dropout(dropout)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        expected = (self.num_channels, self.image_size, self.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must be (B, {self.num_channels}, {self.image_size}, {self.image_size}), "
                f"got {tuple(pixel_values.shape)}"
            )
        x = self.patch_proj(pixel_values.to(self.patch_proj.weight.dtype))  # (B, D, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.position_embeddings  # (B, N+1, D)
        return self.dropout(x)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding in the half-split ("rotate_half") convention of HF Llama."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head dim, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, S) -> cos, sin (B, 1, S, head_dim), computed in fp32.

        Frequencies are recomputed each call (cheap) rather than kept in a buffer, so
        meta-device construction and ZeRO-3 partitioning have nothing to handle.
        """
        device = position_ids.device
        exponents = torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32) / self.head_dim
        inv_freq = 1.0 / (self.theta ** exponents)  # (D/2,)
        freqs = position_ids.float()[..., None] * inv_freq  # (B, S, D/2)
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, S, D)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, S, D) rotated by cos/sin (B, 1, S, D)."""
    return x * cos + _rotate_half(x) * sin


class TiedLinear(nn.Module):
    """Output projection that reuses an embedding table (weight tying).

    The shared Parameter is registered here as well, so DeepSpeed ZeRO-3 gathers it when
    this module runs (a bare F.linear on another module's weight would see an empty
    shard). named_parameters() still lists it once, under the embedding's name.
    """

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)
