"""A deterministic synthetic batch stream with the data package's loader protocol.

Batches are a pure function of (seed, epoch, global batch index), and the stream's
position is a JSON-serialisable state, so it resumes exactly mid-epoch; every rank gets
the same number of batches. The content is learnable, so losses fall on it: token
sequences are arithmetic progressions mod the vocabulary; images are one of a few
templates plus noise (SimCLR views: two noisy copies; CLIP texts name the template).
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

from ptft_engine.config.schema import SyntheticDataConfig
from ptft_engine.labels import IGNORE_INDEX
N_TEMPLATES = 16


class SyntheticLoader:
    def __init__(self, cfg: SyntheticDataConfig, *, objective: str | None = None, rank: int = 0,
                 world_size: int = 1, epoch: int = 0, split: str = "train"):
        self.cfg, self.objective, self.rank, self.world_size, self.epoch = cfg, objective, rank, world_size, epoch
        self.salt = {"train": 0, "eval": 7919}[split]  # held-out samples, same distribution
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
        g = torch.Generator().manual_seed(((c.seed + self.salt) * 1_000_003 + self.epoch) * 1_000_003 + global_batch)
        if self.objective == "simclr":
            images, _ = self._images(g)
            noise = 0.3 * torch.randn(images.shape, generator=g)
            return {"view1": images, "view2": images + noise}  # (B, C, H, W) each
        if self.objective == "clip":
            images, ids = self._images(g)
            # the caption spells the template id in a few tokens: learnable image ↔ text pairs
            pos = torch.arange(c.seq_len).unsqueeze(0)
            tokens = (ids.unsqueeze(1) * 3 + pos) % c.vocab_size  # (B, S)
            return {"pixel_values": images, "input_ids": tokens,
                    "attention_mask": torch.ones_like(tokens)}
        ids = self._progressions(g)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if self.objective == "mlm":
            selected = torch.rand(ids.shape, generator=g) < 0.15
            selected[:, 0] = True  # at least one target per row
            batch["labels"] = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
            batch["input_ids"] = torch.where(selected, torch.full_like(ids, c.vocab_size - 1), ids)
        return batch

    def _progressions(self, g: torch.Generator) -> torch.Tensor:
        c = self.cfg
        start = torch.randint(0, c.vocab_size - 1, (c.batch_size, 1), generator=g)
        stride = torch.randint(1, 4, (c.batch_size, 1), generator=g)
        pos = torch.arange(c.seq_len).unsqueeze(0)
        return (start + stride * pos) % (c.vocab_size - 1)  # (B, S); the last id stays free for [MASK]

    def _images(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        templates = torch.randn(N_TEMPLATES, c.channels, c.image_size, c.image_size,
                                generator=torch.Generator().manual_seed(c.seed))
        ids = torch.randint(0, N_TEMPLATES, (c.batch_size,), generator=g)
        noise = 0.3 * torch.randn(c.batch_size, c.channels, c.image_size, c.image_size, generator=g)
        return templates[ids] + noise, ids  # (B, C, H, W), (B,)
