"""Timing shared by the op benchmarks (each script's folder is on sys.path when run)."""
from __future__ import annotations

import statistics
import time


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
