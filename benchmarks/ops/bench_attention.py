"""attention speed: our kernels vs torch.nn.functional.scaled_dot_product_attention.

--device cpu (default): (4, 8, 512, 64) fp32, the C++ cpu backend vs SDPA on CPU, causal
and not, forward and forward+backward, in milliseconds (ratio = peer / ours, so > 1 means
we are faster); calls alternate so both see the same machine load. One extra case packs
4 documents per row (segment_ids + causal), where SDPA needs an explicit boolean mask.
--device cuda: bf16, D = 128, S in {2048, 4096}, forward and backward TFLOP/s of the
triton and cuda backends vs SDPA's flash backend (ratio = ours / peer). FLOPs: 4*B*H*S^2*D
forward, half when causal, 2.5x that for backward.
Prints one JSON object per case; --json-out appends the same lines to a file.

    python benchmarks/ops/bench_attention.py [--device cpu|cuda] [--quick] [--json-out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from ptft_engine.ops import BackendUnavailable, attention  # noqa: E402
from ptft_engine.ops.attention.reference import visible_mask  # noqa: E402
from timing import time_cpu_pair  # noqa: E402


def emit(record: dict, json_out: str | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if json_out:
        with open(json_out, "a") as f:
            f.write(line + "\n")


def fwd_bwd(fn, q, k, v, do):
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    fn(q, k, v).backward(do)


def bench_cpu(args) -> None:
    b, h, s, d = 4, 8, 512, 64
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(b, h, s, d, generator=g) for _ in range(4))
    seg = (torch.arange(s) // (s // 4)).expand(b, s).contiguous()  # 4 packed documents per row
    packed_mask = visible_mask(b, s, s, q.device, causal=True, segment_ids=seg)  # (B, 1, S, S)
    cases = {
        "full": (dict(causal=False), dict(is_causal=False)),
        "causal": (dict(causal=True), dict(is_causal=True)),
        "packed4_causal": (dict(causal=True, segment_ids=seg), dict(attn_mask=packed_mask)),
    }
    repeats = 5 if args.quick else 15
    shape = f"{b}x{h}x{s}x{d}"
    for name, (our_kw, sdpa_kw) in cases.items():
        ours = lambda q, k, v: attention(q, k, v, backend="cpu", **our_kw)  # noqa: E731
        peer = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **sdpa_kw)  # noqa: E731
        with torch.no_grad():
            t_ours, t_peer = (t * 1e3 for t in time_cpu_pair(lambda: ours(q, k, v), lambda: peer(q, k, v), repeats))
        emit({"case": f"attention_cpu_fwd_{name}_fp32_{shape}", "ours": round(t_ours, 3), "peer": round(t_peer, 3),
              "ratio": round(t_peer / t_ours, 3), "unit": "ms (peer: torch SDPA cpu; ratio = peer/ours)",
              "threads": torch.get_num_threads()}, args.json_out)
        t_ours, t_peer = (t * 1e3 for t in time_cpu_pair(lambda: fwd_bwd(ours, q, k, v, do),
                                                         lambda: fwd_bwd(peer, q, k, v, do), max(3, repeats // 2)))
        emit({"case": f"attention_cpu_fwdbwd_{name}_fp32_{shape}", "ours": round(t_ours, 3),
              "peer": round(t_peer, 3), "ratio": round(t_peer / t_ours, 3),
              "unit": "ms (peer: torch SDPA cpu; ratio = peer/ours)", "threads": torch.get_num_threads()},
             args.json_out)


def cuda_ms(fn, repeats: int) -> float:
    for _ in range(3):  # warm-up, including Triton autotuning on the first call
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_cuda(args) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    repeats = 5 if args.quick else 20
    dtype, d, h = torch.bfloat16, 128, 16
    for s, b in ((2048, 4), (4096, 2)):
        q, k, v, do = (torch.randn(b, h, s, d, device="cuda", dtype=dtype) for _ in range(4))
        for causal in (False, True):
            fwd_flops = 4 * b * h * s * s * d * (0.5 if causal else 1.0)
            runs = {}
            for name in ("sdpa_flash", "triton", "cuda"):
                if name == "sdpa_flash":
                    def fn(q, k, v, causal=causal):
                        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                else:
                    fn = lambda q, k, v, name=name, causal=causal: attention(q, k, v, causal=causal, backend=name)  # noqa: E731
                try:
                    with torch.no_grad():
                        t_fwd = cuda_ms(lambda: fn(q, k, v), repeats)
                    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
                    out = fn(qg, kg, vg)
                    t_bwd = cuda_ms(lambda: torch.autograd.grad(out, (qg, kg, vg), do, retain_graph=True), repeats)
                except (BackendUnavailable, RuntimeError) as exc:
                    runs[name] = str(exc).splitlines()[0]
                    continue
                runs[name] = (fwd_flops / t_fwd / 1e9, 2.5 * fwd_flops / t_bwd / 1e9)  # TFLOP/s
            peer = runs["sdpa_flash"]
            for name in ("triton", "cuda"):
                for i, phase in enumerate(("fwd", "bwd")):
                    case = f"attention_cuda_{phase}_{name}_{'causal' if causal else 'full'}_bf16_{b}x{h}x{s}x{d}"
                    ours = runs[name]
                    if isinstance(ours, str) or isinstance(peer, str):
                        emit({"case": case, "ours": None, "peer": None, "ratio": None, "unit": "TFLOP/s",
                              "error": ours if isinstance(ours, str) else peer}, args.json_out)
                        continue
                    emit({"case": case, "ours": round(ours[i], 2), "peer": round(peer[i], 2),
                          "ratio": round(ours[i] / peer[i], 3), "unit": "TFLOP/s (peer: SDPA flash)"}, args.json_out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--json-out", help="also append the JSON lines to this file")
    args = p.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("bench_attention: --device cuda needs a CUDA device")
        bench_cuda(args)
    else:
        bench_cpu(args)


if __name__ == "__main__":
    main()
