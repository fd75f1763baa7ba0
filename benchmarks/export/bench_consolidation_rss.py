"""Peak memory of consolidating a ZeRO-3 checkpoint: `ptft export` vs DeepSpeed's zero_to_fp32.

Trains a GPT-2-small-sized decoder (124M parameters, fp32) for one step with ZeRO-3 on
2 CPU ranks (gloo), then consolidates its checkpoint, each tool in a fresh subprocess
that reports its own peak RSS (ru_maxrss), alternating ours and the peer, both at their
default settings (ours: safetensors, 2GB shards; DeepSpeed: pytorch_model.bin, 5GB shards.
Its safe_serialization=True refuses this model: GPT-2's tied lm_head shares memory with
the embeddings). The weights of both outputs are compared tensor by tensor (must be identical).

    python benchmarks/export/bench_consolidation_rss.py [--workdir DIR] [--rounds 2]

Prints one JSON object per case: {"case", "ours", "peer", "ratio", "unit", ...}.
Needs ~6 GB of free memory for the two training ranks, a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL = {"arch": "decoder", "style": "gpt2", "vocab_size": 50304, "hidden_size": 768, "num_hidden_layers": 12,
         "num_attention_heads": 12, "max_position_embeddings": 1024}

OURS = """
import resource, sys
from ptft_engine.export import export_checkpoint
export_checkpoint(sys.argv[1], sys.argv[2])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
PEER = """
import resource, sys
from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict
from pathlib import Path
ckpt = Path(sys.argv[1])
convert_zero_checkpoint_to_fp32_state_dict(str(ckpt.parent), sys.argv[2], tag=ckpt.name)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def train_rank(root: str) -> None:
    """One of the 2 training ranks (env RANK/WORLD_SIZE/MASTER_*)."""
    import torch

    torch.set_num_threads(1)
    from ptft_engine.config import load_run_config
    from ptft_engine.engine import Trainer

    cfg_file = Path(root) / "run.yaml"
    cfg = load_run_config(str(cfg_file), [])
    trainer = Trainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.close()


def make_checkpoint(root: Path) -> Path:
    import yaml

    (root / "run.yaml").write_text(yaml.safe_dump({
        "run": {"name": "gpt2s", "max_steps": 1, "log_every": 1, "device": "cpu", "tensorboard": False,
                "progress_bar": False, "output_dir": str(root)},
        "model": MODEL, "objective": {"name": "clm"},
        "data": {"synthetic": True, "batch_size": 1, "seq_len": 32, "vocab_size": MODEL["vocab_size"]},
        "train": {"lr": 1.0e-4, "warmup_steps": 0, "precision": "fp32"},
        "deepspeed": {"zero_stage": 3}, "checkpoint": {"every": 1, "keep_last": 1},
    }))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen([sys.executable, __file__, "--train-rank", str(root)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=open(root / f"rank{rank}.log", "w")))
    for rank, p in enumerate(procs):
        if p.wait(timeout=1800) != 0:
            raise SystemExit(f"training rank {rank} failed: see {root / f'rank{rank}.log'}")
    ckpts = sorted((root / "gpt2s" / "checkpoints").glob("step-*"))
    if not ckpts:
        raise SystemExit("no checkpoint written")
    return ckpts[-1]


def peak_rss_mb(code: str, *args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"consolidation failed:\n{out.stderr[-3000:]}")
    return int(out.stdout.strip().splitlines()[-1]) / 1024  # KiB -> MiB


def same_weights(ours_dir: Path, peer_dir: Path) -> bool:
    """Our export (HF GPT-2 names) loaded back into engine names vs DeepSpeed's state dict."""
    import torch

    from ptft_engine.export import load_export

    ours = load_export(ours_dir).model.state_dict()
    peer = {}
    for f in sorted(peer_dir.glob("pytorch_model*.bin")):
        peer.update(torch.load(f, map_location="cpu", weights_only=True))
    peer = {k.removeprefix("model."): v for k, v in peer.items()}
    return all(name in peer and torch.equal(t, peer[name]) for name, t in ours.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="keep the run here (default: a temporary directory)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating measurements per tool")
    ap.add_argument("--train-rank", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.train_rank:
        train_rank(args.train_rank)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        ckpt = make_checkpoint(root)
        size = sum(p.stat().st_size for p in ckpt.iterdir() if p.name.startswith("zero_pp_rank_"))
        ours, peer = [], []
        out_ours, out_peer = root / "ours", root / "peer"
        for _ in range(args.rounds):  # alternating, each in a fresh process
            for d in (out_ours, out_peer):
                shutil.rmtree(d, ignore_errors=True)
            ours.append(peak_rss_mb(OURS, str(ckpt), str(out_ours)))
            peer.append(peak_rss_mb(PEER, str(ckpt), str(out_peer)))
        identical = same_weights(out_ours, out_peer)
        for d in (out_ours, out_peer):
            shutil.rmtree(d, ignore_errors=True)
        print(json.dumps({
            "case": "zero3_consolidation_peak_rss (gpt2-small 124M, 2 ranks; peer: deepspeed zero_to_fp32 defaults)",
            "ours": round(max(ours), 1), "peer": round(max(peer), 1), "ratio": round(max(ours) / max(peer), 3),
            "unit": "MiB peak RSS",
            "rounds": {"ours": [round(x, 1) for x in ours], "peer": [round(x, 1) for x in peer]},
            "checkpoint_rank_files_MB": round(size / 1e6, 1), "weights_identical": identical}), flush=True)


if __name__ == "__main__":
    main()
