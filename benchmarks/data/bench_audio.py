"""Audio data speed: ours vs a plain webdataset + soundfile pipeline.

Cases (one JSON object each, ours and the peer measured in the same run, clips per second):
- audio_shard_write_clips_per_s: `ptft shard --format audio` (2 pool workers read with
  soundfile, resample 22.05 -> 16 kHz with resample_poly, int16 PCM, index with durations)
  vs one process doing the same reads and resampling into webdataset.ShardWriter as
  16-bit WAV members.
- audio_stream_clips_per_s: batches of random 2 s crops, normalised per clip, padded with
  masks, 2 workers, vs webdataset.WebDataset decoding the WAV members with soundfile, the
  same crop / normalisation in Python, padded by a collate function, 2 workers.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import tempfile
import time

import numpy as np
import torch

CROP = 32_000  # 2 s at 16 kHz


def emit(case, ours, peer, unit, **extra):
    print(json.dumps({"case": case, "ours": round(ours, 2), "peer": round(peer, 2),
                      "ratio": round(ours / peer, 3) if peer else None, "unit": unit, **extra}), flush=True)


def make_clips(root: str, n: int, seed: int = 0) -> str:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "wav")
    os.makedirs(folder)
    for i in range(n):
        frames = int(rng.integers(22_050, 4 * 22_050))  # 1..4 s
        t = np.arange(frames) / 22_050
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(frames)
        sf.write(os.path.join(folder, f"{i:05d}.wav"), x.astype(np.float32), 22_050, subtype="PCM_16")
    return folder


def bench_write(folder: str, root: str) -> tuple[str, str]:
    import soundfile as sf
    import webdataset as wds
    from scipy.signal import resample_poly

    from ptft_engine.data import sources
    from ptft_engine.data.shards import write_shards

    ours = os.path.join(root, "ours")
    start = time.perf_counter()
    summary = write_shards([folder], ours, sources.Options(format="audio"), shard_bytes=8 << 20, workers=2,
                           progress=False)
    ours_s = time.perf_counter() - start
    peer = os.path.join(root, "peer")
    os.makedirs(peer)
    start = time.perf_counter()
    with wds.ShardWriter(os.path.join(peer, "p-%06d.tar"), maxsize=8 << 20, verbose=0) as w:
        for name in sorted(os.listdir(folder)):
            x, rate = sf.read(os.path.join(folder, name), dtype="float32")
            buf = io.BytesIO()
            sf.write(buf, resample_poly(x, 320, 441), 16_000, format="WAV", subtype="PCM_16")
            w.write({"__key__": name[:-4], "wav": buf.getvalue()})
    peer_s = time.perf_counter() - start
    emit("audio_shard_write_clips_per_s", summary.samples / ours_s, summary.samples / peer_s, "clips/s",
         clips=summary.samples)
    return ours, peer


def audio_objective() -> str:
    """wav2vec2 when it is registered; else a stand-in spec that asks for audio (the stream
    reads only an objective's DataNeeds)."""
    from typing import Literal

    from ptft_engine.data.needs import DataNeeds
    from ptft_engine.objectives.spec import ObjectiveConfigBase, ObjectiveSpec, names, register

    for name in ("wav2vec2", "audio_stand_in"):
        if name in names():
            return name

    class StandIn(ObjectiveConfigBase):
        name: Literal["audio_stand_in"] = "audio_stand_in"

    register(ObjectiveSpec(name="audio_stand_in", config=StandIn, arch="encoder", data=DataNeeds(kind="audio"),
                           synthetic_batch=lambda cfg, g: {}, unit="samples", flops_per_unit=lambda o, s: 0.0,
                           build=lambda model, cfg: model))
    return "audio_stand_in"


def ours_clips_per_s(shards: str, batch: int, n_batches: int, workers: int) -> float:
    from ptft_engine.data import DataConfig, build_loader

    cfg = DataConfig(shards=[shards], kind="audio", audio_crop_samples=CROP, batch_size=batch,
                     num_workers=workers, prefetch_factor=4, samples_per_epoch=batch * (n_batches + 1))
    it = iter(build_loader(cfg, objective=audio_objective()))
    next(it)  # worker start-up is not streaming speed
    start = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return batch * n_batches / (time.perf_counter() - start)


def _peer_sample(sample):
    import soundfile as sf

    x, _ = sf.read(io.BytesIO(sample["wav"]), dtype="float32")
    if len(x) > CROP:
        start = random.randint(0, len(x) - CROP)
        x = x[start: start + CROP]
    return (x - x.mean()) / np.sqrt(x.var() + 1e-7)


def _peer_collate(clips):
    values = torch.zeros(len(clips), CROP)
    mask = torch.zeros(len(clips), CROP, dtype=torch.bool)
    for r, c in enumerate(clips):
        values[r, : len(c)] = torch.from_numpy(c)
        mask[r, : len(c)] = True
    return {"input_values": values, "attention_mask": mask}


def peer_clips_per_s(shards: str, batch: int, n_batches: int, workers: int) -> float:
    import webdataset as wds

    urls = sorted(os.path.join(shards, p) for p in os.listdir(shards) if p.endswith(".tar"))
    ds = (wds.WebDataset(urls, shardshuffle=100, workersplitter=wds.split_by_worker, empty_check=False)
          .repeat().shuffle(1000).map(_peer_sample))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, collate_fn=_peer_collate, num_workers=workers,
                                         prefetch_factor=4)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return batch * n_batches / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer clips and batches")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="ours and the peer alternate; medians are compared")
    args = ap.parse_args()
    n_clips, n_batches = (120, 10) if args.quick else (400, 40)
    with tempfile.TemporaryDirectory() as root:
        ours, peer = bench_write(make_clips(root, n_clips), root)
        o, p = [], []
        for _ in range(args.rounds):
            o.append(ours_clips_per_s(ours, args.batch_size, n_batches, args.workers))
            p.append(peer_clips_per_s(peer, args.batch_size, n_batches, args.workers))
        emit("audio_stream_clips_per_s", statistics.median(o), statistics.median(p), "clips/s",
             workers=args.workers, rounds=args.rounds, crop_samples=CROP)


if __name__ == "__main__":
    main()
