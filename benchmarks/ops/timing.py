"""Timing and output shared by the op benchmarks (each script's folder is on sys.path when run)."""
from __future__ import annotations

import json
import statistics
import time

import torch


def time_cpu_pair(ours, peer, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """Median seconds of each, alternating calls so both see the same machine load."""
    for _ in range(warmup):
        ours()
        peer()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, acc in ((ours, times[0]), (peer, times[1])):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def time_device(fn, repeats: int, device: str, warmup: int = 3) -> float:
    """Median seconds of fn(): CUDA events on a GPU; the wall clock on a CPU (gpu_check's dry mode)."""
    for _ in range(warmup):  # includes Triton autotuning and compilation on the first call
        fn()
    if device != "cuda":
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def emit(record: dict, json_out: str | None) -> None:
    """Print one JSON row and append it to json_out at once, so a run cut short keeps every row it measured."""
    line = json.dumps(record)
    print(line, flush=True)
    if json_out:
        with open(json_out, "a") as f:
            f.write(line + "\n")


def sig(x: float, digits: int = 4) -> float:
    """x to a few significant digits: the same rule for H200 TFLOP/s and the dry run's tiny figures."""
    return float(f"{x:.{digits}g}")


def error_row(case: str, exc: BaseException, unit: str) -> dict:
    """A failed case is a result (first line of the error), never the end of the benchmark."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return {"case": case, "ours": None, "peer": None, "ratio": None, "unit": unit,
            "error": f"{type(exc).__name__}: {first}"}


def gpu_target(dry: bool) -> tuple[str, torch.dtype]:
    """(device, dtype) of a GPU case: cuda + bf16, or under --dry the CPU + fp32 (the Triton interpreter has no
    bf16 arithmetic), so the GPU code paths run, tiny, on a machine without one."""
    return ("cpu", torch.float32) if dry else ("cuda", torch.bfloat16)
