"""Training step time with run.compile (torch.compile of the objective's forward) against eager, on CPU.

Cases: gpt2-tiny CLM and bert-tiny MLM from configs/ (synthetic batches, batch and sequence length
as there unless --batch/--seq), one step = forward + backward + AdamW step, median over --repeats
steps after --warmup steps (the first compiled steps compile). ours = compiled ms, peer = eager ms,
ratio = peer / ours (> 1: compiling helps). Prints one JSON row per case; --json-out appends them.

    python benchmarks/ops/bench_compile.py [--backend inductor|aot_eager] [--quick] [--json-out PATH]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from timing import emit, error_row, sig  # noqa: E402

from ptft_engine.config import load_run_config  # noqa: E402
from ptft_engine.engine.setup import build_objective_from_config, compile_objective, make_loader  # noqa: E402

CASES = {"gpt2-tiny clm": "clm_tiny.yaml", "bert-tiny mlm": "mlm_tiny.yaml"}


def step_times(cfg, compiled: bool, backend: str, warmup: int, repeats: int) -> list[float]:
    torch.manual_seed(0)
    objective = build_objective_from_config(cfg)
    if compiled:
        compile_objective(objective, backend)  # as the engine does for run.compile
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-3)
    batches = iter(make_loader(cfg, rank=0, world_size=1, epoch=0))
    times = []
    for i in range(warmup + repeats):
        batch = next(batches)
        t0 = time.perf_counter()
        loss = objective(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="inductor", choices=("inductor", "aot_eager"))
    p.add_argument("--quick", action="store_true", help="fewer steps")
    p.add_argument("--batch", type=int, help="override data.batch_size")
    p.add_argument("--seq", type=int, help="override data.seq_len")
    p.add_argument("--json-out", help="also append the JSON lines to this file")
    args = p.parse_args(argv)
    warmup, repeats = (3, 10) if args.quick else (5, 40)
    for case, config in CASES.items():
        overrides = [f"data.batch_size={args.batch}"] if args.batch else []
        overrides += [f"data.seq_len={args.seq}"] if args.seq else []
        cfg = load_run_config(os.path.join(ROOT, "configs", config), overrides)
        name = f"train step {case} cpu b{cfg.data.batch_size} s{cfg.data.seq_len} compile({args.backend}) vs eager"
        try:
            ours = statistics.median(step_times(cfg, True, args.backend, warmup, repeats)) * 1e3
            peer = statistics.median(step_times(cfg, False, args.backend, warmup, repeats)) * 1e3
        except Exception as exc:  # noqa: BLE001 - a case that fails is a row, the next still runs
            emit(error_row(name, exc, "ms"), args.json_out)
            continue
        emit({"case": name, "ours": sig(ours), "peer": sig(peer), "ratio": sig(peer / ours),
              "unit": "ms per step (peer: eager; ratio = peer/ours)", "threads": torch.get_num_threads()},
             args.json_out)


if __name__ == "__main__":
    main()
