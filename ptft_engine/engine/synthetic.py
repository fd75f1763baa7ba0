"""A deterministic synthetic batch stream with the data package's loader protocol.

Batches are a pure function of (seed, epoch, global batch index), and the stream's
position is a JSON-serialisable state, so it resumes exactly mid-epoch; every rank gets
the same number of batches. Text has learnable structure (arithmetic progressions mod
the vocabulary) so a model's loss falls on it.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

from ptft_engine.config.schema import SyntheticDataConfig


class SyntheticLoader:
    def __init__(self, cfg: SyntheticDataConfig, *, rank: int = 0, world_size: int = 1, epoch: int = 0):
        self.cfg, self.rank, self.world_size, self.epoch = cfg, rank, world_size, epoch
        self.batches_per_epoch = max(1, cfg.num_samples // (cfg.batch_size * world_size))
        self.position = 0  # batches this rank has handed out in this epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("epoch", self.epoch) != self.epoch:
            raise ValueError(f"data state is for epoch {state['epoch']}, loader is at epoch {self.epoch}")
        self.position = int(state["position"])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while self.position < self.batches_per_epoch:
            global_batch = self.position * self.world_size + self.rank
            self.position += 1
            yield self.make_batch(global_batch)

    def make_batch(self, global_batch: int) -> dict[str, torch.Tensor]:
        c = self.cfg
        g = torch.Generator().manual_seed((c.seed * 1_000_003 + self.epoch) * 1_000_003 + global_batch)
        out: dict[str, torch.Tensor] = {}
        if c.kind in ("text", "image_text"):
            start = torch.randint(0, c.vocab_size, (c.batch_size, 1), generator=g)
            stride = torch.randint(1, 4, (c.batch_size, 1), generator=g)
            pos = torch.arange(c.seq_len).unsqueeze(0)
            out["input_ids"] = (start + stride * pos) % c.vocab_size  # (B, S)
            out["attention_mask"] = torch.ones(c.batch_size, c.seq_len, dtype=torch.long)
        if c.kind in ("image", "image_text"):
            # images are a class-like template plus noise, so contrastive views share content
            template = torch.randn(8, c.channels, c.image_size, c.image_size, generator=g)
            ids = torch.randint(0, 8, (c.batch_size,), generator=g)
            noise = 0.3 * torch.randn(c.batch_size, c.channels, c.image_size, c.image_size, generator=g)
            out["pixel_values"] = template[ids] + noise  # (B, C, H, W)
        return out
