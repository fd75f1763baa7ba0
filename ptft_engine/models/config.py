"""Typed model configs: one pydantic class per architecture, a union on `arch`.

Unknown keys are errors (extra="forbid"); `parse_model_config` turns pydantic's
report into one line naming the key. Encoder field names are BertConfig's, so an
export writes them through unchanged; the decoder uses the Llama/BERT names
(hidden_size, num_hidden_layers ...) that the GPT-2 export renames (n_embd, n_layer ...).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from ptft_engine.errors import ConfigError, format_validation_error  # noqa: F401 (re-exported for models users)

Activation = Literal["gelu", "gelu_new", "gelu_pytorch_tanh", "quick_gelu", "relu", "silu"]
PosInt = Annotated[int, Field(gt=0)]
Prob = Annotated[float, Field(ge=0.0, lt=1.0)]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)

    initializer_range: Annotated[float, Field(gt=0)] = 0.02
    # Recompute each block's activations in backward (torch.utils.checkpoint, non-reentrant).
    gradient_checkpointing: bool = False

    def _check_heads(self, hidden: int, heads: int) -> None:
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} must be divisible by num_attention_heads {heads}")


class EncoderConfig(_Base):
    """BERT-like bidirectional encoder; every field has BertConfig's name and meaning."""

    arch: Literal["encoder"] = "encoder"
    vocab_size: PosInt = 30522
    hidden_size: PosInt = 768
    num_hidden_layers: PosInt = 12
    num_attention_heads: PosInt = 12
    intermediate_size: PosInt = 3072
    hidden_act: Activation = "gelu"
    hidden_dropout_prob: Prob = 0.1
    # kept so the BertConfig mapping is 1:1; ops.attention has no dropout on probabilities
    attention_probs_dropout_prob: float = 0.0
    max_position_embeddings: PosInt = 512
    type_vocab_size: Annotated[int, Field(ge=0)] = 2
    layer_norm_eps: Annotated[float, Field(gt=0)] = 1e-12
    pad_token_id: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _valid(self):
        self._check_heads(self.hidden_size, self.num_attention_heads)
        if self.attention_probs_dropout_prob != 0.0:
            raise ValueError("attention_probs_dropout_prob: must be 0.0 "
                             "(ops.attention applies no dropout to probabilities)")
        return self


class DecoderConfig(_Base):
    """Causal decoder. style="gpt2": pre-LN, learned positions, GELU MLP, biases, fused qkv.
    style="llama": RMSNorm, RoPE, SwiGLU, no biases, optional grouped-query attention."""

    arch: Literal["decoder"] = "decoder"
    style: Literal["gpt2", "llama"] = "gpt2"
    vocab_size: PosInt = 50257
    hidden_size: PosInt = 768
    num_hidden_layers: PosInt = 12
    num_attention_heads: PosInt = 12
    num_key_value_heads: PosInt | None = None  # llama only; None = num_attention_heads
    intermediate_size: PosInt | None = None  # None: 4*d (gpt2) or Llama's 8/3*d rounded to 256
    hidden_act: Activation | None = None  # None: gelu_new (gpt2) or silu (llama)
    max_position_embeddings: PosInt = 1024
    layer_norm_eps: Annotated[float, Field(gt=0)] = 1e-5
    rope_theta: Annotated[float, Field(gt=0)] = 10000.0
    hidden_dropout_prob: Prob = 0.0
    tie_word_embeddings: bool = True

    @model_validator(mode="after")
    def _valid(self):
        self._check_heads(self.hidden_size, self.num_attention_heads)
        kv = self.num_key_value_heads
        if kv is not None:
            if self.style == "gpt2" and kv != self.num_attention_heads:
                raise ValueError("num_key_value_heads: grouped-query attention needs style=llama")
            if self.num_attention_heads % kv:
                raise ValueError(f"num_key_value_heads {kv} must divide num_attention_heads {self.num_attention_heads}")
        if self.style == "llama" and (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("hidden_size / num_attention_heads must be even for rotary embeddings (style=llama)")
        return self

    @property
    def ffn_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        if self.style == "gpt2":
            return 4 * self.hidden_size
        return 256 * math.ceil(int(8 * self.hidden_size / 3) / 256)

    @property
    def act(self) -> str:
        return self.hidden_act or ("gelu_new" if self.style == "gpt2" else "silu")


class ViTConfig(_Base):
    """ViT image encoder (pre-LN, [CLS] token, learned positions); HF ViTConfig names."""

    arch: Literal["vit"] = "vit"
    image_size: PosInt = 224
    patch_size: PosInt = 16
    num_channels: PosInt = 3
    hidden_size: PosInt = 768
    num_hidden_layers: PosInt = 12
    num_attention_heads: PosInt = 12
    intermediate_size: PosInt = 3072
    hidden_act: Activation = "gelu"
    hidden_dropout_prob: Prob = 0.0
    layer_norm_eps: Annotated[float, Field(gt=0)] = 1e-12
    pooling: Literal["cls", "mean"] = "cls"

    @model_validator(mode="after")
    def _valid(self):
        self._check_heads(self.hidden_size, self.num_attention_heads)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        return self


class DualEncoderConfig(_Base):
    """CLIP-style: ViT image tower + BERT-like text tower, linear projections to a shared
    space, and a learnable log-parameterised logit scale clamped at logit_scale_max."""

    arch: Literal["dual_encoder"] = "dual_encoder"
    vision: ViTConfig = Field(default_factory=ViTConfig)
    text: EncoderConfig = Field(default_factory=EncoderConfig)
    projection_dim: PosInt = 512
    text_pooling: Literal["cls", "mean"] = "cls"
    logit_scale_init: float = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
    logit_scale_max: Annotated[float, Field(gt=0)] = 100.0

    @model_validator(mode="after")
    def _valid(self):
        # one switch for both towers
        if self.gradient_checkpointing:
            self.vision.gradient_checkpointing = self.text.gradient_checkpointing = True
        return self


class Wav2Vec2Config(_Base):
    """wav2vec 2.0 speech encoder: conv feature encoder over raw 16 kHz audio, feature
    projection, convolutional relative positions, Transformer context network. Field
    names are transformers' Wav2Vec2Config names, so an export writes them through.
    Defaults are wav2vec2-base (Baevski et al. 2020): 7 convs of 512 channels, kernels
    10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2 (320 samples = 20 ms per frame, 25 ms field)."""

    arch: Literal["wav2vec2"] = "wav2vec2"
    hidden_size: PosInt = 768
    num_hidden_layers: PosInt = 12
    num_attention_heads: PosInt = 12
    intermediate_size: PosInt = 3072
    hidden_act: Activation = "gelu"
    hidden_dropout: Prob = 0.1
    feat_proj_dropout: Prob = 0.1
    layer_norm_eps: Annotated[float, Field(gt=0)] = 1e-5
    # "group": GroupNorm in the first conv only (wav2vec2-base); "layer": LayerNorm after every conv (large/lv60)
    feat_extract_norm: Literal["group", "layer"] = "group"
    feat_extract_activation: Activation = "gelu"
    conv_dim: list[PosInt] = Field(default_factory=lambda: [512] * 7)
    conv_kernel: list[PosInt] = Field(default_factory=lambda: [10, 3, 3, 3, 3, 2, 2])
    conv_stride: list[PosInt] = Field(default_factory=lambda: [5, 2, 2, 2, 2, 2, 2])
    conv_bias: bool = False
    num_conv_pos_embeddings: PosInt = 128
    num_conv_pos_embedding_groups: PosInt = 16
    # True: pre-norm blocks and a final LayerNorm (large/lv60); False: post-norm blocks (base)
    do_stable_layer_norm: bool = False

    @model_validator(mode="after")
    def _valid(self):
        self._check_heads(self.hidden_size, self.num_attention_heads)
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError(f"conv_dim: conv_dim, conv_kernel and conv_stride need one entry per conv layer, got "
                             f"{len(self.conv_dim)}, {len(self.conv_kernel)} and {len(self.conv_stride)}")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(f"num_conv_pos_embedding_groups: {self.num_conv_pos_embedding_groups} must divide "
                             f"hidden_size {self.hidden_size}")
        return self

    @property
    def samples_per_frame(self) -> int:
        """Hop between frames in audio samples (320 for base: 20 ms at 16 kHz)."""
        return math.prod(self.conv_stride)

    def num_frames(self, num_samples: int) -> int:
        """Frames the feature encoder makes of `num_samples` samples (0 if too short)."""
        n = num_samples
        for k, s in zip(self.conv_kernel, self.conv_stride):
            n = (n - k) // s + 1 if n >= k else 0
        return n


ModelConfig = Annotated[EncoderConfig | DecoderConfig | ViTConfig | DualEncoderConfig | Wav2Vec2Config,
                        Field(discriminator="arch")]
ARCHS = ("encoder", "decoder", "vit", "dual_encoder", "wav2vec2")
_CONFIG_CLASSES = (EncoderConfig, DecoderConfig, ViTConfig, DualEncoderConfig, Wav2Vec2Config)
_adapter = TypeAdapter(ModelConfig)


AnyModelConfig = EncoderConfig | DecoderConfig | ViTConfig | DualEncoderConfig | Wav2Vec2Config


def parse_model_config(data: Any, prefix: str = "model") -> AnyModelConfig:
    """dict (or an already-built config) -> typed config; ConfigError with one line otherwise."""
    if isinstance(data, _CONFIG_CLASSES):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of model settings, got {type(data).__name__}")
    if "arch" not in data:  # pydantic cannot say which tags the union expects
        raise ConfigError(f"{prefix}.arch: missing; choose one of {', '.join(ARCHS)}")
    try:
        return _adapter.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix, tree=data)) from None


def load_model_config(path: str | Path) -> AnyModelConfig:
    """Read a model preset (configs/models/*.yaml)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        why = f"{exc.__class__.__name__}: {exc}".replace("\n", " ")
        raise ConfigError(f"{path}: cannot read model config ({why})") from None
    return parse_model_config(data, prefix=path.name)
