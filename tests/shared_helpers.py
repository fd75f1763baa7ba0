"""Helpers shared by several test folders: free loopback ports, rank environments,
gloo process groups, and a one-thread limit for tiny models."""
from __future__ import annotations

import datetime
import os
import socket

import pytest
import torch


def free_port() -> int:
    """A loopback port nobody listens on now (the OS picks it, so parallel runs do not collide)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int, **extra: str) -> dict[str, str]:
    """os.environ plus what an env:// rendezvous over loopback needs for `rank`."""
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", **extra}


def _gloo_rank(rank: int, fn, world: int, port: int, args: tuple) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()
    from ptft_engine.engine.rank_exit import exit_rank

    # as a launched rank ends: interpreter teardown now and then aborted a finished gloo rank
    # ("terminate called without an active exception", SIGABRT) even after the group was destroyed
    exit_rank(0)


def spawn_gloo(fn, world: int, *args) -> None:
    """Run fn(rank, *args) in `world` spawned processes joined in one gloo group
    (fn must be importable: a module-level function)."""
    import torch.multiprocessing as mp

    mp.spawn(_gloo_rank, args=(fn, world, free_port(), args), nprocs=world, join=True)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Import into a folder's conftest.py to run its tests on one intra-op thread: with tiny
    models one thread is as fast, and more only thrash when the 2 cores are shared."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
