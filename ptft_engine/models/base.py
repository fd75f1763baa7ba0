"""What every model shares: its config, the checkpointing switch, parameter counts."""
from __future__ import annotations

from torch import nn

from ptft_engine.nn import MLP, LayerStack, SelfAttention, TransformerBlock
from ptft_engine.nn.block import set_gradient_checkpointing

# Tables that are only indexed (no matmul): they cost memory, not FLOPs.
_LOOKUP_SUFFIXES = ("position_embeddings.weight", "position_embeddings", "token_type_embeddings.weight", "cls_token")


def layer_norm_blocks(c, *, pre_norm: bool) -> LayerStack:
    """c.num_hidden_layers blocks with biased attention and MLP and two LayerNorms: BERT's
    (post-norm) or ViT's (pre-norm). `c` uses BertConfig / ViTConfig field names."""
    return LayerStack(
        TransformerBlock(
            attn=SelfAttention(c.hidden_size, c.num_attention_heads, bias=True, dropout=c.hidden_dropout_prob),
            mlp=MLP(c.hidden_size, c.intermediate_size, c.hidden_act, bias=True, dropout=c.hidden_dropout_prob),
            attn_norm=nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps),
            mlp_norm=nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps),
            pre_norm=pre_norm,
        )
        for _ in range(c.num_hidden_layers)
    )


class PtftModel(nn.Module):
    config: object

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute block activations in backward instead of storing them."""
        set_gradient_checkpointing(self, enabled)

    def num_parameters(self, exclude_position_embeddings: bool = False) -> int:
        """Unique parameters (tied weights counted once); optionally without learned
        position tables."""
        total = 0
        for name, p in self.named_parameters():
            if exclude_position_embeddings and name.endswith(("position_embeddings.weight", "position_embeddings")):
                continue
            total += p.numel()
        return total

    def matmul_parameters(self) -> int:
        """Parameters that take part in a matmul per token (the N of the 6*N FLOPs rule):
        lookup-only tables are left out, and so is the word table unless it is tied to
        the output projection (then it is a matmul)."""
        uses: dict[int, int] = {}
        for _, p in self.named_parameters(remove_duplicate=False):
            uses[id(p)] = uses.get(id(p), 0) + 1
        total = 0
        for name, p in self.named_parameters():
            if name.endswith(_LOOKUP_SUFFIXES):
                continue
            if name.endswith("word_embeddings.weight") and uses[id(p)] == 1:
                continue  # untied input table: looked up only
            total += p.numel()
        return total
