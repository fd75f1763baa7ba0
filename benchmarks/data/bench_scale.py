"""The data plan at internet scale, by simulation: synthetic indexes, no shard files.

For 10 k -> 1 M shards and 100 M -> 10 B samples, 1 or 3 weighted sources, world sizes
8 -> 4,096, one rank's view is computed (the last rank; no rank is spawned) in a fresh
process per case, which reports what every rank × worker pays:
  start_s        load the index(es) + build the epoch order + the first step's lookup
  index_load_s   load the index(es) alone; index_mb: their size on disk
  peak_rss_mb    the process's peak RSS (VmHWM), base_rss_mb: after imports only
  step_ms        median (and max) over 200 steps of one rank's batch lookup
  first_open_ms  resolving the window's shards by id (path, offsets, sha256), as a worker
                 does on first open; worker_open_rss_mb: the memory that adds
  node_cache     distinct shards the last node's ranks touch in a prefetch window, and
                 the bytes a whole-shard cache vs a per-sample (ranged) read needs
"ours" is the current code (column sidecar, closed-form mixing); "peer" the code before
issue 17 (benchmarks/data/scale_before.py: JSON index with a stat per shard, a mixing
prefix drawn sample by sample), run only where it finishes in seconds.

Then the shuffle quality (10 M samples in 1,000 shards, the same 10 k samples per shard
as 10 B / 1 M): the mean distance in the epoch between originally adjacent samples of a
shard and the distinct shards per batch, block shuffle (blocks of 10 k, 100 k and 10 M
positions: the last one by the per-position Feistel permutation) vs a uniform permutation.

Run: `python benchmarks/data/bench_scale.py` (≈ 3 min), `--quick` for 10 k / 100 k shards.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = [(10_000, 100_000_000), (100_000, 1_000_000_000), (1_000_000, 10_000_000_000)]
WORLDS = [8, 4096]
SPLIT3, WEIGHTS3 = [0.6, 0.3, 0.1], [0.5, 0.3, 0.2]  # shards per source; mixing weights (source 3 upsampled)
DOCS = 32  # samples per rank per step
BLOCK = 10_000  # DataConfig.shuffle_buffer's default
WIDE_BLOCK = 10_000_000  # a shuffle window over order.TABLE_MAX: permuted position by position
SHARD_BYTES = 256 << 20  # `ptft shard --shard-size` default
RANKS_PER_NODE, PREFETCH_STEPS = 8, 8  # e.g. 4 DataLoader workers × prefetch_factor 2
STEPS = 200


def _counts(n_shards: int, n_samples: int, rng) -> np.ndarray:
    """Uneven shard sizes (±10 %) summing to n_samples exactly."""
    base = n_samples / n_shards
    c = np.maximum(1, (base * rng.uniform(0.9, 1.1, n_shards)).astype(np.int64))
    c[: n_shards] += (n_samples - c.sum()) // n_shards
    c[: (n_samples - c.sum())] += 1
    return c


def make_source(root: str, n_shards: int, n_samples: int, seed: int, json_too: bool) -> str:
    """A source's index.json + column sidecar (and, for the peer, a JSON-listed index)."""
    from ptft_engine.data import index_columns as ic
    from ptft_engine.data.index import FORMAT

    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = _counts(n_shards, n_samples, rng)
    names = [f"shard-{i:07d}" for i in range(n_shards)]
    cols = {"samples": counts, "bytes": np.full(n_shards, SHARD_BYTES, dtype=np.int64),
            "sha256": rng.integers(0, 256, (n_shards, 32), dtype=np.uint8)}
    cols["paths"], cols["path_ends"] = ic.pack_strings([n + ".tar" for n in names])
    cols["offsets"], cols["offsets_ends"] = ic.pack_strings([n + ".idx" for n in names])
    ic.save_columns(os.path.join(root, ic.COLUMNS_NAME), cols)
    head = {"format": FORMAT, "version": 1, "kind": "text", "total_samples": int(counts.sum())}
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump({**head, "columns": ic.COLUMNS_NAME, "num_shards": n_shards}, f)
    if json_too:
        shas = cols["sha256"]
        with open(os.path.join(root, "listed.json"), "w") as f:
            json.dump({**head, "shards": [{"path": n + ".tar", "samples": int(c), "bytes": SHARD_BYTES,
                                           "sha256": bytes(h).hex(), "offsets": n + ".idx"}
                                          for n, c, h in zip(names, counts, shas)]}, f)
    return root


def _rss_mb(field: str) -> float:
    """VmHWM (peak) or VmRSS of this process in MB; unlike ru_maxrss, not inherited
    from the parent across fork + exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(spec: dict) -> dict:
    """One rank's view in this (fresh) process; what it costs."""
    if spec["impl"] == "peer":
        sys.path.insert(0, HERE)
        from scale_before import EpochOrder, load_index
    else:
        from ptft_engine.data.index import load_index
        from ptft_engine.data.order import EpochOrder
    base_rss = _rss_mb("VmHWM")
    world, rank = spec["world"], spec["world"] - 1
    t0 = time.perf_counter()
    sources = [load_index(p) for p in spec["indexes"]]
    stats = sum(s[1] for s in sources) if spec["impl"] == "peer" else 0
    sources = [s[0] for s in sources] if spec["impl"] == "peer" else sources
    t_load = time.perf_counter() - t0
    weights = spec["weights"]
    order = EpochOrder(sources, seed=0, epoch=3, block=spec.get("block", BLOCK), weights=weights,
                       length=spec["samples"])
    step0 = (len(order) // (world * DOCS)) // 2  # resume in the middle of the epoch
    order.slice((step0 * world + rank) * DOCS, (step0 * world + rank + 1) * DOCS)
    t_start = time.perf_counter() - t0
    times = []
    for t in range(step0 + 1, step0 + 1 + STEPS):
        first = (t * world + rank) * DOCS
        s = time.perf_counter()
        order.slice(first, first + DOCS)
        times.append(time.perf_counter() - s)
    # The last node's ranks over one prefetch window: which shards must be on the node.
    touched = set()
    node_first = world - min(RANKS_PER_NODE, world)
    for t in range(step0, step0 + PREFETCH_STEPS):
        first = (t * world + node_first) * DOCS
        touched.update(order.slice(first, first + (world - node_first) * DOCS)[0].tolist())
    # What a DataLoader worker adds when it opens shards: their path, offsets file and
    # sha256 by id (the column sidecar's other columns are read on the first of these).
    rss_before_open = _rss_mb("VmRSS")
    s = time.perf_counter()
    infos = [order.shards[i] for i in sorted(touched)]
    first_open_ms = 1e3 * (time.perf_counter() - s)
    assert all(i.path.endswith(".tar") for i in infos)
    samples_in_window = (world - node_first) * DOCS * PREFETCH_STEPS
    mean_sample_bytes = SHARD_BYTES * len(order.shards) / spec["total_samples"]
    return {"start_s": t_start, "index_load_s": t_load, "step_ms": 1e3 * float(np.median(times)),
            "step_ms_max": 1e3 * max(times), "peak_rss_mb": _rss_mb("VmHWM"),
            "base_rss_mb": base_rss, "stat_calls_at_start": stats, "first_open_ms": first_open_ms,
            "worker_open_rss_mb": _rss_mb("VmRSS") - rss_before_open,
            "node_window_shards": len(touched), "node_cache_whole_shards_gb": len(touched) * SHARD_BYTES / 1e9,
            "node_cache_ranged_mb": samples_in_window * mean_sample_bytes / 1e6}


def run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode:
        raise RuntimeError(f"case {spec} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mb(paths: list[str]) -> float:
    return sum(os.path.getsize(p) for p in paths) / 1e6


def emit(case: str, ours: float | None, peer: float | None, unit: str, **extra) -> None:
    r = lambda x: round(x, 4) if isinstance(x, float) else x  # noqa: E731
    print(json.dumps({"case": case, "ours": r(ours), "peer": r(peer),
                      "ratio": round(ours / peer, 4) if ours is not None and peer else None, "unit": unit,
                      **{k: r(v) for k, v in extra.items()}}), flush=True)


def scale_cases(root: str, sizes, peer_json_max: int, peer_mix_max: int) -> None:
    for n_shards, n_samples in sizes:
        for n_src in (1, 3):
            split = [1.0] if n_src == 1 else SPLIT3
            weights = None if n_src == 1 else WEIGHTS3
            json_too = n_shards <= peer_json_max and (n_src == 1 or n_samples <= peer_mix_max)
            dirs = [make_source(os.path.join(root, f"{n_shards}_{n_samples}_{n_src}", f"s{i}"), int(n_shards * f),
                                int(n_samples * f), seed=i, json_too=json_too) for i, f in enumerate(split)]
            from ptft_engine.data.index_columns import COLUMNS_NAME

            ours_files = [os.path.join(d, n) for d in dirs for n in ("index.json", COLUMNS_NAME)]
            for world in WORLDS:
                common = dict(world=world, weights=weights, samples=n_samples, total_samples=n_samples)
                ours = run_child({**common, "impl": "ours", "indexes": [os.path.join(d, "index.json") for d in dirs]})
                peer = {}
                if json_too:
                    listed = [os.path.join(d, "listed.json") for d in dirs]
                    peer = run_child({**common, "impl": "peer", "indexes": listed})
                extra = {f"{k}_ours": v for k, v in ours.items() if k != "start_s"}
                extra.update({f"{k}_peer": v for k, v in peer.items()
                              if k in ("index_load_s", "step_ms", "peak_rss_mb", "stat_calls_at_start")})
                name = f"start_{n_shards // 1000}k_shards_{n_samples / 1e9:g}B_samples_{n_src}src_{world}ranks"
                emit(name, ours["start_s"], peer.get("start_s"), "s", index_mb_ours=_mb(ours_files),
                     index_mb_peer=_mb([os.path.join(d, "listed.json") for d in dirs]) if json_too else None, **extra)
                if (n_shards, n_src, world) == (SIZES[-1][0], 3, WORLDS[-1]):  # the wide shuffle, same corpus
                    wide = run_child({**common, "impl": "ours", "block": WIDE_BLOCK,
                                      "indexes": [os.path.join(d, "index.json") for d in dirs]})
                    emit(f"{name}_block_{WIDE_BLOCK // 1_000_000}M", wide["start_s"], None, "s",
                         **{f"{k}_ours": v for k, v in wide.items() if k != "start_s"})


def shuffle_quality(root: str) -> None:
    """Mean epoch distance between originally adjacent samples of a shard, and distinct
    shards per batch, at the 10 B / 1 M shape (10 k samples per shard, block 10 k)."""
    from ptft_engine.data.index import load_index
    from ptft_engine.data.order import EpochOrder

    n_shards, n_samples = 1000, 10_000_000
    src = load_index(os.path.join(make_source(os.path.join(root, "quality"), n_shards, n_samples, 0, False),
                                  "index.json"))
    counts = src.shards.counts()
    first_gid = np.concatenate([[0], np.cumsum(counts)[:-1]])
    adjacent = np.ones(n_samples, dtype=bool)
    adjacent[np.cumsum(counts) - 1] = False  # (gid, gid + 1) in the same shard
    rng = np.random.default_rng(0)

    def stats(where: np.ndarray, shard_of_pos: np.ndarray) -> dict:
        dist = np.abs(where[1:] - where[:-1])[adjacent[:-1]]
        per_rank = [len(np.unique(shard_of_pos[i:i + DOCS])) for i in range(0, len(shard_of_pos), 997 * DOCS)]
        step = 4096 * DOCS
        per_step = [len(np.unique(shard_of_pos[i:i + step])) for i in range(0, len(shard_of_pos) - step, 13 * step)]
        return {"mean": float(dist.mean()), "median": float(np.median(dist)),
                "shards_per_rank_batch": float(np.mean(per_rank)), "shards_per_global_step": float(np.mean(per_step))}

    for block in (BLOCK, 100_000, 10_000_000):  # 10 M: over order.TABLE_MAX, permuted per position
        order = EpochOrder([src], seed=0, epoch=0, block=block)
        t = time.perf_counter()
        shard, sample = order.slice(0, n_samples)
        build_s = time.perf_counter() - t
        where = np.empty(n_samples, dtype=np.int64)
        where[first_gid[shard] + sample] = np.arange(n_samples)
        ours = stats(where, shard)
        s = time.perf_counter()
        for b in range(20):  # one rank's step: a fresh block each time, as at 4,096 ranks
            order._cache.clear()
            first = (b * (block + 5)) % (n_samples - DOCS)
            order.slice(first, first + DOCS)
        step_ms = (time.perf_counter() - s) / 20 * 1e3
        perm = rng.permutation(n_samples)
        where_u = np.empty(n_samples, dtype=np.int64)
        where_u[perm] = np.arange(n_samples)
        gid_shard = np.repeat(np.arange(n_shards), counts)
        peer = stats(where_u, gid_shard[perm])
        emit(f"shuffle_adjacent_distance_block_{block // 1000}k",  ours["mean"], peer["mean"], "positions",
             median_ours=ours["median"], median_peer=peer["median"],
             shards_per_rank_batch_ours=ours["shards_per_rank_batch"],
             shards_per_rank_batch_peer=peer["shards_per_rank_batch"],
             shards_per_global_step_ours=ours["shards_per_global_step"],
             shards_per_global_step_peer=peer["shards_per_global_step"], step_ms_fresh_block=step_ms,
             epoch_build_s=build_s, samples=n_samples, shards=n_shards,
             note="peer = a uniform random permutation of the epoch (no locality)")


def checkpoint_state_bytes() -> None:
    """The data state a checkpoint holds, from Loader.state_dict itself, at 10 B samples."""
    from types import SimpleNamespace

    from ptft_engine.data.loader import Loader

    fake = SimpleNamespace(epoch=3, position=9_999_000_000, cfg=SimpleNamespace(seed=1234), world_size=4096,
                           docs=DOCS, split="train", epoch_length=lambda: 10_000_000_000, planned=False, carry=None)
    state = Loader.state_dict(fake)
    emit("checkpoint_data_state_bytes", float(len(json.dumps(state))), None, "bytes", state=state)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 k and 100 k shards only, no shuffle-quality case")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    with tempfile.TemporaryDirectory() as root:
        # peer: JSON index up to 1 M shards (one source), O(samples) mixing only at 100 M samples
        scale_cases(root, SIZES[:2] if args.quick else SIZES, peer_json_max=1_000_000, peer_mix_max=100_000_000)
        checkpoint_state_bytes()
        if not args.quick:
            shuffle_quality(root)


if __name__ == "__main__":
    main()
