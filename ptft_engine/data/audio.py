"""Audio batches: int16 PCM members -> random fixed-length crops, normalised, padded, masked.

A clip's crop window comes from a generator seeded by (seed, epoch, position), so a
resumed run — on any world size or worker count — crops exactly as an uninterrupted
one. Batch keys:
    input_values    (B, T) float32: zero mean, unit variance per clip over its real
                    frames (as wav2vec 2.0's feature extractor does), 0 on padding
    attention_mask  (B, T) bool: True = a real frame
    labels          (B,) int64 class indexes, when every source has "classes"
T is `audio_crop_samples` when set (clips shorter than it are padded), else the batch's
longest clip. A clip that fails to decode is skipped and its row refilled from the
batch's other clips, keeping the batch size equal on every rank.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ptft_engine.data.audio_sources import PCM_DTYPE
from ptft_engine.data.config import DataConfig
from ptft_engine.data.errors import BadSamples, DataError
from ptft_engine.data.needs import DataNeeds

NORM_EPS = 1e-7  # added to the variance, as transformers' Wav2Vec2FeatureExtractor does


def pcm_frames(members: dict) -> np.ndarray:
    """The .pcm member (little-endian int16 mono) as an int16 view; raises on a bad one."""
    raw = members.get("pcm")
    if raw is None:
        raise ValueError("no .pcm member")
    if len(raw) == 0 or len(raw) % 2:
        raise ValueError(f".pcm member of {len(raw)} bytes is not whole int16 frames")
    return np.frombuffer(raw, dtype=PCM_DTYPE)


def to_float(frames: np.ndarray) -> np.ndarray:
    """int16 frames as float32 in [-1, 1)."""
    return frames.astype(np.float32) / 32768.0


def crop_start(n: int, crop: int, seed: int, epoch: int, pos: int) -> int:
    """First frame of the crop window of clip `pos`: a pure function of its arguments."""
    if n <= crop:
        return 0
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, pos, 0x617564]))
    return int(rng.integers(0, n - crop + 1))


def normalize(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / np.sqrt(x.var() + NORM_EPS)


def pad_batch(clips: list[np.ndarray], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_values (B, T) float32, attention_mask (B, T) bool) of clips already cropped;
    T = `length` or the longest clip."""
    width = length or max(len(c) for c in clips)
    # numpy, not torch, fills the rows: many small torch ops per batch cost more than the copy
    values = np.zeros((len(clips), width), dtype=np.float32)
    mask = np.zeros((len(clips), width), dtype=bool)
    for r, c in enumerate(clips):
        values[r, : len(c)] = c[:width]
        mask[r, : len(c)] = True
    return torch.from_numpy(values), torch.from_numpy(mask)


def check_sources(sources, cfg: DataConfig) -> tuple[int | None, bool]:
    """(sample rate, labelled) of the audio sources; a clear error when they disagree. An
    index that does not name its rate is taken to be at data.audio_sample_rate."""
    rates, labelled = set(), []
    for src in sources:
        where = src.shards[0].path if len(src.shards) else "?"
        if src.kind not in (None, "audio"):
            raise DataError(f"shards {where} hold {src.kind!r} data, not audio")
        if src.extra.get("pcm_dtype", PCM_DTYPE) != PCM_DTYPE:
            raise DataError(f"shards {where} store PCM as {src.extra['pcm_dtype']!r}; this reader reads {PCM_DTYPE!r}")
        if src.extra.get("sample_rate"):  # an index made by --index-only does not know it
            rates.add(src.extra["sample_rate"])
        labelled.append(bool(src.extra.get("classes")))
    if len(rates) > 1:
        raise DataError(f"audio sources have different sample rates {sorted(rates)}; reshard them to one")
    rate = rates.pop() if rates else cfg.audio_sample_rate
    if cfg.audio_sample_rate and rate != cfg.audio_sample_rate:
        raise DataError(f"audio shards are at {rate} Hz, but data.audio_sample_rate is {cfg.audio_sample_rate}; "
                        f"reshard with `ptft shard --format audio --sample-rate {cfg.audio_sample_rate}`")
    classes = [tuple(src.extra.get("classes") or ()) for src in sources]
    if all(labelled) and len(set(classes)) > 1:
        raise DataError("labelled audio sources have different class lists; shard them with the same labels")
    return rate, bool(labelled) and all(labelled)


def iter_clips(spec: str, sample_rate: int) -> Iterator[np.ndarray]:
    """Every clip of the audio shards `spec` (directory, index.json, tar, glob or URL, as a
    data.shards entry), whole, as float32 in [-1, 1): for passes over a corpus outside
    training (k-means targets). DataError naming the shards when they are not audio at
    `sample_rate` or a sample cannot be read."""
    from ptft_engine.data.cache import ShardCache, ShardFailed
    from ptft_engine.data.index import read_members, resolve_source

    index = resolve_source(spec)
    rate = index.extra.get("sample_rate")
    if index.kind not in (None, "audio"):
        raise DataError(f"shards {spec} hold {index.kind!r} data, not audio")
    if rate and rate != sample_rate:
        raise DataError(f"shards {spec} are at {rate} Hz, not {sample_rate}; reshard them with "
                        f"`ptft shard --format audio --sample-rate {sample_rate}`")
    cache = ShardCache()
    for shard in index.shards:
        try:
            opened = cache.open(shard)
        except (ShardFailed, OSError) as exc:
            raise DataError(f"shard {shard.path}: {exc}") from None
        with opened.fh as fh:
            for i in range(shard.samples):
                try:
                    clip = to_float(pcm_frames(read_members(fh, opened.table, i)))
                except ValueError as exc:
                    raise DataError(f"shard {shard.path}, sample {i}: unreadable audio ({exc})") from None
                yield clip


class AudioBuilder:
    """Audio batches of the clips of `sources` (their sample rate and labels checked here)."""

    def __init__(self, cfg: DataConfig, sources, needs: DataNeeds | None = None):
        self.cfg = cfg
        self.sample_rate, self.labelled = check_sources(sources, cfg)
        wanted = needs.sample_rate if needs is not None else None
        if wanted and self.sample_rate and self.sample_rate != wanted:
            where = sources[0].shards[0].path if sources and len(sources[0].shards) else "the shards"
            raise DataError(f"audio shards {where} are at {self.sample_rate} Hz, but the objective's features "
                            f"assume {wanted} Hz; reshard with `ptft shard --format audio --sample-rate {wanted}`")

    def build(self, records, *, epoch: int, first_pos: int, bad: BadSamples) -> tuple[dict, dict, list[int]]:
        cfg, crop = self.cfg, self.cfg.audio_crop_samples
        clips: list[np.ndarray] = []
        labels: list[int | None] = []
        kept: list[int] = []
        for pos, shard, key, members in records:
            try:
                frames = pcm_frames(members)
                label = int(members["cls"]) if self.labelled else None
            except KeyError:
                bad.skip(shard, key, "no .cls label member")
                continue
            except ValueError as exc:
                bad.skip(shard, key, f"undecodable ({exc})")
                continue
            if crop:  # only the window is converted: clips can be far longer than crops
                start = crop_start(len(frames), crop, cfg.seed, epoch, pos)
                frames = frames[start: start + crop]
            x = to_float(frames)
            clips.append(normalize(x) if cfg.audio_normalize else x)
            labels.append(label)
            kept.append(pos)
        if not clips:
            names = ", ".join(f"{shard}:{key}" for _, shard, key, _ in records[:3])
            raise ValueError(f"every clip of a batch failed to decode ({names} ...); the shards look broken")
        repeated = 0
        while len(clips) < cfg.batch_size:  # refill skipped rows so every rank keeps batch_size
            clips.append(clips[repeated % len(kept)])
            labels.append(labels[repeated % len(kept)])
            repeated += 1
        values, mask = pad_batch(clips, crop)
        batch = {"input_values": values, "attention_mask": mask}
        if self.labelled:
            batch["labels"] = torch.tensor(labels, dtype=torch.int64)
        real = sum(min(len(c), values.shape[1]) for c in clips)
        stats = {"repeated": repeated, "audio_frames": real, "pad_frames": values.numel() - real}
        return batch, stats, kept
