"""The loader the engine iterates: epochs, DataLoader workers, and resumable state.

The state is only (epoch, position): position counts the global samples that all ranks
together have consumed in this epoch. Every rank yields the same number of batches,
so the state is the same on every rank, and a resume — on any world size or worker
count — continues the epoch order at that position.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader

from ptft_engine.data.cache import ShardCache
from ptft_engine.data.config import DataConfig
from ptft_engine.data.errors import BadSamples, DataError
from ptft_engine.data.index import ShardIndex, resolve_source
from ptft_engine.data.index_columns import shard_counts
from ptft_engine.data.order import EpochOrder
from ptft_engine.data.remote import is_remote
from ptft_engine.data.stream import ShardStream, steps_left

AUTO_SAMPLE_DOCS = 256
MAX_AUTO_PREFETCH = 64
OBJECTIVE_KIND = {"mlm": "text", "clm": "text", "simclr": "image", "clip": "image_text"}
STATE_VERSION = 1


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers are many; the step owns the cores


class Loader:
    def __init__(self, cfg: DataConfig, *, objective: str, rank: int, world_size: int, epoch: int = 0,
                 split: str = "train"):
        if objective not in OBJECTIVE_KIND:
            raise DataError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVE_KIND)}")
        if OBJECTIVE_KIND[objective] != cfg.kind:
            raise DataError(f"objective {objective!r} needs data kind {OBJECTIVE_KIND[objective]!r}, "
                            f"but the data config says kind {cfg.kind!r}")
        if not (world_size >= 1 and 0 <= rank < world_size):
            raise DataError(f"rank {rank} is outside world size {world_size}")
        if split not in ("train", "eval"):
            raise DataError(f"split must be 'train' or 'eval', not {split!r}")
        specs = cfg.shards if split == "train" else cfg.eval_shards
        if not specs:
            raise DataError("no eval_shards in the data config")
        self.cfg, self.objective, self.rank, self.world_size = cfg, objective, rank, world_size
        self.split = split
        self.cache = ShardCache.from_config(cfg)
        if any(is_remote(s) for s in specs):
            self.cache.check_writable()
        # a missing local shard fails here; remote sources fetch only their index.json
        self.sources: list[ShardIndex] = [resolve_source(s, timeout=cfg.fetch_timeout_s, retries=cfg.fetch_retries,
                                                         cache_dir=self.cache.root) for s in specs]
        self.builder = self._builder()
        self.stats: dict[str, int] = {}
        self.docs = self._docs_per_batch()
        self.epoch, self.position = epoch, 0
        if len(self) == 0:
            raise DataError(f"{self.epoch_length()} samples cannot fill one step of {world_size} ranks x "
                            f"{self.docs} samples per batch")

    def _docs_per_batch(self) -> int:
        cfg = self.cfg
        if cfg.kind != "text":
            return cfg.batch_size
        if cfg.docs_per_batch != "auto":
            return cfg.docs_per_batch
        # The first documents of the shards (the same on every rank) give the mean length;
        # a pure function of the data, so a resumed run computes the same number.
        order = EpochOrder(self.sources, seed=0, epoch=0, shuffle=False)
        n = min(AUTO_SAMPLE_DOCS, len(order))
        reader = ShardStream(order, self.builder, rank=0, world_size=1, docs=n, start=0, strict=False,
                             cache=self.cache)
        texts, _ = self.builder.texts(reader.read(0, BadSamples(strict=False)), BadSamples(strict=False))
        self._add_stats(reader.counters())
        reader.close()
        extra = 1 if self.objective == "clm" else 2  # <eos>, or [CLS] and [SEP]
        per_doc = sum(len(ids) + extra for ids in self.builder.tok.encode_batch(texts)) / max(1, len(texts))
        return max(1, int(cfg.batch_size * cfg.seq_len / max(per_doc, 1.0)))

    def _prefetch_shards(self) -> int:
        if self.cfg.prefetch_shards != "auto":
            return self.cfg.prefetch_shards
        counts = np.concatenate([shard_counts(src.shards) for src in self.sources])
        per_shard = max(1.0, float(counts.mean()) if len(counts) else 1.0)
        span = self.cfg.shuffle_buffer if self.cfg.shuffle else self.world_size * self.docs
        return min(MAX_AUTO_PREFETCH, math.ceil(span / per_shard) + 2)

    def _builder(self):
        from ptft_engine.data.tokenizer import load_tokenizer

        cfg = self.cfg
        tok = None
        if self.objective in ("mlm", "clm", "clip"):
            if not cfg.tokenizer:
                raise DataError(f"objective {self.objective!r} needs `tokenizer` (a tokenizer.json) in the data config")
            tok = load_tokenizer(cfg.tokenizer)
        if cfg.kind == "text":
            from ptft_engine.data.text import TextBuilder

            return TextBuilder(cfg, self.objective, tok)
        from ptft_engine.data.images import ImageBuilder

        return ImageBuilder(cfg, self.objective, tok)

    def _order(self, epoch: int) -> EpochOrder:
        cfg = self.cfg
        train = self.split == "train"
        return EpochOrder(self.sources, seed=cfg.seed, epoch=epoch, shuffle=cfg.shuffle and train,
                          block=cfg.shuffle_buffer, resample=cfg.resample and train,
                          weights=cfg.weights if train else None,
                          length=cfg.samples_per_epoch if train else None)

    def epoch_length(self) -> int:
        if self.split == "train" and self.cfg.samples_per_epoch:
            return self.cfg.samples_per_epoch
        return sum(src.total for src in self.sources)

    def __len__(self) -> int:
        """Batches per rank in a whole epoch."""
        return steps_left(self.epoch_length(), 0, self.world_size, self.docs)

    def mask_kwargs(self) -> dict:
        """Arguments of ptft_engine.data.apply_mlm_mask for batches of the current epoch
        (with `mask_in: step`)."""
        if self.objective != "mlm":
            raise DataError(f"objective {self.objective!r} has no MLM mask")
        return self.builder.mask_kwargs(self.epoch if self.split == "train" else 0)

    def batches_left(self) -> int:
        """Batches per rank still to come in the current epoch (after a resume: fewer)."""
        return steps_left(self.epoch_length(), self.position, self.world_size, self.docs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def __iter__(self):
        cfg = self.cfg
        step_samples = self.world_size * self.docs
        # eval sees the same order and the same masks every time, so its losses compare
        order = self._order(self.epoch if self.split == "train" else 0)
        stream = ShardStream(order, self.builder, rank=self.rank, world_size=self.world_size,
                             docs=self.docs, start=self.position, strict=cfg.strict,
                             emit_sample_index=cfg.emit_sample_index, cache=self.cache,
                             prefetch_shards=self._prefetch_shards())
        kw = {}
        if cfg.num_workers > 0:
            kw = dict(num_workers=cfg.num_workers, prefetch_factor=cfg.prefetch_factor, worker_init_fn=_worker_init)
        for batch in DataLoader(stream, batch_size=None, **kw):
            self._add_stats(batch.pop("_stats"))
            self.stats["batches"] = self.stats.get("batches", 0) + 1
            self.position += step_samples  # counted as consumed once handed out
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def _add_stats(self, stats: dict) -> None:
        for key, value in stats.items():
            self.stats[key] = self.stats.get(key, 0) + int(value)

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "epoch": self.epoch, "position": self.position, "seed": self.cfg.seed,
                "epoch_length": self.epoch_length(), "world_size": self.world_size, "docs_per_batch": self.docs,
                "split": self.split}

    def load_state_dict(self, sd: dict) -> None:
        if sd.get("version") != STATE_VERSION:
            raise DataError(f"data state version {sd.get('version')!r} is not {STATE_VERSION}")
        if sd["seed"] != self.cfg.seed:
            raise DataError(f"data state was saved with seed {sd['seed']}, but the config has seed {self.cfg.seed}")
        if sd["epoch_length"] != self.epoch_length():
            raise DataError(f"data state was saved for an epoch of {sd['epoch_length']} samples, but these shards "
                            f"give {self.epoch_length()}: the shards changed")
        if not 0 <= sd["position"] <= sd["epoch_length"]:
            raise DataError(f"data state position {sd['position']} is outside the epoch")
        self.epoch, self.position = int(sd["epoch"]), int(sd["position"])


def build_loader(cfg: DataConfig, *, objective: str, rank: int = 0, world_size: int = 1, epoch: int = 0,
                 split: str = "train") -> Loader:
    return Loader(cfg, objective=objective, rank=rank, world_size=world_size, epoch=epoch, split=split)
