"""Benchmark: the DeepSpeed engine against a plain PyTorch loop, and ZeRO-3's memory saving.

Cases (one JSON object each, ours and the peer measured in this run):
- engine_step_time: median step time of `Trainer._train_step` (ZeRO stage 0, fp32, 1 rank)
  vs a plain loop (forward, backward, clip_grad_norm_, AdamW step) on the same GPT-style
  model, synthetic batches and optimizer settings; ratio = overhead (goal <= 1.10).
- zero3_param_optim_bytes_per_rank: bytes of parameters + optimizer state held by one rank
  of a 2-rank run under ZeRO-3 vs stage 0 (distinct storages, after one step); goal ~0.5.
- --device cuda: a ~1.3B GPT-2-style model (configs/models/gpt2-1.3b.yaml), bf16, seq 2048:
  engine vs plain-loop tokens/s, and the engine's MFU (goal >= 0.40 on an H100/H200).

    python benchmarks/e2e/bench_engine.py [--device cpu|cuda] [--dry] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

JSON_OUT: str | None = None


def emit(case, ours, peer, unit, **extra):
    ratio = ours / peer if (ours is not None and peer) else None
    line = json.dumps({"case": case, "ours": ours, "peer": peer, "ratio": ratio, "unit": unit, **extra})
    print(line, flush=True)
    if JSON_OUT:
        with open(JSON_OUT, "a") as f:
            f.write(line + "\n")


def model_overrides(device: str, quick: bool) -> tuple[list[str], dict]:
    if device == "cuda":
        model = "configs/models/gpt2-1.3b.yaml"
        shape = dict(batch=8 if not quick else 4, seq=2048, vocab=50304)
        extra = ["train.precision=bf16", "train.activation_checkpointing=true"]
    else:
        model = "configs/models/gpt2-tiny.yaml"
        shape = dict(batch=8, seq=128, vocab=128)
        extra = ["model.hidden_size=128", "model.num_hidden_layers=4", "model.num_attention_heads=4",
                 "model.max_position_embeddings=128"]
    over = [f"model={model}", "objective.name=clm", "data.synthetic=true", f"data.batch_size={shape['batch']}",
            f"data.seq_len={shape['seq']}", f"data.vocab_size={shape['vocab']}", "run.progress_bar=false",
            "run.tensorboard=false", "run.log_every=1000000", "checkpoint.save_at_end=false",
            "train.lr=1e-3", "train.warmup_steps=0", "train.clip_grad=1.0", f"run.device={device}", *extra]
    return over, shape


def load_cfg(overrides, tmp):
    from ptft_engine.config import load_run_config
    from ptft_engine.config.loader import read_yaml
    model_path = next(o for o in overrides if o.startswith("model=")).split("=", 1)[1]
    rest = [o for o in overrides if not o.startswith("model=")]
    recipe = Path(tmp) / "bench.yaml"
    import yaml
    recipe.write_text(yaml.safe_dump({"model": read_yaml(ROOT / model_path), "run": {"output_dir": str(tmp)}}))
    return load_run_config(recipe, rest)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


class PlainLoop:
    """The same model, data and optimizer settings in a textbook PyTorch loop."""

    def __init__(self, cfg, device):
        from ptft_engine.engine.setup import build_objective_from_config, param_groups
        from ptft_engine.engine.synthetic import SyntheticLoader
        torch.manual_seed(cfg.run.seed)
        self.cfg, self.dev = cfg, torch.device(device)
        with self.dev:
            self.model = build_objective_from_config(cfg)
        # mixed precision the plain way: fp32 weights, bf16 autocast (DeepSpeed keeps fp32 masters too)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                                       enabled=device == "cuda" and cfg.train.precision == "bf16")
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.train.weight_decay), lr=cfg.train.lr,
                                     betas=cfg.train.betas, eps=cfg.train.eps,
                                     fused=True if device == "cuda" else None)
        self.data = iter(SyntheticLoader(cfg.data, objective="clm"))

    def step(self):
        batch = {k: v.to(self.dev) for k, v in next(self.data).items()}
        with self.autocast:
            out = self.model(batch)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return out["loss"].item()  # the engine reads the loss every step too


def timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def bench_step_time(device, quick, dry=False):
    """dry: the GPU run's steps (ZeRO-1, throughput and MFU rows) with the tiny CPU model, for gpu_check's dry mode."""
    from ptft_engine.engine import Trainer
    gpu_path = device == "cuda" or dry
    steps, warmup = (2, 1) if dry else (6, 2) if device == "cuda" else ((15, 3) if quick else (40, 5))
    with tempfile.TemporaryDirectory() as tmp:
        over, shape = model_overrides(device, quick)
        cfg = load_cfg([*over, "deepspeed.zero_stage=1" if gpu_path else "deepspeed.zero_stage=0"], tmp)
        plain = PlainLoop(cfg, device)
        trainer = Trainer(cfg)
        # alternate the two step by step, so both see the same machine load
        t_plain, t_engine = [], []
        for i in range(warmup + steps):
            tp, te = timed(plain.step, device), timed(trainer._train_step, device)
            if i >= warmup:
                t_plain.append(tp)
                t_engine.append(te)
        flops_per_token = trainer.flops_per_unit
        trainer.close()
    engine, plain = statistics.median(t_engine), statistics.median(t_plain)
    emit("engine_step_time", engine, plain, "s/step", device=device, batch=shape["batch"], seq=shape["seq"],
         zero_stage=cfg.deepspeed.zero_stage, goal="ratio <= 1.10")
    if gpu_path:
        tokens = shape["batch"] * shape["seq"]
        emit("gpt_1b_tokens_per_s", tokens / engine, tokens / plain, "tokens/s", device=device)
        from ptft_engine.engine.metrics import peak_tflops
        peak = peak_tflops(torch.device(device), None)
        mfu = flops_per_token * tokens / engine / (peak * 1e12) if peak else None
        mfu_plain = flops_per_token * tokens / plain / (peak * 1e12) if peak else None
        emit("gpt_1b_mfu", mfu, mfu_plain, "fraction of peak", device=device, peak_tflops=peak, goal=">= 0.40")


# ------------------------------------------------------------------ ZeRO-3 memory (2 ranks)
def storage_bytes(engine) -> int:
    """Distinct storages of this rank's parameters (their ZeRO-3 shards) and optimizer state."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if torch.is_tensor(t) and t.numel() > 0:
            s = t.untyped_storage()
            if s.data_ptr() not in seen:
                seen.add(s.data_ptr())
                total += s.nbytes()
    for p in engine.module.parameters():
        add(getattr(p, "ds_tensor", p))
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for group in base.param_groups:
        for p in group["params"]:
            add(p)
    for state in base.state.values():
        for v in state.values():
            add(v)
    return total


def memory_worker(stage: int, out: str) -> None:
    import torch.distributed as dist

    from ptft_engine.engine import Trainer
    with tempfile.TemporaryDirectory() as tmp:
        over, _ = model_overrides("cpu", True)
        cfg = load_cfg([*over, f"deepspeed.zero_stage={stage}", "run.name=mem"], tmp)
        trainer = Trainer(cfg)
        trainer._train_step()
        nbytes = torch.tensor([float(storage_bytes(trainer.engine))])
        per_rank = [torch.zeros(1) for _ in range(dist.get_world_size())]
        dist.all_gather(per_rank, nbytes)
        if dist.get_rank() == 0:
            Path(out).write_text(json.dumps([float(x) for x in per_rank]))
        trainer.close()


def bench_zero3_memory():
    results = {}
    for stage in (0, 3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = tempfile.mktemp(suffix=".json")
        procs = []
        for rank in range(2):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
            procs.append(subprocess.Popen([sys.executable, __file__, "--memory-worker", str(stage), out], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for p in procs:
            _, err = p.communicate(timeout=600)
            if p.returncode:
                raise SystemExit(f"memory worker (stage {stage}) failed: {err.decode()[-2000:]}")
        results[stage] = max(json.loads(Path(out).read_text()))
        os.unlink(out)
    emit("zero3_param_optim_bytes_per_rank", results[3], results[0], "bytes", world_size=2, goal="ratio ~0.5")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json-out", help="also append the JSON lines to this file")
    p.add_argument("--dry", action="store_true", help="the GPU run's rows with a tiny model on the CPU "
                   "(benchmarks/gpu_check.sh's dry mode)")
    p.add_argument("--memory-worker", nargs=2, metavar=("STAGE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    global JSON_OUT
    JSON_OUT = args.json_out
    if args.memory_worker:
        memory_worker(int(args.memory_worker[0]), args.memory_worker[1])
        return
    if args.dry:
        args.device = "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_engine: --device cuda needs a CUDA device")
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        bench_step_time(args.device, args.quick, args.dry)
    except Exception as exc:
        # a failed run is a result row too (gpu_check.sh's summary counts error rows); the exit status still fails
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        emit("engine_step_time", None, None, "s/step", device=args.device, error=f"{type(exc).__name__}: {first}")
        raise
    if args.device == "cpu" and not args.dry:
        bench_zero3_memory()


if __name__ == "__main__":
    main()
