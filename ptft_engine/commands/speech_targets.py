"""Fit HuBERT's k-means targets on unlabelled audio shards (`ptft shard --format audio`, 16 kHz).

Every clip is normalised as training normalises it (zero mean, unit variance), turned into
39-dim MFCC frames (13 + deltas + delta-deltas, one per 20 ms: the frames of wav2vec 2.0's
conv encoder), standardised and clustered with MiniBatchKMeans. OUTPUT (JSON) holds the
centroids and the standardisation; a hubert objective reads it as `objective.kmeans_path`.
"""
from __future__ import annotations

import time

from ptft_engine.cli import UserError

EXAMPLE = """Examples:
  ptft speech-targets shards/speech --output km.json --clusters 100
  ptft pretrain --config configs/demo/hubert_speech.yaml objective.kmeans_path=km.json
"""


def add_arguments(p) -> None:
    p.add_argument("shards", nargs="+", help="audio shard directories, index.json files, tars or globs")
    p.add_argument("--output", "-o", required=True, help="JSON file to write the centroids to")
    p.add_argument("--clusters", type=int, default=100, help="k (HuBERT's MFCC iteration: 100)")
    p.add_argument("--max-frames", type=int, default=None, help="fit on at most this many frames (20 ms each)")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from ptft_engine.objectives.speech_targets import fit_shards

    if args.clusters < 2:
        raise UserError(f"--clusters {args.clusters}: at least 2")
    start = time.perf_counter()
    km = fit_shards(args.shards, args.clusters, seed=args.seed, max_frames=args.max_frames)
    km.save(args.output)
    print(f"k-means of {km.frames} MFCC frames into {km.num_clusters} clusters in {time.perf_counter() - start:.1f} s "
          f"(mean squared distance {km.inertia:.2f}) -> {args.output}")
    return 0
