"""Autotune choices are shared by all ranks (ops/autotune.py), so every rank runs the same kernel.

On a GPU each rank would time the candidates itself; here the Triton attention kernels run
interpreted with two small candidate blocks and a fake timer under which rank r finds
candidate r fastest, so ranks that decided alone would disagree.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
from shared_helpers import spawn_gloo
from test_attention import assert_close_fp32, make_inputs

from ptft_engine.ops import autotune
from ptft_engine.ops.attention import triton as triton_attention

CANDIDATES = [{"BLOCK_M": 32, "BLOCK_N": 32}, {"BLOCK_M": 64, "BLOCK_N": 32}]


def _rigged_timer(preferred: int, timed: list):
    """A stand-in for GPU timing that still runs each trial launch: candidate `preferred` of
    every tuning round is the fastest. `timed` collects the launches it timed."""
    def time_ms(launch):
        launch()
        timed.append(launch)
        return 1.0 if (len(timed) - 1) % len(CANDIDATES) == preferred else 2.0
    return time_ms


def _attention_matches_reference(causal: bool):
    (q, k, v, do), masks = make_inputs(1, 2, 40, 16, torch.float32, pad=True, segments=not causal)
    assert_close_fp32("triton", q, k, v, do, causal=causal, **masks)


def _choices(tag: str) -> dict:
    return {key: meta for key, meta in autotune._chosen.items() if tag in key}


def _worker(rank: int):
    autotune.forget()
    triton_attention._candidates = lambda kind: CANDIDATES
    timed: list = []
    autotune._time_ms = _rigged_timer(rank, timed)
    # Rank 0 tunes the non-causal keys (fwd, bwd) and publishes; rank 1 comes later, times
    # nothing and runs rank 0's choice although it would have preferred candidate 1.
    if rank == 0:
        _attention_matches_reference(causal=False)
        assert len(timed) == 2 * len(CANDIDATES)
    dist.barrier()
    if rank == 1:
        _attention_matches_reference(causal=False)
        assert timed == []
    first = _choices("CAUSAL=False")
    assert len(first) == 2 and all(meta == CANDIDATES[0] for meta in first.values()), first
    # Both ranks tune the causal keys at once: whoever publishes first wins, the other adopts it.
    _attention_matches_reference(causal=True)
    mine = _choices("CAUSAL=True")
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    assert len(mine) == 2 and everyone[0] == everyone[1], everyone


@pytest.mark.slow  # two processes running the interpreted kernels
def test_ranks_share_the_autotune_choice():
    spawn_gloo(_worker, 2)


class _StoreWithAWinner:
    """A store in which another rank published `meta` between our look-up and our publish."""

    def __init__(self, meta: dict):
        self.value = json.dumps(meta)
        self.published = []

    def check(self, keys):
        return False

    def compare_set(self, key, expected, desired):
        self.published.append(desired)
        return self.value.encode()


def test_rank_that_loses_the_race_adopts_the_winner(monkeypatch):
    autotune.forget()
    store = _StoreWithAWinner(CANDIDATES[1])
    monkeypatch.setattr(autotune, "shared_store", lambda: store)
    timed: list = []
    monkeypatch.setattr(autotune, "_time_ms", _rigged_timer(0, timed))
    meta = autotune.choose("k", (1,), CANDIDATES, lambda m: lambda: None)
    assert len(timed) == 2 and json.loads(store.published[0]) == CANDIDATES[0]  # we tuned and offered ours
    assert meta == CANDIDATES[1]  # but run the winner's
    assert autotune.choose("k", (1,), CANDIDATES, lambda m: lambda: None) == CANDIDATES[1]  # remembered
    assert len(timed) == 2 and len(store.published) == 1
    autotune.forget()


def test_single_process_picks_the_fastest_and_skips_failing_configs(monkeypatch):
    autotune.forget()
    monkeypatch.setattr(autotune, "_time_ms", lambda launch: launch())

    def bench(meta):
        def launch():
            if meta["BLOCK_M"] == 64:
                raise RuntimeError("out of shared memory")
            return 3.0
        return launch
    assert autotune.choose("k", ("a",), CANDIDATES, bench) == CANDIDATES[0]
    with pytest.raises(RuntimeError, match="every config of k failed") as info:
        autotune.choose("k", ("b",), CANDIDATES[1:], bench)
    assert "shared memory" in str(info.value.__cause__)
    autotune.forget()
