"""A deterministic synthetic batch stream with the data package's loader protocol.

Batches are a pure function of (seed, epoch, global batch index), and the stream's
position is a JSON-serialisable state, so it resumes exactly mid-epoch; every rank gets
the same number of batches. What a batch holds is the objective spec's `synthetic_batch`
(plain token rows without a spec, e.g. for a custom objective).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ptft_engine.config.schema import SyntheticDataConfig


class SyntheticLoader:
    # the loader protocol's flags (data/loader.py): synthetic batches are never flagged
    problem = None
    defer_problems = False
    carry = None

    def __init__(self, cfg: SyntheticDataConfig, *, objective: str | None = None, rank: int = 0,
                 world_size: int = 1, epoch: int = 0, split: str = "train"):
        from ptft_engine.objectives import get_spec
        from ptft_engine.objectives.synthetic import token_batch

        self.cfg, self.objective, self.rank, self.world_size, self.epoch = cfg, objective, rank, world_size, epoch
        self.draw = get_spec(objective).synthetic_batch if objective is not None else token_batch
        self.salt = {"train": 0, "eval": 7919}[split]  # held-out samples, same distribution
        self.batches_per_epoch = max(1, cfg.num_samples // (cfg.batch_size * world_size))
        self.position = 0  # batches this rank has handed out in this epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state.get("epoch", self.epoch)), int(state["position"])

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """This epoch's batches from the position on; then the loader is at the next epoch (as data.Loader)."""
        while self.position < self.batches_per_epoch:
            global_batch = self.position * self.world_size + self.rank
            self.position += 1
            yield self.make_batch(global_batch)
        self.epoch, self.position = self.epoch + 1, 0

    def on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The loader protocol's last step, on the step's device: synthetic batches are complete."""
        return batch

    def make_batch(self, global_batch: int) -> dict[str, torch.Tensor]:
        c = self.cfg
        g = torch.Generator().manual_seed(((c.seed + self.salt) * 1_000_003 + self.epoch) * 1_000_003 + global_batch)
        return self.draw(c, g)
