"""Causal decoder in GPT-2 or Llama layout (config.style).

GPT-2 layout (-> transformers GPT2LMHeadModel; Conv1D weights are our Linear weights
transposed):
  embeddings.word_embeddings / position_embeddings -> transformer.wte / transformer.wpe
  layers.{i}.attn_norm / mlp_norm       -> transformer.h.{i}.ln_1 / ln_2
  layers.{i}.attn.qkv_proj ([q; k; v])  -> transformer.h.{i}.attn.c_attn (weight.T)
  layers.{i}.attn.o_proj                -> transformer.h.{i}.attn.c_proj (weight.T)
  layers.{i}.mlp.fc_in / fc_out         -> transformer.h.{i}.mlp.c_fc / c_proj (weight.T)
  final_norm                            -> transformer.ln_f
  lm_head.weight is word_embeddings.weight (tied; listed once) -> lm_head (tied)
Llama layout (-> LlamaForCausalLM, pure renaming; RoPE uses HF's rotate_half form):
  embeddings.word_embeddings -> model.embed_tokens
  layers.{i}.attn_norm / mlp_norm -> model.layers.{i}.input_layernorm / post_attention_layernorm
  layers.{i}.attn.{q,k,v,o}_proj  -> model.layers.{i}.self_attn.{q,k,v,o}_proj
  layers.{i}.mlp.{gate,up,down}_proj -> model.layers.{i}.mlp.<same>
  final_norm -> model.norm;  lm_head (when untied) -> lm_head
"""
from __future__ import annotations

import torch

from ptft_engine.models.base import PtftModel
from ptft_engine.models.config import DecoderConfig
from ptft_engine.nn import (
    MLP,
    LayerStack,
    Linear,
    RotaryEmbedding,
    SelfAttention,
    SwiGLU,
    TiedLinear,
    TokenEmbeddings,
    TransformerBlock,
    init_std,
    make_norm,
)
from ptft_engine.nn.embeddings import default_positions


class CausalDecoder(PtftModel):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        with init_std(config.initializer_range, num_layers=config.num_hidden_layers):
            self._build(config)
        self.set_gradient_checkpointing(config.gradient_checkpointing)

    def _build(self, c: DecoderConfig) -> None:
        gpt2 = c.style == "gpt2"
        norm = "layernorm" if gpt2 else "rmsnorm"
        self.embeddings = TokenEmbeddings(
            c.vocab_size, c.hidden_size, c.max_position_embeddings if gpt2 else 0, 0, dropout=c.hidden_dropout_prob,
        )
        self.rotary = None if gpt2 else RotaryEmbedding(c.hidden_size // c.num_attention_heads, c.rope_theta)

        def ffn():
            if gpt2:
                return MLP(c.hidden_size, c.ffn_size, c.act, bias=True, dropout=c.hidden_dropout_prob)
            return SwiGLU(c.hidden_size, c.ffn_size, c.act, bias=False, dropout=c.hidden_dropout_prob)

        self.layers = LayerStack(
            TransformerBlock(
                attn=SelfAttention(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, bias=gpt2,
                                   fused_qkv=gpt2, dropout=c.hidden_dropout_prob),
                mlp=ffn(),
                attn_norm=make_norm(norm, c.hidden_size, c.layer_norm_eps),
                mlp_norm=make_norm(norm, c.hidden_size, c.layer_norm_eps),
                pre_norm=True,
            )
            for _ in range(c.num_hidden_layers)
        )
        self.final_norm = make_norm(norm, c.hidden_size, c.layer_norm_eps)
        self.lm_head = (TiedLinear(self.embeddings.word_embeddings.weight) if c.tie_word_embeddings
                        else Linear(c.hidden_size, c.vocab_size, bias=False))

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, S) ids -> (B, S, D) final-normed hidden states; token t sees tokens <= t
        (of its own document when segment_ids packs several into a row)."""
        if position_ids is None:
            position_ids = default_positions(input_ids, segment_ids)
        x = self.embeddings(input_ids, position_ids if self.rotary is None else None)
        rotary = None if self.rotary is None else self.rotary(position_ids, x.dtype)
        mask = None if attention_mask is None else attention_mask.bool()
        x = self.layers(x, causal=True, attention_mask=mask, segment_ids=segment_ids, rotary=rotary)
        return self.final_norm(x)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def forward(self, input_ids, attention_mask=None, segment_ids=None, position_ids=None):
        """Next-token logits (B, S, vocab)."""
        return self.lm_logits(self.encode(input_ids, attention_mask, segment_ids, position_ids))
