"""Benchmark: checkpoint saves async vs sync, and converting a checkpoint for an elastic resume.

Cases (one JSON object each, ours and the peer measured in this run):
- save_step_stall: how long the training step waits for a save of a GPT-2-small-sized
  model (124M parameters, fp32, ZeRO-2, 1 CPU rank: ~1.5 GB of weights, master weights
  and Adam moments): checkpoint.async_save=true (snapshot to host memory) vs false (the
  files written before the step goes on). Alternating, median of --rounds each.
  Extra fields: the background write's duration, and the step time while it runs.
- elastic_convert_time / elastic_convert_peak_rss: reading a 2-rank ZeRO-3 checkpoint of
  the same model for a 1-rank resume: ours streams fp32 weights + both Adam moments tensor
  by tensor (what `elastic.load_states` hands to DeepSpeed) vs DeepSpeed's ds_to_universal
  at its defaults (what its `load_universal` then reads). Each in a fresh subprocess; peak
  RSS is the larger of the process's and its largest child's (ds_to_universal forks workers).

    python benchmarks/e2e/bench_checkpoint.py [--workdir DIR] [--rounds 3]

Needs ~8 GB of free memory and a few GB of disk; a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

OURS = """
import resource, sys, time
from pathlib import Path
from ptft_engine.export.zero import optimizer_tensors
t0 = time.perf_counter()
n = 0
for key in (None, "exp_avg", "exp_avg_sq"):
    for name, t in optimizer_tensors(Path(sys.argv[1]), key):
        n += t.numel()
dt = time.perf_counter() - t0
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(dt, peak)
"""
PEER = """
import resource, sys, time
from deepspeed.checkpoint import ds_to_universal
sys.argv = ["ds_to_universal", "--input_folder", sys.argv[1], "--output_folder", sys.argv[2], "--inject_missing_state"]
t0 = time.perf_counter()
ds_to_universal.main(ds_to_universal.parse_arguments())
dt = time.perf_counter() - t0
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(dt, peak)
"""


def emit(case, ours, peer, unit, **extra):
    ratio = ours / peer if (ours is not None and peer) else None
    print(json.dumps({"case": case, "ours": ours, "peer": peer, "ratio": ratio, "unit": unit, **extra}), flush=True)


def _consolidation_bench():
    """The 2-rank ZeRO-3 GPT-2-small checkpoint maker of the export benchmark (one recipe)."""
    path = REPO / "benchmarks" / "export" / "bench_consolidation_rss.py"
    spec = importlib.util.spec_from_file_location("bench_consolidation_rss", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_stall(root: Path, rounds: int) -> None:
    import torch
    import yaml

    from ptft_engine.config import load_run_config
    from ptft_engine.engine import Trainer

    torch.set_num_threads(2)
    root.mkdir(parents=True, exist_ok=True)
    model = _consolidation_bench().MODEL
    (root / "stall.yaml").write_text(yaml.safe_dump({
        "run": {"name": "stall", "max_steps": 1000, "log_every": 1000, "device": "cpu", "tensorboard": False,
                "progress_bar": False, "output_dir": str(root)},
        "model": model, "objective": {"name": "clm"},
        "data": {"synthetic": True, "batch_size": 1, "seq_len": 32, "vocab_size": model["vocab_size"]},
        "train": {"lr": 1.0e-4, "warmup_steps": 0}, "deepspeed": {"zero_stage": 2},
        "checkpoint": {"keep_last": 1, "async_save": True}}))
    trainer = Trainer(load_run_config(str(root / "stall.yaml"), []))
    try:
        trainer._train_step()  # the optimizer state exists: a full-size checkpoint
        saver = trainer.saver
        stalls = {"async": [], "sync": []}
        writes, busy_steps, idle_steps = [], [], []
        for _ in range(rounds):
            for mode in ("async", "sync"):
                trainer.saver = saver if mode == "async" else None
                trainer.state.step += 1
                t0 = time.perf_counter()
                trainer.save()
                stalls[mode].append(time.perf_counter() - t0)
                if mode == "async":
                    t1 = time.perf_counter()
                    trainer._train_step()  # a step while the files are written
                    busy_steps.append(time.perf_counter() - t1)
                    trainer.settle_saves()
                    writes.append(time.perf_counter() - t0)
                t1 = time.perf_counter()
                trainer._train_step()
                idle_steps.append(time.perf_counter() - t1)
        size = sum(p.stat().st_size for p in trainer.ckpt_dir.rglob("*") if p.is_file())
    finally:
        trainer.saver = saver
        trainer.close()
    emit("save_step_stall", statistics.median(stalls["async"]), statistics.median(stalls["sync"]), "s",
         model="gpt2-small 124M fp32 ZeRO-2, 1 CPU rank", checkpoint_bytes=size,
         async_background_write_s=statistics.median(writes), step_s_during_write=statistics.median(busy_steps),
         step_s_idle=statistics.median(idle_steps))


def run_measured(code: str, *args: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        raise SystemExit(f"conversion failed:\n{out.stderr[-3000:]}")
    seconds, kib = out.stdout.strip().splitlines()[-1].split()
    return float(seconds), int(kib) / 1024


def convert(root: Path, rounds: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    ckpt = _consolidation_bench().make_checkpoint(root)
    ours_t, ours_m, peer_t, peer_m = [], [], [], []
    for r in range(rounds):  # alternating, so both see the same machine load
        t, m = run_measured(OURS, str(ckpt))
        ours_t.append(t)
        ours_m.append(m)
        out = root / f"universal{r}"
        t, m = run_measured(PEER, str(ckpt), str(out))
        shutil.rmtree(out, ignore_errors=True)
        peer_t.append(t)
        peer_m.append(m)
    size = sum(p.stat().st_size for p in ckpt.iterdir() if p.is_file())
    common = dict(checkpoint=f"gpt2-small ZeRO-3, 2 ranks, {size / 2**30:.2f} GiB", peer_tool="ds_to_universal")
    emit("elastic_convert_time", statistics.median(ours_t), statistics.median(peer_t), "s", **common)
    emit("elastic_convert_peak_rss", max(ours_m), max(peer_m), "MiB", **common)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary directory)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["stall", "convert"], default=None)
    args = ap.parse_args()
    if args.only is None:  # each case in a fresh process: a child started from a process that
        # held the stall run's model would inherit its peak RSS (Linux keeps it across exec)
        for case in ("stall", "convert"):
            subprocess.run([sys.executable, __file__, "--only", case, "--rounds", str(args.rounds),
                            *(["--workdir", args.workdir] if args.workdir else [])], check=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        if args.only == "stall":
            save_stall(root / "stall", args.rounds)
        else:
            convert(root / "convert", args.rounds)


if __name__ == "__main__":
    main()
