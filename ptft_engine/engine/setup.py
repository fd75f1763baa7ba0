"""Building blocks the trainer wires together: process group, objective, data, DeepSpeed."""
from __future__ import annotations

import datetime
import importlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from ptft_engine.config.schema import RunConfig, SyntheticDataConfig
from ptft_engine.engine.bad_steps import GuardedAdamW
from ptft_engine.engine.deepspeed_config import build_deepspeed_config, engine_clips_itself
from ptft_engine.engine.synthetic import SyntheticLoader

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# rendezvous variables this process set for itself (no launcher); dropped again at teardown
OWN_ENV: list[str] = []


GROUP_MADE = False  # this process joined a process group (its end goes through engine/rank_exit)


def init_distributed(device: torch.device, timeout_s: float) -> tuple[int, int]:
    """Join (or, run without a launcher, create) the process group; returns (rank, world)."""
    global GROUP_MADE
    GROUP_MADE = True
    if "RANK" not in os.environ and not dist.is_initialized():  # plain `ptft pretrain`: one rank
        own = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        OWN_ENV[:] = [k for k in own if k not in os.environ]
        os.environ.update({k: own[k] for k in OWN_ENV})
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    else:
        torch.cuda.set_device(device)
    import deepspeed
    if device.type == "cpu":
        # DeepSpeed JIT-compiles a shared-memory all-reduce op at init on CPU (minutes on a
        # small machine) that only inference_all_reduce uses; training collectives go to gloo.
        # (`deepspeed.comm.torch` as an attribute is the torch module itself: go via importlib)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    if not dist.is_initialized():
        # a group torn down without deepspeed.comm (e.g. by other code in this process)
        # leaves DeepSpeed's cached subgroups behind; they must not outlive it
        release = getattr(importlib.import_module("deepspeed.utils.groups"), "_release_process_group_references", None)
        if release is not None:
            release(None)
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo",
                                   timeout=datetime.timedelta(seconds=timeout_s), verbose=False)
    bind_group_timeout(timeout_s)
    return dist.get_rank(), dist.get_world_size()


def bind_group_timeout(timeout_s: float) -> None:
    """Every group DeepSpeed creates gets our timeout too. deepspeed.comm's new_group calls
    torch's without one, so its clone of the world group (groups._clone_world_group, used by
    ZeRO's gradient reduction) and its other subgroups would wait torch's default (30 min
    on gloo, 10 on NCCL) for a rank that stopped answering, whatever run.dist_timeout_s says."""
    import deepspeed.comm.comm as ds_comm
    backend = ds_comm.cdb
    if backend is None or getattr(backend, "_ptft_timeout_s", None) == timeout_s:
        return
    timeout = datetime.timedelta(seconds=timeout_s)
    backend.new_group = lambda ranks: dist.new_group(ranks, timeout=timeout)
    backend._ptft_timeout_s = timeout_s


def teardown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        import deepspeed.comm
        deepspeed.comm.destroy_process_group()  # also drops DeepSpeed's cached subgroups
    for key in OWN_ENV:
        os.environ.pop(key, None)
    OWN_ENV.clear()


def build_objective_from_config(cfg: RunConfig) -> torch.nn.Module:
    if cfg.model is None or cfg.objective is None:
        raise ValueError("config needs both a `model:` and an `objective:` section")
    from ptft_engine.objectives import build_objective
    model_cfg = cfg.model
    if cfg.train.activation_checkpointing and "gradient_checkpointing" in type(model_cfg).model_fields:
        model_cfg = model_cfg.model_copy(update={"gradient_checkpointing": True})
    return build_objective(model_cfg, cfg.objective)


def objective_name(cfg: RunConfig) -> str | None:
    return getattr(cfg.objective, "name", None) if cfg.objective is not None else None


def objective_spec(cfg: RunConfig):
    """The config's objective spec; None for a run without `objective:` (a custom objective)."""
    if cfg.objective is None:
        return None
    from ptft_engine.objectives import spec_of
    return spec_of(cfg.objective)


def make_loader(cfg: RunConfig, *, rank: int, world_size: int, epoch: int, split: str = "train"):
    """The train stream, or with split="eval" the held-out one (None when there is none)."""
    name = objective_name(cfg)
    if isinstance(cfg.data, SyntheticDataConfig):
        return SyntheticLoader(cfg.data, objective=name, rank=rank, world_size=world_size, epoch=epoch, split=split)
    if split == "eval" and not getattr(cfg.data, "eval_shards", None):
        return None
    from ptft_engine.data import build_loader
    return build_loader(cfg.data, objective=name, rank=rank, world_size=world_size, epoch=epoch, split=split)


def throughput_unit(cfg: RunConfig) -> str:
    """What the run's throughput counts, as its objective spec says ("tokens" | "samples");
    a custom objective (no `objective:`) reports num_tokens."""
    spec = objective_spec(cfg)
    return spec.unit if spec is not None else "tokens"


def flops_per_unit(objective: torch.nn.Module, cfg: RunConfig) -> float | None:
    """Training FLOPs (forward + backward) per unit, from the objective spec (None without one: no MFU)."""
    spec = objective_spec(cfg)
    if spec is None:
        return None
    return float(spec.flops_per_unit(objective, getattr(cfg.data, "seq_len", None)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # No decay on biases, norms and other 1-D parameters (standard AdamW practice).
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def compile_objective(objective: torch.nn.Module, backend: str) -> None:
    """torch.compile the objective's forward in place: parameter names (checkpoints) stay the eager ones.
    Data-dependent shapes (MLM's selected rows) are traced rather than split into several graphs."""
    torch._dynamo.config.capture_dynamic_output_shape_ops = True
    objective.compile(backend=backend)


def init_deepspeed(cfg: RunConfig, build: Callable[[], torch.nn.Module], world_size: int, device: torch.device):
    import deepspeed
    ds_config = build_deepspeed_config(cfg, world_size, on_gpu=device.type == "cuda")
    if cfg.deepspeed.zero_stage == 3 and cfg.deepspeed.zero_init:
        with deepspeed.zero.Init(config_dict_or_path=ds_config):  # each rank only ever holds its shard
            objective = build()
    else:
        with torch.device(device):  # initialise on the device: a 1B model's init is slow on the CPU
            objective = build()
    if cfg.run.compile:
        compile_objective(objective, cfg.run.compile_backend)
    # fused kernel on GPU (one launch for all tensors); offloaded state lives on the CPU
    fused = device.type == "cuda" and not cfg.deepspeed.offload_optimizer
    optimizer = GuardedAdamW(param_groups(objective, cfg.train.weight_decay), lr=cfg.train.lr,
                             betas=cfg.train.betas, eps=cfg.train.eps, fused=fused or None,
                             clip_grad=cfg.train.clip_grad if engine_clips_itself(cfg) else 0.0)
    engine, _, _, _ = deepspeed.initialize(model=objective, optimizer=optimizer, config=ds_config)
    if world_size == 1 and cfg.deepspeed.zero_stage == 0:
        # averaging over one rank is the identity: skip stage 0's flatten/all-reduce/copy-back
        engine.enable_backward_allreduce = False
    return engine, optimizer, ds_config
