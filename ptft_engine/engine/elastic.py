"""Elastic resume: continue a run on another world size, ZeRO stage or offload setting.

What a checkpoint was saved with is in its meta.json (`checkpoint_meta`). At resume,
`check_compatible` refuses (one line naming the key) a checkpoint whose model config or
tokenizer differs from the run's, before anything is written. `layout_changes` lists
what differs in the layout (world size 2 -> 1, ZeRO stage 3 -> 2, offload); when it is
not empty, `load_states` puts the fp32 master weights and Adam moments into the new
engine tensor by tensor: each tensor is consolidated from the old rank files (memory-
mapped; export/zero.py's readers) and handed to DeepSpeed's tensor-fragment API, which
keeps only this rank's part. No process ever holds all ranks' optimizer states.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ptft_engine.config.schema import RunConfig, SyntheticDataConfig

log = logging.getLogger(__name__)
MOMENTS = ("exp_avg", "exp_avg_sq")  # AdamW's per-parameter state besides its step count
IGNORED_MODEL_KEYS = {"gradient_checkpointing"}  # changes no weight: may differ on resume


def _sha256(path: str | Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def _tokenizer(cfg: RunConfig) -> str | None:
    return None if isinstance(cfg.data, SyntheticDataConfig) else getattr(cfg.data, "tokenizer", None)


def global_batch(cfg: RunConfig, world_size: int) -> int:
    return cfg.data.batch_size * world_size * cfg.train.grad_accum_steps


def checkpoint_meta(cfg: RunConfig, world_size: int, epoch: int) -> dict[str, Any]:
    """What a checkpoint records about the run that wrote it (meta.json)."""
    tok = _tokenizer(cfg)
    return {"world_size": world_size, "zero_stage": cfg.deepspeed.zero_stage,
            "offload_optimizer": cfg.deepspeed.offload_optimizer, "offload_param": cfg.deepspeed.offload_param,
            "precision": cfg.train.precision, "batch_size": cfg.data.batch_size,
            "grad_accum_steps": cfg.train.grad_accum_steps, "epoch": epoch, "run": cfg.run.name,
            "model": cfg.model.model_dump(mode="json") if cfg.model is not None else None,
            "tokenizer_sha256": _sha256(tok) if tok else None}


def check_compatible(cfg: RunConfig, meta: dict[str, Any], path: Path) -> None:
    """A resume that cannot be honoured is a one-line ValueError naming the difference."""
    saved = meta.get("model")
    if saved is not None and cfg.model is not None:
        now = cfg.model.model_dump(mode="json")
        for key in sorted(set(saved) | set(now)):
            if key not in IGNORED_MODEL_KEYS and saved.get(key) != now.get(key):
                raise ValueError(f"{path}: model.{key} is {saved.get(key)!r} in the checkpoint but "
                                 f"{now.get(key)!r} in the config; resume with the model it was trained with")
    saved_tok = meta.get("tokenizer_sha256")
    tok = _tokenizer(cfg)
    if saved_tok is not None and tok and _sha256(tok) != saved_tok:
        raise ValueError(f"{path}: data.tokenizer {tok} differs from the tokenizer the checkpoint was trained "
                         "with (sha256 mismatch); resume with the same tokenizer.json")
    if meta.get("precision", cfg.train.precision) != cfg.train.precision and cfg.deepspeed.zero_stage == 0:
        raise ValueError(f"{path}: train.precision {meta['precision']} -> {cfg.train.precision} needs ZeRO "
                         "stage >= 1 (fp32 master weights in the checkpoint)")


def layout_changes(meta: dict[str, Any], cfg: RunConfig, world_size: int) -> list[str]:
    """What differs between the checkpoint's layout and this run's, e.g. ['world size 2 -> 1']."""
    now = {"world size": world_size, "ZeRO stage": cfg.deepspeed.zero_stage,
           "offload_optimizer": cfg.deepspeed.offload_optimizer, "offload_param": cfg.deepspeed.offload_param}
    keys = {"world size": "world_size", "ZeRO stage": "zero_stage"}
    changes = []
    for label, value in now.items():
        old = meta.get(keys.get(label, label), value)
        if old != value:
            changes.append(f"{label} {old} -> {value}")
    return changes


def needs_conversion(meta: dict[str, Any], cfg: RunConfig, world_size: int) -> bool:
    """DeepSpeed's own load honours a world-size change only at stage 0 (full states on
    every rank); any other layout change goes through `load_states`."""
    old_stage = meta.get("zero_stage", cfg.deepspeed.zero_stage)
    return bool(layout_changes(meta, cfg, world_size)) and not (old_stage == 0 and cfg.deepspeed.zero_stage == 0)


def data_state(state: dict[str, Any], meta: dict[str, Any], cfg: RunConfig, world_size: int) -> dict[str, Any]:
    """The data stream's position for this run. The shard loader's position is global (the
    same on every rank, any world size); the synthetic loader counts its own batches, so
    its position is rescaled by the global batch."""
    if not isinstance(cfg.data, SyntheticDataConfig) or meta.get("world_size", world_size) == world_size:
        return state
    old = meta.get("batch_size", cfg.data.batch_size) * meta["world_size"]
    return {**state, "position": state["position"] * old // (cfg.data.batch_size * world_size)}


def _optimizer_states(engine, stage: int) -> list[dict]:
    """The AdamW state dict of each flat fp32 partition (stages 1-3) or parameter (stage 0),
    created when the run has not stepped yet (torch creates it lazily at the first step)."""
    zero = engine.optimizer
    base = getattr(zero, "optimizer", zero) if stage else zero
    if stage == 3:
        flats = zero.fp32_partitioned_groups_flat
    elif stage:
        flats = zero.single_partition_of_fp32_groups
    else:
        flats = [p for group in base.param_groups for p in group["params"]]
    states = []
    for flat in flats:
        state = base.state[flat]
        if not state:
            on_device = base.defaults.get("fused") or base.defaults.get("capturable")
            state["step"] = torch.zeros((), dtype=torch.float32, device=flat.device if on_device else "cpu")
            for key in MOMENTS:
                state[key] = torch.zeros_like(flat, memory_format=torch.preserve_format)
        states.append(state)
    if stage in (1, 2):
        zero._lazy_init_hp_params_optimizer_state()  # link each param's fragment to its moments
    return states


def _set(param: torch.nn.Parameter, value: torch.Tensor, key: str | None, stage: int, base) -> None:
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
    value = value.to(param.device)
    if stage == 0:
        (param.data if key is None else base.state[param][key]).copy_(value.view_as(param))
    elif key is None:
        safe_set_full_fp32_param(param, value)
    else:
        safe_set_full_optimizer_state(param, value, key)


def _tensors(path: Path, key: str | None) -> Iterator[tuple[str, torch.Tensor]]:
    from ptft_engine.export.errors import ExportError
    from ptft_engine.export.zero import optimizer_tensors
    try:
        yield from optimizer_tensors(path, key)
    except ExportError as exc:
        raise ValueError(str(exc)) from None


def load_states(engine, path: Path, cfg: RunConfig, step: int, world_size: int) -> None:
    """Collective: fp32 master weights, Adam moments and step count of a checkpoint saved
    with another layout, into this engine; one consolidated tensor in memory at a time."""
    stage = cfg.deepspeed.zero_stage
    if stage == 0 and cfg.train.precision != "fp32":
        raise ValueError(f"{path}: an elastic resume into ZeRO stage 0 needs train.precision fp32 "
                         "(use stage >= 1 for bf16/fp16)")
    params = {n: p for n, p in engine.module.named_parameters() if p.requires_grad}
    states = _optimizer_states(engine, stage)
    base = engine.optimizer
    for key in (None, *MOMENTS):
        seen = set()
        for name, value in _tensors(path, key):
            if name == "<step>":
                for state in states:
                    state["step"].fill_(float(value))
                continue
            if name not in params:
                raise ValueError(f"{path}: parameter {name!r} of the checkpoint is not trained by this model")
            _set(params[name], value, key, stage, base)
            seen.add(name)
        missing = sorted(set(params) - seen)
        if missing:
            raise ValueError(f"{path}: the checkpoint has no {key or 'weights'} for parameter {missing[0]!r}")
    if stage == 3:
        for group in range(len(engine.optimizer.fp16_groups)):  # fp32 masters -> the module's partitions
            engine.optimizer._reassign_or_swap_out_partitioned_parameters(group)
    elif stage:
        engine.optimizer.update_lp_params()  # fp32 masters -> the module's (bit16) params, all-gathered
    engine.global_steps = step
    engine.global_samples = step * global_batch(cfg, world_size)
