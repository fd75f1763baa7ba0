"""Benchmark: chunked contrastive loss (fwd + bwd) against the naive full-matrix loss.

CPU (default): N=8192, D=512 fp32, symmetric CLIP loss; ours = the C++ cpu backend,
peer = plain PyTorch building the (N, N) logits (reference backend). Each variant runs
in a fresh subprocess that reports its peak RSS growth over one fwd+bwd (after a small
warm-up, so library start-up costs are excluded for both) and the median time of
--repeats fwd+bwd passes. Goals: time <= 1.5x naive, peak memory <= 1/8 of naive.

CUDA: N=65536, D=512 in bf16 and fp32; cuda and triton backends vs naive, time by CUDA
events and torch.cuda.max_memory_allocated growth; naive is skipped (noted in the JSON)
when it runs out of memory.

    python benchmarks/ops/bench_contrastive.py [--device cpu|cuda] [--quick] [--json-out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from ptft_engine.ops.contrastive import op  # noqa: E402


def _inputs(n, d, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device=device, dtype=dtype)
    b = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device=device, dtype=dtype)
    return a, b


def _fwd_bwd(backend, a0, b0):
    a, b = a0.detach().requires_grad_(), b0.detach().requires_grad_()
    s = torch.tensor(1 / 0.07, device=a0.device, requires_grad=True)
    loss = op.clip_loss_on(backend, a, b, s, True, op.DEFAULT_CHUNK)
    loss.backward()
    return loss.detach()


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def cpu_variant(backend, n, d, repeats):
    """Runs in a fresh process: (peak RSS growth of one fwd+bwd in MiB, median seconds)."""
    _fwd_bwd(backend, *_inputs(256, d, torch.float32, "cpu"))  # warm up BLAS / allocator
    a, b = _inputs(n, d, torch.float32, "cpu")
    base = _rss_mib()
    t0 = time.perf_counter()
    _fwd_bwd(backend, a, b)
    times = [time.perf_counter() - t0]
    growth = _rss_mib() - base
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        _fwd_bwd(backend, a, b)
        times.append(time.perf_counter() - t0)
    return {"peak_rss_growth_mib": growth, "seconds": statistics.median(times), "threads": torch.get_num_threads()}


def _in_subprocess(backend, n, d, repeats):
    code = ("import json, sys; sys.path.insert(0, %r); from benchmarks.ops.bench_contrastive import cpu_variant; "
            "print(json.dumps(cpu_variant(%r, %d, %d, %d)))" % (ROOT, backend, n, d, repeats))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_cpu(quick, repeats):
    n, d = (2048, 512) if quick else (8192, 512)
    ours, naive = _in_subprocess("cpu", n, d, repeats), _in_subprocess("reference", n, d, repeats)
    tag = f"contrastive_loss cpu N={n} D={d} fp32 symmetric fwd+bwd"
    return [
        {"case": f"{tag} time", "ours": ours["seconds"], "peer": naive["seconds"],
         "ratio": ours["seconds"] / naive["seconds"], "unit": "s (median)", "goal": "ratio <= 1.5",
         "peer_name": "naive full-matrix PyTorch", "threads": ours["threads"], "chunk": op.DEFAULT_CHUNK},
        {"case": f"{tag} peak memory", "ours": ours["peak_rss_growth_mib"], "peer": naive["peak_rss_growth_mib"],
         "ratio": ours["peak_rss_growth_mib"] / naive["peak_rss_growth_mib"], "unit": "MiB peak RSS growth",
         "goal": "ratio <= 0.125", "peer_name": "naive full-matrix PyTorch", "chunk": op.DEFAULT_CHUNK},
    ]


def _cuda_variant(backend, a, b, repeats):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _fwd_bwd(backend, a, b)  # also the warm-up (Triton compile)
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        _fwd_bwd(backend, a, b)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return {"seconds": statistics.median(times), "peak_mib": peak}


def bench_cuda(quick, repeats):
    n, d = (8192, 512) if quick else (65536, 512)
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        a, b = _inputs(n, d, dtype, "cuda")
        try:
            naive, note = _cuda_variant("reference", a, b, repeats), None
        except torch.OutOfMemoryError as exc:
            naive, note = None, f"naive skipped: out of memory ({str(exc).splitlines()[0]})"
        torch.cuda.empty_cache()
        for backend in ("cuda", "triton"):
            try:
                ours = _cuda_variant(backend, a, b, repeats)
            except Exception as exc:  # an unavailable backend is a result, not a crash
                rows.append({"case": f"contrastive_loss {backend} N={n} D={d} {dtype}", "ours": None, "peer": None,
                             "ratio": None, "unit": "s", "note": f"{backend} failed: {exc}"})
                continue
            tag = f"contrastive_loss {backend} N={n} D={d} {str(dtype).replace('torch.', '')} symmetric fwd+bwd"
            for key, unit, what in (("seconds", "s (median)", "time"), ("peak_mib", "MiB max_memory_allocated growth", "peak memory")):
                peer = naive[key] if naive else None
                row = {"case": f"{tag} {what}", "ours": ours[key], "peer": peer,
                       "ratio": ours[key] / peer if peer else None, "unit": unit, "peer_name": "naive full-matrix PyTorch"}
                if note:
                    row["note"] = note
                rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="smaller N for a fast smoke run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json-out", help="append the JSON lines to this file")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    rows = bench_cpu(args.quick, args.repeats) if args.device == "cpu" else bench_cuda(args.quick, args.repeats)
    for row in rows:
        line = json.dumps(row)
        print(line, flush=True)
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
