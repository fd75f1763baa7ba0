"""BERT-like bidirectional encoder with a masked-LM head.

Parameter layout (-> transformers BertForMaskedLM name, a pure renaming):
  embeddings.word_embeddings / position_embeddings / token_type_embeddings
                                    -> bert.embeddings.<same>
  embeddings.norm                   -> bert.embeddings.LayerNorm
  layers.{i}.attn.{q,k,v}_proj      -> bert.encoder.layer.{i}.attention.self.{query,key,value}
  layers.{i}.attn.o_proj            -> bert.encoder.layer.{i}.attention.output.dense
  layers.{i}.attn_norm              -> bert.encoder.layer.{i}.attention.output.LayerNorm
  layers.{i}.mlp.fc_in              -> bert.encoder.layer.{i}.intermediate.dense
  layers.{i}.mlp.fc_out             -> bert.encoder.layer.{i}.output.dense
  layers.{i}.mlp_norm               -> bert.encoder.layer.{i}.output.LayerNorm
  mlm_head.dense / mlm_head.norm    -> cls.predictions.transform.dense / .LayerNorm
  mlm_head.bias                     -> cls.predictions.bias (= cls.predictions.decoder.bias)
  mlm_head.decoder.weight is embeddings.word_embeddings.weight (tied; listed once)
"""
from __future__ import annotations

import torch
from torch import nn

from ptft_engine.models.base import PtftModel, layer_norm_blocks
from ptft_engine.models.config import EncoderConfig
from ptft_engine.nn import Linear, TiedLinear, TokenEmbeddings, activation, init_std
from ptft_engine.nn.embeddings import positions_from_segments


class MaskedLMHead(nn.Module):
    """dense -> act -> LayerNorm -> (tied) vocabulary projection + bias."""

    def __init__(self, hidden_size: int, vocab_size: int, word_embeddings: nn.Parameter, act: str, eps: float):
        # vocab_size comes separately: under zero.Init the shared table is already a shard
        super().__init__()
        self.dense = Linear(hidden_size, hidden_size)
        self.act = activation(act)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.decoder = TiedLinear(word_embeddings)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden)))) + self.bias


class TransformerEncoder(PtftModel):
    def __init__(self, config: EncoderConfig, with_mlm_head: bool = True):
        super().__init__()
        self.config = config
        with init_std(config.initializer_range):
            self._build(config, with_mlm_head)
        self.set_gradient_checkpointing(config.gradient_checkpointing)

    def _build(self, c: EncoderConfig, with_mlm_head: bool) -> None:
        self.embeddings = TokenEmbeddings(
            c.vocab_size, c.hidden_size, c.max_position_embeddings, c.type_vocab_size,
            norm=nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps), dropout=c.hidden_dropout_prob,
        )
        self.layers = layer_norm_blocks(c, pre_norm=False)
        self.mlm_head = None
        if with_mlm_head:
            self.mlm_head = MaskedLMHead(c.hidden_size, c.vocab_size, self.embeddings.word_embeddings.weight,
                                         c.hidden_act, c.layer_norm_eps)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, S) ids -> (B, S, D) hidden states.

        attention_mask: bool/int (B, S), True/1 = real token (HF convention).
        segment_ids: (B, S) ids of packed documents; tokens attend within their own
        document and positions restart at each document.
        """
        if position_ids is None and segment_ids is not None:
            position_ids = positions_from_segments(segment_ids)
        x = self.embeddings(input_ids, position_ids, token_type_ids)
        mask = None if attention_mask is None else attention_mask.bool()
        return self.layers(x, attention_mask=mask, segment_ids=segment_ids)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., vocab); apply to selected positions only to save the big matmul."""
        if self.mlm_head is None:
            raise RuntimeError("this encoder was built without an MLM head")
        return self.mlm_head(hidden)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, segment_ids=None, position_ids=None):
        """Full MLM logits (B, S, vocab), as BertForMaskedLM returns them."""
        return self.mlm_logits(self.encode(input_ids, attention_mask, token_type_ids, segment_ids, position_ids))
