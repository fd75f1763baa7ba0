"""Start-time checks: problems that would otherwise surface after training has run.

Each returns None or a one-line message naming the keys involved; the trainer runs them
on every rank before DeepSpeed starts and before anything is written, and all ranks agree
on the outcome (`agree`), so every rank stops with the same line.
"""
from __future__ import annotations

from typing import Any

import torch.distributed as dist

from ptft_engine.config.schema import RunConfig, SyntheticDataConfig


class StartCheckError(ValueError):
    """A config/data combination that cannot train; one line, caught before training."""


def _text_model(cfg: RunConfig) -> Any:
    model = cfg.model
    return getattr(model, "text", model)  # CLIP: the text tower


def model_fits_data(cfg: RunConfig, tokenizer_vocab: int | None) -> str | None:
    """Token ids and sequence positions must exist in the model's tables (else: an IndexError
    deep in the first step on the CPU, a device-side assert on a GPU)."""
    model = _text_model(cfg)
    if model is None:  # a custom objective (tests, benchmarks): nothing to compare
        return None
    if isinstance(cfg.data, SyntheticDataConfig):
        data_vocab, source = cfg.data.vocab_size, "data.vocab_size"
    else:
        data_vocab, source = tokenizer_vocab, f"tokenizer {getattr(cfg.data, 'tokenizer', '')}"
    vocab = getattr(model, "vocab_size", None)
    if vocab is not None and data_vocab is not None and data_vocab > vocab:
        return f"{source} has {data_vocab} tokens but model vocab_size is {vocab}: set model.vocab_size >= {data_vocab}"
    positions = getattr(model, "max_position_embeddings", None)
    seq_len = getattr(cfg.data, "seq_len", None)
    if positions is not None and seq_len is not None and seq_len > positions:
        return f"data.seq_len {seq_len} > model max_position_embeddings {positions}: shorten data.seq_len"
    return None


def eval_fits(cfg: RunConfig, eval_loader) -> str | None:
    """Evaluation must have at least one global batch (checked when it would run)."""
    if eval_loader is None or not cfg.run.eval_every:
        return None
    try:
        n = len(eval_loader)
    except TypeError:
        return None
    if n < 1:
        return (f"the eval set cannot fill one global batch ({getattr(cfg.data, 'eval_shards', 'eval')}); "
                "add eval data, lower data.batch_size, or set run.eval_every=0")
    return None


def agree(error: str | None, rank: int, world_size: int) -> None:
    """Collective: raise StartCheckError on every rank if any rank found a problem."""
    errors = [error]
    if world_size > 1:
        errors = [None] * world_size
        dist.all_gather_object(errors, error)
    for r, msg in enumerate(errors):
        if msg is not None:
            raise StartCheckError(msg if world_size == 1 or r == rank or all(e == msg for e in errors)
                                  else f"rank {r}: {msg}")
