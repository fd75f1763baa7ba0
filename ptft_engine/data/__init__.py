"""Streaming data: shard writer and index, tokenizer, resumable stream, packing, masking.

    cfg = DataConfig(shards=["shards/wiki"], tokenizer="tok/tokenizer.json", seq_len=512)
    loader = build_loader(cfg, objective="mlm", rank=rank, world_size=world)
    for batch in loader: ...            # dict of CPU tensors, the same count on every rank
    ckpt["data"] = loader.state_dict()  # JSON-serialisable; load_state_dict resumes mid-epoch,
                                        # also on another world size or worker count

Batches (B = batch_size per rank, S = seq_len):
    mlm     input_ids (B,S) int64 masked, labels (B,S) int64 (-100 = not selected),
            segment_ids (B,S) int64 (1, 2, ... per packed piece of a document, 0 = pad),
            attention_mask (B,S) bool (True = real token)
    clm     input_ids (B,S) int64, labels (B,S) int64 (= input_ids, -100 on pad; the model
            shifts), attention_mask (B,S) bool
    simclr  view1, view2 (B,3,H,W) float32, normalised
    clip    pixel_values (B,3,H,W) float32, input_ids (B,S) int64 (<bos> caption <eos>),
            attention_mask (B,S) bool
    audio   (data kind audio) input_values (B,T) float32, normalised per clip,
            attention_mask (B,T) bool (True = real frame), labels (B,) int64 if labelled
"""
from __future__ import annotations

from ptft_engine.data.config import DataConfig
from ptft_engine.data.errors import CorruptSampleError, DataError

__all__ = ["DataConfig", "DataError", "CorruptSampleError", "build_loader", "apply_mlm_mask"]


def build_loader(cfg: DataConfig, *, objective: str, rank: int = 0, world_size: int = 1, epoch: int = 0,
                 split: str = "train"):
    from ptft_engine.data.loader import build_loader as _build

    return _build(cfg, objective=objective, rank=rank, world_size=world_size, epoch=epoch, split=split)


def apply_mlm_mask(batch: dict, *, backend: str | None = None, **mask_kwargs) -> dict:
    """Mask an MLM batch in the step (`mask_in: step`): apply_mlm_mask(batch, **loader.mask_kwargs())."""
    from ptft_engine.data.text import apply_mlm_mask as _apply

    return _apply(batch, backend=backend, **mask_kwargs)
