"""Learnable synthetic content the objectives' `synthetic_batch` functions draw from, so
losses fall on it: token sequences are arithmetic progressions mod the vocabulary;
images are one of a few fixed templates plus noise. `cfg` is a SyntheticDataConfig."""
from __future__ import annotations

import torch

N_TEMPLATES = 16


def token_progressions(cfg, g: torch.Generator) -> torch.Tensor:
    start = torch.randint(0, cfg.vocab_size - 1, (cfg.batch_size, 1), generator=g)
    stride = torch.randint(1, 4, (cfg.batch_size, 1), generator=g)
    pos = torch.arange(cfg.seq_len).unsqueeze(0)
    return (start + stride * pos) % (cfg.vocab_size - 1)  # (B, S); the last id stays free for [MASK]


def token_batch(cfg, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Unmasked token rows: what a causal LM (or an objective without a spec) trains on."""
    ids = token_progressions(cfg, g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def template_images(cfg, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) noisy images and (B,) the template each shows."""
    templates = torch.randn(N_TEMPLATES, cfg.channels, cfg.image_size, cfg.image_size,
                            generator=torch.Generator().manual_seed(cfg.seed))
    ids = torch.randint(0, N_TEMPLATES, (cfg.batch_size,), generator=g)
    noise = 0.3 * torch.randn(cfg.batch_size, cfg.channels, cfg.image_size, cfg.image_size, generator=g)
    return templates[ids] + noise, ids
