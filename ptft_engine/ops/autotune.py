"""Autotuned launch configs that every rank shares, so all ranks run identical kernels.

Timing each candidate config on each rank would let ranks pick different block shapes (timing
noise), hence different summation orders and numerics. Instead the first rank to finish tuning
a key publishes its choice in the process group's key-value store with an atomic compare-and-set;
every rank then adopts the published choice, and ranks that arrive later skip the timing.

The store, not a collective: launches happen inside forward/backward, and ranks may meet a new
key at different calls (packed batches put different sequence buckets on different ranks), so a
broadcast or all-gather there could pair mismatched calls and hang. Store operations are
point-to-point requests to one server and never wait for another rank.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import torch.distributed as dist

_PREFIX = "ptft/autotune/"
_chosen: dict[str, dict] = {}  # this process's choices, by store key


def shared_store():
    """The default process group's store when several ranks run, else None (nothing to agree on)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    # torch has no public accessor; the default group's store is the one every rank reaches
    return dist.distributed_c10d._get_default_store()


def _time_ms(launch: Callable[[], None]) -> float:
    """Median milliseconds of `launch` on the current GPU (tests replace it: no GPU timing on CPU)."""
    import triton.testing

    return triton.testing.do_bench(launch, return_mode="median")


def choose(kernel: str, key: Sequence, candidates: Sequence[dict], bench: Callable[[dict], Callable[[], None]]) -> dict:
    """The launch meta for (kernel, key): the one another rank published, else the fastest of
    `candidates` timed here (bench(meta) returns a no-argument launch), published for the others.
    A candidate that fails to compile or run is timed as infinitely slow."""
    skey = _PREFIX + "/".join(str(part) for part in (kernel, *key))
    if skey in _chosen:
        return _chosen[skey]
    store = shared_store()
    if store is not None and store.check([skey]):
        meta = json.loads(store.get(skey))
    else:
        times, error = [], None
        for meta in candidates:
            try:
                times.append(_time_ms(bench(meta)))
            except Exception as exc:  # out of resources, a lowering error: this config is out, not the kernel
                times.append(float("inf"))
                error = error or exc
        if min(times) == float("inf"):
            raise RuntimeError(f"autotune: every config of {kernel} failed for key {tuple(key)}") from error
        meta = dict(candidates[times.index(min(times))])
        if store is not None:  # first writer wins; a rank that lost adopts the winner's choice
            meta = json.loads(store.compare_set(skey, "", json.dumps(meta, sort_keys=True)))
    _chosen[skey] = meta
    return meta


def forget() -> None:
    """Drop this process's choices (tests; a new process group gets new store keys anyway)."""
    _chosen.clear()
