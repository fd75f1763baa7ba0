import pytest
import torch

from ptft_engine.models import DecoderConfig, EncoderConfig, build_model

VOCAB = 97


def tiny_encoder():
    cfg = EncoderConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40, hidden_dropout_prob=0.0)
    return build_model(cfg).eval()


def tiny_decoder(style="gpt2", tie=True, kv_heads=2):
    """4 query heads; a llama shares each k/v head among 4 / kv_heads of them (grouped-query)."""
    cfg = DecoderConfig(style=style, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        max_position_embeddings=40, tie_word_embeddings=tie,
                        num_key_value_heads=kv_heads if style == "llama" else None)
    return build_model(cfg).eval()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # a padded row: only real positions are compared
    return ids, mask
