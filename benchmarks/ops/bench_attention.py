"""attention speed: our kernels vs torch.nn.functional.scaled_dot_product_attention.

--device cpu (default): (4, 8, 512, 64) fp32, the C++ cpu backend vs SDPA on CPU, causal
and not, forward and forward+backward, in milliseconds (ratio = peer / ours, so > 1 means
we are faster); calls alternate so both see the same machine load. One extra case packs
4 documents per row (segment_ids + causal), where SDPA needs an explicit boolean mask, and
one is grouped-query (Hkv = H / 4 key/value heads, causal): our kernel reads the shared heads in
place, SDPA gets them with enable_gqa=True.
--device cuda: bf16, D = 128, S in {2048, 4096}, full, causal, 4 packed documents per row and
grouped-query causal (H / 4 kv heads): forward, backward and forward+backward TFLOP/s of the
triton and cuda backends vs SDPA (flash; with the packed rows' mask SDPA picks its masked
kernel, with grouped heads whichever takes enable_gqa), ratio = ours / peer.
FLOPs: 4*B*H*S^2*D forward, half when causal, 2.5x that for backward. --dry runs these
cases tiny on the CPU (fp32, Triton interpreted) so the GPU path is exercised without a GPU.
Prints one JSON object per case as it is measured; --json-out appends the same lines to a file.

    python benchmarks/ops/bench_attention.py [--device cpu|cuda] [--dry] [--quick] [--json-out PATH]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from timing import emit, error_row, gpu_target, sig, time_cpu_pair, time_device  # noqa: E402

from ptft_engine.ops import attention  # noqa: E402
from ptft_engine.ops.attention.reference import visible_mask  # noqa: E402


def fwd_bwd(fn, q, k, v, do):
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    fn(q, k, v).backward(do)


def bench_cpu(args) -> None:
    b, h, s, d = 4, 8, 512, 64
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(b, h, s, d, generator=g) for _ in range(4))
    _bench_cpu_cases(args, q, k, v, do)
    h_kv = h // 4  # grouped-query: 4 query heads per key/value head
    _bench_cpu_cases(args, q, k[:, :h_kv].contiguous(), v[:, :h_kv].contiguous(), do)


def _bench_cpu_cases(args, q, k, v, do) -> None:
    b, h, s, d = q.shape
    h_kv = k.shape[1]
    seg = (torch.arange(s) // (s // 4)).expand(b, s).contiguous()  # 4 packed documents per row
    packed_mask = visible_mask(b, s, s, q.device, causal=True, segment_ids=seg)  # (B, 1, S, S)
    cases = {
        "full": (dict(causal=False), dict(is_causal=False)),
        "causal": (dict(causal=True), dict(is_causal=True)),
        "packed4_causal": (dict(causal=True, segment_ids=seg), dict(attn_mask=packed_mask)),
    }
    shape = f"{b}x{h}x{s}x{d}"
    if h_kv != h:  # the grouped-query run: one causal case, SDPA broadcasting the kv heads itself
        cases = {f"gqa{h // h_kv}_causal": (dict(causal=True), dict(is_causal=True, enable_gqa=True))}
        shape = f"{b}x{h}kv{h_kv}x{s}x{d}"
    repeats = 5 if args.quick else 15
    for name, (our_kw, sdpa_kw) in cases.items():
        ours = lambda q, k, v, kw=our_kw: attention(q, k, v, backend="cpu", **kw)  # noqa: E731
        peer = lambda q, k, v, kw=sdpa_kw: F.scaled_dot_product_attention(q, k, v, **kw)  # noqa: E731
        with torch.no_grad():
            t_ours, t_peer = (t * 1e3 for t in time_cpu_pair(lambda f=ours: f(q, k, v), lambda f=peer: f(q, k, v),
                                                             repeats))
        emit({"case": f"attention_cpu_fwd_{name}_fp32_{shape}", "ours": round(t_ours, 3), "peer": round(t_peer, 3),
              "ratio": round(t_peer / t_ours, 3), "unit": "ms (peer: torch SDPA cpu; ratio = peer/ours)",
              "threads": torch.get_num_threads()}, args.json_out)
        t_ours, t_peer = (t * 1e3 for t in time_cpu_pair(lambda f=ours: fwd_bwd(f, q, k, v, do),
                                                         lambda f=peer: fwd_bwd(f, q, k, v, do), max(3, repeats // 2)))
        emit({"case": f"attention_cpu_fwdbwd_{name}_fp32_{shape}", "ours": round(t_ours, 3),
              "peer": round(t_peer, 3), "ratio": round(t_peer / t_ours, 3),
              "unit": "ms (peer: torch SDPA cpu; ratio = peer/ours)", "threads": torch.get_num_threads()},
             args.json_out)


def gpu_cases(dry: bool):
    """(B, H, S, D) shapes of the GPU run; --dry: tiny ones that the Triton interpreter finishes in seconds."""
    return ((1, 2, 64, 32),) if dry else ((4, 16, 2048, 128), (2, 16, 4096, 128))


def bench_cuda(args) -> None:
    """Forward, backward and forward+backward TFLOP/s of the triton and cuda backends vs SDPA, per case; a case
    that fails (compile error, unavailable backend) is written as an error row and the rest still run."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    device, dtype = gpu_target(args.dry)
    repeats = 2 if args.dry else (5 if args.quick else 20)
    for b, h, s, d in gpu_cases(args.dry):
        g = torch.Generator().manual_seed(0)
        q, k, v, do = (torch.randn(b, h, s, d, generator=g).to(device, dtype) for _ in range(4))
        seg = (torch.arange(s, device=device) // (s // 4)).expand(b, s).contiguous()  # 4 packed documents per row
        packed_mask = visible_mask(b, s, s, q.device, causal=True, segment_ids=seg)  # (B, 1, S, S)

        def sdpa(q, k, v, causal, mask=None):
            if mask is not None:  # flash cannot take a mask: SDPA picks its masked kernel itself
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            if k.shape[1] != q.shape[1]:  # grouped heads: SDPA picks a kernel that broadcasts them
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        h_kv = max(1, h // 4)
        for layout in ("full", "causal", "packed4_causal", "gqa4_causal"):
            causal = layout != "full"
            kv = (k[:, :h_kv].contiguous(), v[:, :h_kv].contiguous()) if layout.startswith("gqa") else (k, v)
            # FLOPs of the dense (causal: half) problem for every contender, so TFLOP/s compare like for like
            fwd_flops = 4 * b * h * s * s * d * (0.5 if causal else 1.0)
            if layout == "packed4_causal":
                peer_fn = lambda q, k, v, mask=packed_mask: sdpa(q, k, v, True, mask)  # noqa: E731
                our_kw = dict(causal=True, segment_ids=seg)
            else:
                peer_fn = lambda q, k, v, causal=causal: sdpa(q, k, v, causal)  # noqa: E731
                our_kw = dict(causal=causal)
            peer = _tflops(peer_fn, q, *kv, do, fwd_flops, repeats, device)
            for name in ("triton", "cuda"):
                fn = lambda q, k, v, name=name, kw=our_kw: attention(q, k, v, backend=name, **kw)  # noqa: E731
                ours = _tflops(fn, q, *kv, do, fwd_flops, repeats, device)
                for phase in ("fwd", "bwd", "fwdbwd"):
                    case = f"attention_{device}_{phase}_{name}_{layout}_{str(dtype)[6:]}_{b}x{h}x{s}x{d}"
                    unit = "TFLOP/s (peer: SDPA, flash where no mask)"
                    bad = ours if isinstance(ours, BaseException) else peer if isinstance(peer, BaseException) else None
                    if bad is not None:
                        emit(error_row(case, bad, unit), args.json_out)
                        continue
                    emit({"case": case, "ours": sig(ours[phase]), "peer": sig(peer[phase]),
                          "ratio": sig(ours[phase] / peer[phase]), "unit": unit}, args.json_out)


def _tflops(fn, q, k, v, do, fwd_flops, repeats, device):
    """{phase: TFLOP/s} of fn, or the exception it raised (any kind: Triton compile errors are not RuntimeErrors)."""
    try:
        with torch.no_grad():
            t_fwd = time_device(lambda: fn(q, k, v), repeats, device)
        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
        out = fn(qg, kg, vg)
        t_bwd = time_device(lambda: torch.autograd.grad(out, (qg, kg, vg), do, retain_graph=True), repeats, device)
    except Exception as exc:  # noqa: BLE001 - recorded as the case's result
        return exc
    return {"fwd": fwd_flops / t_fwd / 1e12, "bwd": 2.5 * fwd_flops / t_bwd / 1e12,
            "fwdbwd": 3.5 * fwd_flops / (t_fwd + t_bwd) / 1e12}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--json-out", help="also append the JSON lines to this file")
    p.add_argument("--dry", action="store_true", help="with --device cuda: the GPU cases on the CPU, tiny, "
                   "fp32, Triton interpreted (benchmarks/gpu_check.sh's dry mode)")
    args = p.parse_args()
    if args.dry:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if args.device == "cuda":
        if not args.dry and not torch.cuda.is_available():
            sys.exit("bench_attention: --device cuda needs a CUDA device")
        bench_cuda(args)
    else:
        bench_cpu(args)


if __name__ == "__main__":
    main()
