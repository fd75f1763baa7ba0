"""wav2vec 2.0 speech encoder (Baevski et al. 2020): raw audio -> conv features -> Transformer.

Parameter layout (-> transformers Wav2Vec2Model, a renaming; export/hf_wav2vec2.py):
  feature_encoder.convs.{i}.conv / .norm -> feature_extractor.conv_layers.{i}.conv / .layer_norm
  feature_projection.norm / .proj        -> feature_projection.layer_norm / .projection
  feature_projection.mask_embed          -> masked_spec_embed
  pos_conv.weight_g / weight_v / bias    -> encoder.pos_conv_embed.conv.{parametrizations.weight.original0
                                            / parametrizations.weight.original1 / bias}
  encoder_norm                           -> encoder.layer_norm
  layers.{i}.attn.{q,k,v}_proj / o_proj  -> encoder.layers.{i}.attention.{q,k,v}_proj / out_proj
  layers.{i}.attn_norm / mlp_norm        -> encoder.layers.{i}.layer_norm / final_layer_norm
  layers.{i}.mlp.fc_in / fc_out          -> encoder.layers.{i}.feed_forward.intermediate_dense / output_dense

Attention is `ptft_engine.ops.attention` (through nn.SelfAttention) with a key padding mask.
Dropout on attention probabilities, the FFN's inner dropout and LayerDrop are not
implemented (an export sets them to 0). The quantiser and the contrastive projections
belong to the objective (objectives/wav2vec2.py), as Wav2Vec2ForPreTraining holds them
outside Wav2Vec2Model.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ptft_engine.models.base import PtftModel
from ptft_engine.models.config import Wav2Vec2Config
from ptft_engine.nn import MLP, LayerStack, SelfAttention, TransformerBlock, activation, init_std


class Wav2Vec2Output(NamedTuple):
    hidden: torch.Tensor              # (B, T, D) context network output
    features: torch.Tensor            # (B, T, C) LayerNorm'ed conv features: what the quantiser reads
    frame_mask: torch.Tensor | None   # (B, T) bool, True = real frame; None without an attention mask


class KaimingConv1d(nn.Conv1d):
    """Conv1d initialised as transformers / fairseq initialise the feature encoder; done in
    reset_parameters (the constructor) so DeepSpeed's zero.Init sees initialised weights."""

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.weight)
        if self.bias is not None:
            k = math.sqrt(self.groups / (self.in_channels * self.kernel_size[0]))
            self.bias.uniform_(-k, k)


class ConvLayer(nn.Module):
    """conv -> (GroupNorm per channel | LayerNorm over channels | nothing) -> activation."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, bias: bool, norm: str | None, act: str):
        super().__init__()
        self.conv = KaimingConv1d(c_in, c_out, kernel, stride=stride, bias=bias)
        self.kind = norm
        if norm == "group":  # one group per channel: normalises each channel over time
            self.norm = nn.GroupNorm(c_out, c_out, affine=True)
        elif norm == "layer":
            self.norm = nn.LayerNorm(c_out)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, L) -> (B, C_out, L')
        x = self.conv(x)
        if self.kind == "group":
            x = self.norm(x)
        elif self.kind == "layer":
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.act(x)


class FeatureEncoder(nn.Module):
    def __init__(self, c: Wav2Vec2Config):
        super().__init__()
        dims = [1] + list(c.conv_dim)
        norms = ["group"] + [None] * (len(c.conv_dim) - 1) if c.feat_extract_norm == "group" else \
            ["layer"] * len(c.conv_dim)
        self.convs = nn.ModuleList(
            ConvLayer(dims[i], dims[i + 1], c.conv_kernel[i], c.conv_stride[i], c.conv_bias, norms[i],
                      c.feat_extract_activation)
            for i in range(len(c.conv_dim)))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = audio[:, None]  # (B, 1, L)
        for conv in self.convs:
            x = conv(x)
        return x.transpose(1, 2)  # (B, T, C)


class FeatureProjection(nn.Module):
    """LayerNorm -> Linear -> dropout, then masked frames replaced by the learned mask
    embedding. The embedding lives here, not on the model, so DeepSpeed ZeRO-3 gathers it
    with this module's call (a parameter used directly in a method is never gathered)."""

    def __init__(self, c: Wav2Vec2Config):
        super().__init__()
        self.norm = nn.LayerNorm(c.conv_dim[-1], eps=c.layer_norm_eps)
        self.proj = nn.Linear(c.conv_dim[-1], c.hidden_size)  # torch's default init, as transformers uses here
        self.dropout = nn.Dropout(c.feat_proj_dropout)
        self.mask_embed = nn.Parameter(torch.rand(c.hidden_size))  # uniform [0, 1), as transformers

    def forward(self, features: torch.Tensor, mask_time_indices: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.norm(features)
        x = self.dropout(self.proj(normed))
        if mask_time_indices is not None:
            x = torch.where(mask_time_indices[..., None], self.mask_embed.to(x.dtype), x)
        return x, normed


class PositionalConv(nn.Module):
    """Grouped conv over time with weight normalisation (norm over all but the kernel axis,
    torch's weight_norm(dim=2)); g and v are plain parameters so ZeRO-3 can shard them."""

    def __init__(self, c: Wav2Vec2Config):
        super().__init__()
        d, k, groups = c.hidden_size, c.num_conv_pos_embeddings, c.num_conv_pos_embedding_groups
        self.groups, self.padding = groups, k // 2
        self.trim = 1 if k % 2 == 0 else 0  # an even kernel makes one frame too many
        v = torch.randn(d, d // groups, k) * (2 * math.sqrt(1 / (k * d)))  # fairseq's init
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))  # (1, 1, K): starts with weight = v
        self.bias = nn.Parameter(torch.zeros(d))
        self.act = activation(c.feat_extract_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        y = F.conv1d(x.transpose(1, 2), weight, self.bias, padding=self.padding, groups=self.groups)
        if self.trim:
            y = y[:, :, :-self.trim]
        return self.act(y).transpose(1, 2)


class Wav2Vec2(PtftModel):
    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.config = c = config
        self.feature_encoder = FeatureEncoder(c)
        self.feature_projection = FeatureProjection(c)
        self.pos_conv = PositionalConv(c)
        self.encoder_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout)
        with init_std(c.initializer_range):
            self.layers = LayerStack(
                TransformerBlock(
                    attn=SelfAttention(c.hidden_size, c.num_attention_heads, bias=True, dropout=c.hidden_dropout),
                    mlp=MLP(c.hidden_size, c.intermediate_size, c.hidden_act, bias=True, dropout=c.hidden_dropout),
                    attn_norm=nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps),
                    mlp_norm=nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps),
                    pre_norm=c.do_stable_layer_norm,
                )
                for _ in range(c.num_hidden_layers))
        self.set_gradient_checkpointing(c.gradient_checkpointing)

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """(B,) audio lengths in samples -> (B,) frame counts (conv arithmetic, floor)."""
        n = sample_lengths.long()
        for k, s in zip(self.config.conv_kernel, self.config.conv_stride):
            n = torch.div(n - k, s, rounding_mode="floor") + 1
        return n.clamp(min=0)

    def frame_mask(self, attention_mask: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(B, L) sample mask (True/1 = real, right-padded) -> (B, T) frame mask."""
        lengths = self.frame_lengths(attention_mask.long().sum(-1))
        return torch.arange(num_frames, device=attention_mask.device)[None, :] < lengths[:, None]

    def encode(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
               mask_time_indices: torch.Tensor | None = None) -> Wav2Vec2Output:
        """(B, L) float audio -> Wav2Vec2Output. mask_time_indices (B, T) bool: frames
        replaced by the learned mask embedding before the context network."""
        features = self.feature_encoder(input_values)  # (B, T, C)
        frames = None if attention_mask is None else self.frame_mask(attention_mask, features.shape[1])
        x, normed = self.feature_projection(features, mask_time_indices)  # (B, T, D), (B, T, C)
        if frames is not None:
            x = x * frames[..., None].to(x.dtype)  # padded frames enter the positional conv as zeros
        x = x + self.pos_conv(x)
        if not self.config.do_stable_layer_norm:
            x = self.encoder_norm(x)
        x = self.dropout(x)
        x = self.layers(x, attention_mask=frames)  # True = a real frame, attended
        if self.config.do_stable_layer_norm:
            x = self.encoder_norm(x)
        return Wav2Vec2Output(x, normed, frames)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) audio -> (B, T, D) hidden states (Wav2Vec2Model's last_hidden_state)."""
        return self.encode(input_values, attention_mask).hidden
