"""Generate the DeepSpeed JSON config from ours; `deepspeed.passthrough` is merged last.

The engine owns the learning rate (schedules.lr_at) and the bad-step policy, so no
DeepSpeed scheduler is configured, and the client optimizer is a torch one
(zero_allow_untested_optimizer), which also works under CPU offload.
"""
from __future__ import annotations

import copy
from typing import Any

from ptft_engine.config.schema import RunConfig


def micro_batch_size(cfg: RunConfig) -> int:
    return int(cfg.data.batch_size)


def engine_clips_itself(cfg: RunConfig) -> bool:
    """Stage 0 in fp32 hands full gradients to our optimizer, so it clips and measures them."""
    return cfg.deepspeed.zero_stage == 0 and cfg.train.precision == "fp32"


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_deepspeed_config(cfg: RunConfig, world_size: int, *, on_gpu: bool = False) -> dict[str, Any]:
    ds, train = cfg.deepspeed, cfg.train
    mbs = micro_batch_size(cfg)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        # overlap_comm only pays off with a side stream (GPU); on CPU it just adds copies
        zero.update(contiguous_gradients=True, overlap_comm=on_gpu, reduce_bucket_size=int(5e7))
    if ds.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=False)
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": mbs,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "train_batch_size": mbs * train.grad_accum_steps * world_size,
        "gradient_clipping": 0.0 if engine_clips_itself(cfg) else train.clip_grad,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    if train.precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif train.precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                          "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}
    return deep_merge(config, ds.passthrough)
