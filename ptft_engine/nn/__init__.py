"""Layers shared by the models: embeddings, attention (via ops.attention), MLPs, norms, blocks."""
from ptft_engine.nn.attention import SelfAttention
from ptft_engine.nn.block import LayerStack, TransformerBlock, set_gradient_checkpointing
from ptft_engine.nn.embeddings import (
    PatchEmbedding,
    RotaryEmbedding,
    TiedLinear,
    TokenEmbeddings,
    apply_rotary,
    positions_from_segments,
)
from ptft_engine.nn.init import Conv2d, Embedding, Linear, ResidualLinear, init_std
from ptft_engine.nn.mlp import ACTIVATIONS, MLP, SwiGLU, activation
from ptft_engine.nn.norms import RMSNorm, make_norm

__all__ = [
    "ACTIVATIONS", "MLP", "LayerStack", "PatchEmbedding", "RMSNorm", "RotaryEmbedding", "SelfAttention",
    "SwiGLU", "TiedLinear", "TokenEmbeddings", "TransformerBlock", "activation", "apply_rotary", "init_std",
    "Conv2d", "Embedding", "Linear", "ResidualLinear",
    "make_norm", "positions_from_segments", "set_gradient_checkpointing",
]
