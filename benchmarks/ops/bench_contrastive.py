"""Benchmark: chunked contrastive loss (fwd + bwd) against the naive full-matrix loss.

CPU (default): N=8192, D=512 fp32, symmetric CLIP loss; ours = the C++ cpu backend,
peer = plain PyTorch building the (N, N) logits (reference backend). Each variant runs
in a fresh subprocess that reports its peak RSS growth over one fwd+bwd (after a small
warm-up, so library start-up costs are excluded for both) and the median time of
--repeats fwd+bwd passes. Goals: time <= 1.5x naive, peak memory <= 1/8 of naive.

CUDA: N=65536, D=512 in bf16 and fp32; cuda and triton backends vs naive, time by CUDA
events and torch.cuda.max_memory_allocated growth; naive is skipped (noted in the JSON)
when it runs out of memory. Rows are written as they are measured; --dry runs the CUDA
cases tiny on the CPU (fp32, Triton interpreted) for benchmarks/gpu_check.sh's dry mode.

    python benchmarks/ops/bench_contrastive.py [--device cpu|cuda] [--dry] [--quick] [--json-out PATH]
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # timing.py, also when imported by a subprocess

from timing import emit, error_row, gpu_target, time_device  # noqa: E402

from ptft_engine.ops.contrastive import op  # noqa: E402


def _inputs(n, d, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device=device, dtype=dtype)
    b = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device=device, dtype=dtype)
    return a, b


def _fwd_bwd(backend, a0, b0):
    a, b = a0.detach().requires_grad_(), b0.detach().requires_grad_()
    s = torch.tensor(1 / 0.07, device=a0.device, requires_grad=True)
    loss = op.contrastive_loss(a, b, s, symmetric=True, chunk_size=op.DEFAULT_CHUNK, backend=backend)
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
    code = (f"import json, sys; sys.path.insert(0, {ROOT!r}); "
            "from benchmarks.ops.bench_contrastive import cpu_variant; "
            f"print(json.dumps(cpu_variant({backend!r}, {n:d}, {d:d}, {repeats:d})))")
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


def _gpu_variant(backend, a, b, repeats, device):
    """{seconds, peak_mib} of one fwd+bwd; peak memory is CUDA's allocator growth (None on the dry run's CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    _fwd_bwd(backend, a, b)  # also the warm-up (Triton compile)
    peak = None
    if device == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return {"seconds": time_device(lambda: _fwd_bwd(backend, a, b), repeats, device, warmup=0), "peak_mib": peak}


def bench_cuda(quick, repeats, dry, json_out):
    """cuda and triton backends vs the naive loss, each row written as soon as it is measured; a failing backend
    is an error row. --dry: tiny, fp32, on the CPU with Triton interpreted."""
    device, low = gpu_target(dry)
    n, d = (48, 32) if dry else ((8192, 512) if quick else (65536, 512))
    repeats = 1 if dry else repeats
    for dtype in (low, torch.float32) if low != torch.float32 else (torch.float32,):
        a, b = _inputs(n, d, dtype, device)
        try:
            naive, note = _gpu_variant("reference", a, b, repeats, device), None
        except torch.OutOfMemoryError as exc:
            naive, note = None, f"naive skipped: out of memory ({str(exc).splitlines()[0]})"
        if device == "cuda":
            torch.cuda.empty_cache()
        for backend in ("cuda", "triton"):
            dtype_name = str(dtype).replace("torch.", "")
            tag = f"contrastive_loss {backend} {device} N={n} D={d} {dtype_name} symmetric fwd+bwd"
            try:
                ours = _gpu_variant(backend, a, b, repeats, device)
            except Exception as exc:  # noqa: BLE001 - an unavailable backend is a result, not a crash
                emit(error_row(tag, exc, "s"), json_out)
                continue
            for key, unit, what in (("seconds", "s (median)", "time"),
                                    ("peak_mib", "MiB max_memory_allocated growth", "peak memory")):
                peer = naive[key] if naive else None
                if ours[key] is None:
                    continue  # no allocator statistics on the dry run's CPU
                row = {"case": f"{tag} {what}", "ours": ours[key], "peer": peer,
                       "ratio": ours[key] / peer if peer else None, "unit": unit,
                       "peer_name": "naive full-matrix PyTorch"}
                if note:
                    row["note"] = note
                emit(row, json_out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="smaller N for a fast smoke run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json-out", help="append the JSON lines to this file")
    p.add_argument("--dry", action="store_true", help="with --device cuda: the GPU cases on the CPU, tiny, "
                   "Triton interpreted (benchmarks/gpu_check.sh's dry mode)")
    args = p.parse_args(argv)
    if args.dry:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if args.device == "cuda" and not args.dry and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if args.device == "cuda":
        bench_cuda(args.quick, args.repeats, args.dry, args.json_out)
        return
    for row in bench_cpu(args.quick, args.repeats):
        emit(row, args.json_out)


if __name__ == "__main__":
    main()
