"""Consolidate a DeepSpeed checkpoint (ZeRO stage 0-3, any world size) into an export.

The fp32 master weights are read from the optimizer partitions, tensor by tensor:

- stage 1/2: rank r holds the r-th contiguous slice of each parameter group's flat fp32
  buffer. Rank files are read one at a time (memory-mapped, so the Adam moments beside
  the weights are never loaded); each tensor is emitted as soon as its last slice has
  been read, so at most one partial tensor per group is held besides the shard writer.
- stage 3: every parameter is split over all ranks (ceil(numel / world) each, padded).
  All rank files are memory-mapped and each tensor gathers its slices from them; the
  mapped pages of a slice are handed back to the OS once copied (they would otherwise
  stay in this process's resident memory until the whole file is done), and the writer
  puts each tensor on disk as it comes, so the peak is about one tensor.
- stage 0 (no optimizer partitions): the full module state in mp_rank_00_model_states.pt.

DeepSpeed's files are pickles: they are unpickled with torch's weights_only loader,
allowing only the few DeepSpeed classes its optimizer state is known to contain.
Exports themselves never contain pickle. A missing or damaged rank file is one line
naming the rank and the file (meta.json records the world size the run saved with).
"""
from __future__ import annotations

import json
import logging
import math
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ptft_engine.export.errors import ExportError
from ptft_engine.export.manifest import sha256_json
from ptft_engine.export.zero_files import (
    _check_complete,
    _optimizer_state,
    _rank_files,
    _rank_of,
    _saved_layout,
    release_pages,
    torch_load,
)

log = logging.getLogger(__name__)
MODEL_PREFIX = "model."  # objectives own the model as `.model`
def _moment_groups(sd: dict, key: str, path: Path, base: str) -> list[torch.Tensor]:
    """One Adam state (exp_avg, exp_avg_sq) per parameter group, each the flat partition of this rank."""
    state = sd.get(base)
    state = state.get("state") if isinstance(state, dict) else None
    try:
        return [state[g][key] for g in sorted(state)]
    except (KeyError, TypeError):
        raise ExportError(f"{path}: {_rank_of(path)} has no optimizer state {key!r} (saved before the first "
                          "step?)") from None


def _zero12_tensors(files: list[Path], param_shapes: list[dict],
                    key: str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Stage 1/2: ranks in order; flat groups are contiguous, params laid out back to back.
    key None: the fp32 master weights; else that optimizer state (same partitioning)."""
    pending: dict[str, list[torch.Tensor]] = {}
    offsets = []  # per group: [(name, shape, start, numel)] in the unpartitioned flat buffer
    for shapes in param_shapes:
        pos, table = 0, []
        for name, shape in shapes.items():
            numel = math.prod(shape)
            table.append((name, tuple(shape), pos, numel))
            pos += numel
        offsets.append(table)
    cursor = [0] * len(param_shapes)  # next parameter index to complete, per group
    for rank, path in enumerate(files):
        mapped = zipfile.is_zipfile(path)  # torch_load memory-maps zip files only
        sd = _optimizer_state(torch_load(path), path)
        parts = (sd.get("single_partition_of_fp32_groups") if key is None
                 else _moment_groups(sd, key, path, "base_optimizer_state"))
        if parts is None:
            raise ExportError(f"{path}: no single_partition_of_fp32_groups (not a stage 1/2 optimizer file)")
        if len(parts) != len(offsets):
            raise ExportError(f"{path}: {len(parts)} parameter groups but the model states list {len(offsets)}")
        for g, part in enumerate(parts):
            size = part.numel()
            lo, hi = rank * size, (rank + 1) * size  # this rank's range of the group's flat buffer
            table = offsets[g]
            while cursor[g] < len(table):
                name, shape, start, numel = table[cursor[g]]
                a, b = max(start, lo), min(start + numel, hi)
                if a < b:
                    piece = part[a - lo:b - lo]
                    pending.setdefault(name, []).append(piece.clone())
                    if mapped:
                        release_pages(piece)
                if start + numel > hi:
                    break  # continues on the next rank
                pieces = pending.pop(name, [])
                flat = torch.cat(pieces) if len(pieces) > 1 else (pieces[0] if pieces else torch.empty(0))
                if flat.numel() != numel:
                    raise ExportError(f"{path}: tensor {name!r} has {flat.numel()} of {numel} elements "
                                      "in the partitions")
                yield name, flat.view(shape)
                cursor[g] += 1
        del sd, parts  # release this rank before the next is read
    left = [table[c][0] for table, c in zip(offsets, cursor) if c < len(table)]
    if left:
        raise ExportError(f"{files[-1].parent}: partitions end before tensor {left[0]!r} is complete "
                          "(missing rank files?)")


def _zero3_tensors(files: list[Path], param_shapes: list[dict],
                   key: str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Stage 3: each param split over all ranks; rank files memory-mapped, one tensor at a time.
    key None: the fp32 master weights; else that optimizer state (same partitioning)."""
    world = len(files)
    flats = []
    mapped = all(zipfile.is_zipfile(p) for p in files)  # torch_load memory-maps zip files only
    for path in files:
        sd = _optimizer_state(torch_load(path), path)
        groups = sd.get("fp32_flat_groups") if key is None else _moment_groups(sd, key, path, "optimizer_state_dict")
        if groups is None:
            raise ExportError(f"{path}: no fp32_flat_groups (not a stage 3 optimizer file)")
        flats.append(groups)  # memory-mapped views: nothing read until sliced
    for g, shapes in enumerate(param_shapes):
        offset = 0
        for name, shape in shapes.items():
            numel = math.prod(shape)
            part = math.ceil(numel / world)
            out = torch.empty(part * world, dtype=flats[0][g].dtype)
            for r in range(world):
                piece = flats[r][g][offset:offset + part]
                if piece.numel() != part:
                    raise ExportError(f"{files[r]}: {_rank_of(files[r])} holds {piece.numel()} of the {part} "
                                      f"elements of tensor {name!r} (truncated partition)")
                out[r * part:(r + 1) * part].copy_(piece)
                if mapped:
                    release_pages(piece)
            yield name, out[:numel].view(tuple(shape))
            del out  # the consumer has written it
            offset += part


def _frozen_zero3(files: list[Path], model_sd: dict) -> Iterator[tuple[str, torch.Tensor]]:
    shapes = model_sd.get("frozen_param_shapes") or {}
    if not shapes:
        return
    frags = [torch_load(p)["frozen_param_fragments"] for p in files]
    for name, shape in shapes.items():
        numel = math.prod(shape)
        yield name, torch.cat([f[name].flatten() for f in frags])[:numel].view(tuple(shape)).clone()


def consolidated_tensors(ckpt: Path) -> tuple[Iterator[tuple[str, torch.Tensor]], dict[str, Any]]:
    """(iterator of (engine-objective name, fp32 tensor), info) for one DeepSpeed checkpoint dir."""
    world, saved_stage = _saved_layout(ckpt)
    optim_files = _rank_files(ckpt, "optim", world)
    stage3_models = _rank_files(ckpt, "model", world)
    if not optim_files and (stage3_models or (saved_stage or 0) > 0):
        prefix = stage3_models[0].name.split("zero_pp_rank_")[0] if stage3_models else ""
        raise ExportError(f"{ckpt}: rank 0 file {prefix}zero_pp_rank_0_mp_rank_00_optim_states.pt is missing "
                          f"(no optimizer partitions of a ZeRO-{saved_stage or 3} checkpoint)")
    for path in optim_files + stage3_models:
        _check_complete(path)  # before anything is written
    if stage3_models:
        model_file = stage3_models[0]
    else:
        model_file = next(iter(sorted(ckpt.glob("mp_rank_*_model_states.pt"))), None)
        if model_file is None:
            raise ExportError(f"{ckpt}: no DeepSpeed model states file (mp_rank_00_model_states.pt)")
    model_sd = torch_load(model_file)
    module = model_sd.get("module") or {}
    buffers = set(model_sd.get("buffer_names") or [])
    param_shapes = model_sd.get("param_shapes")
    if isinstance(param_shapes, dict):
        param_shapes = [param_shapes]
    stage = 3 if stage3_models else (2 if optim_files else 0)
    info = {"zero_stage_layout": "3" if stage == 3 else ("1/2" if stage else "0"), "world_size": len(optim_files) or 1,
            "ds_version": model_sd.get("ds_version"), "global_steps": model_sd.get("global_steps")}

    def stream():
        if stage == 0:  # the whole module; a tied alias (e.g. mlm_head.decoder.weight) shares a storage: once
            seen = set()
            for name, t in module.items():
                ptr = t.untyped_storage().data_ptr() if t.numel() else None
                if name in buffers or (ptr is not None and ptr in seen):
                    continue
                seen.add(ptr)
                yield name, t.float() if t.is_floating_point() else t
            return
        partitioned = {n for shapes in param_shapes for n in shapes}
        if stage == 3:
            yield from _zero3_tensors(optim_files, param_shapes)
            yield from _frozen_zero3(stage3_models, model_sd)
        else:
            yield from _zero12_tensors(optim_files, param_shapes)
            # frozen params (requires_grad=False) are not in the optimizer: full copies in the module state;
            # tied aliases (same storage as a partitioned param, or listed as shared) are skipped
            shared = set(model_sd.get("shared_params") or {})
            trained = {module[n].untyped_storage().data_ptr() for n in partitioned if n in module}
            for name, t in module.items():
                if (name in partitioned or name in buffers or name in shared or not t.numel()
                        or t.untyped_storage().data_ptr() in trained):
                    continue
                yield name, t.float() if t.is_floating_point() else t
        for name in buffers:
            if name in module:
                yield name, module[name]

    return stream(), info


def optimizer_tensors(ckpt: Path, key: str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The trained parameters' fp32 master weights (key None) or one Adam state ("exp_avg",
    "exp_avg_sq") per parameter, by engine-objective name, one tensor at a time: what an
    elastic resume hands to a new layout. Also returns the optimizer's step count first,
    as ("<step>", tensor)."""
    world, _ = _saved_layout(ckpt)
    optim_files = _rank_files(ckpt, "optim", world)
    stage3_models = _rank_files(ckpt, "model", world)
    for path in optim_files + stage3_models:
        _check_complete(path)
    model_file = stage3_models[0] if stage3_models else ckpt / "mp_rank_00_model_states.pt"
    model_sd = torch_load(model_file)
    param_shapes = model_sd.get("param_shapes")
    param_shapes = [param_shapes] if isinstance(param_shapes, dict) else param_shapes
    if optim_files:
        sd = _optimizer_state(torch_load(optim_files[0]), optim_files[0])
        state = (sd.get("base_optimizer_state") or sd.get("optimizer_state_dict") or {}).get("state") or {}
    else:
        state = (model_sd.get("optimizer") or {}).get("state") or {}
    if not state:
        raise ExportError(f"{ckpt}: no optimizer state (saved before the first step?)")
    yield "<step>", state[min(state)]["step"]
    if stage3_models:
        yield from _zero3_tensors(optim_files, param_shapes, key)
    elif optim_files:
        yield from _zero12_tensors(optim_files, param_shapes, key)
    else:  # stage 0: the whole module, and torch's optimizer state numbered in parameter-group order
        module, buffers, storages = model_sd["module"], set(model_sd.get("buffer_names") or []), set()
        names = []
        for name, t in module.items():  # a tied alias shares its parameter's storage: listed once
            if name not in buffers and t.untyped_storage().data_ptr() not in storages:
                storages.add(t.untyped_storage().data_ptr())
                names.append(name)
        # the engine's groups (engine/setup.py param_groups): matrices (decayed), then the rest
        names = [n for n in names if module[n].ndim >= 2] + [n for n in names if module[n].ndim < 2]
        if len(names) != len(state):
            raise ExportError(f"{ckpt}: {len(state)} optimizer states for {len(names)} parameters (frozen "
                              "parameters in a ZeRO-0 checkpoint cannot be matched to their states)")
        for i, name in enumerate(names):
            yield name, module[name].float() if key is None else state[i][key]


def model_tensors(ckpt: Path) -> tuple[Iterator[tuple[str, torch.Tensor]], dict[str, Any]]:
    """Only the model's tensors (the objective's `model.` prefix stripped); heads of the
    objective (e.g. SimCLR's projector) are pre-training scaffolding and are left out."""
    stream, info = consolidated_tensors(ckpt)
    skipped: list[str] = []
    info["skipped_objective_tensors"] = skipped

    def only_model():
        for name, t in stream:
            if name.startswith(MODEL_PREFIX):
                yield name[len(MODEL_PREFIX):], t
            else:
                skipped.append(name)
    return only_model(), info


# transformers task classes: their heads are kept only through task.json (a ptft finetune save)
TASK_CLASS_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification", "ForImageClassification",
                       "ForAudioClassification")
RUN_CONFIGS = ("config.yaml", "config.json")  # the engine's resolved run config (yaml now, json before)


def run_config_file(run_dir: Path) -> Path | None:
    return next((run_dir / n for n in RUN_CONFIGS if (run_dir / n).is_file()), None)


def read_run_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    path = run_config_file(run_dir)
    try:
        cfg = yaml.safe_load(path.read_text())  # JSON is YAML too
    except (OSError, yaml.YAMLError) as exc:
        raise ExportError(f"{path}: cannot read the run config ({exc.__class__.__name__})") from None
    if not isinstance(cfg, dict):
        raise ExportError(f"{path}: the run config is not a mapping")
    return cfg


def resolve_source(source: Path) -> tuple[Path, Path]:
    """RUN_DIR or a checkpoint dir -> (checkpoint dir, run dir holding the run config)."""
    from ptft_engine.engine.checkpoint import find_latest

    if (source / "meta.json").is_file():
        for run_dir in (source.parent.parent, source.parent):
            if run_config_file(run_dir) is not None:
                return source, run_dir
        raise ExportError(f"{source}: cannot find the run's config.yaml next to its checkpoints directory")
    if run_config_file(source) is not None and not (source / "model.safetensors").exists():
        cfg = read_run_config(source)
        ckpt_dir = Path((cfg.get("checkpoint") or {}).get("dir") or source / "checkpoints")
        latest = find_latest(ckpt_dir)
        if latest is None:
            raise ExportError(f"{source}: no complete checkpoint in {ckpt_dir}")
        return latest, source
    raise ExportError(f"{source}: not a run directory (config.yaml), a checkpoint (meta.json) or an export")


def export_checkpoint(source: str | Path, out_dir: str | Path, *, tokenizer: str | Path | None = None, **kwargs):
    from ptft_engine.errors import ConfigError
    from ptft_engine.export.writer import export_tensors
    from ptft_engine.models import parse_model_config

    ckpt, run_dir = resolve_source(Path(source))
    run_cfg = read_run_config(run_dir)
    try:
        model_cfg = parse_model_config(run_cfg.get("model"), prefix=f"{run_config_file(run_dir)}: model")
    except ConfigError as exc:
        raise ExportError(str(exc)) from None
    meta = json.loads((ckpt / "meta.json").read_text()) if (ckpt / "meta.json").is_file() else {}
    if tokenizer is None:
        data_tok = (run_cfg.get("data") or {}).get("tokenizer")
        candidates = [Path(data_tok)] if data_tok else []
        candidates.append(run_dir / "tokenizer.json")
        tokenizer = next((c for c in candidates if c.exists()), None)
    tensors, info = model_tensors(ckpt)
    source_info = {"kind": "deepspeed checkpoint", "run_dir": str(run_dir), "checkpoint": str(ckpt),
                   "run": (run_cfg.get("run") or {}).get("name"), "step": meta.get("step"),
                   "run_config_sha256": sha256_json(run_cfg), **info}
    manifest = export_tensors(tensors, model_cfg, out_dir, tokenizer=tokenizer, source=source_info, **kwargs)
    if info["skipped_objective_tensors"]:
        log.info("left out objective tensors: %s", ", ".join(info["skipped_objective_tensors"]))
    return manifest


def export_any(source: Path, out_dir: Path, *, tokenizer=None, require_manifest: bool = False, **kwargs):
    """`ptft export`: a run/checkpoint is consolidated; an export is re-exported (a
    fine-tuned model with its task head, task.json and metrics.json)."""
    if not source.exists():
        raise ExportError(f"{source}: no such file or directory")
    is_export = (source / "config.json").is_file() and any(
        (source / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))
    if is_export:
        from ptft_engine.export.loader import load_export, read_config
        from ptft_engine.export.task_heads import METRICS_FILE, TASK_FILE
        from ptft_engine.export.writer import export_tensors, unique_state

        heads = [a for a in read_config(source).get("architectures") or [] if a.endswith(TASK_CLASS_SUFFIXES)]
        if heads and not (source / TASK_FILE).is_file():  # else only the backbone would be written
            raise ExportError(f"{source}: config.json names {heads[0]} but there is no {TASK_FILE}, so its head "
                              "would be dropped; re-export a `ptft finetune` best/ (it has task.json)")
        loaded = load_export(source, require_manifest=require_manifest)
        tok = tokenizer or ((source / "tokenizer.json") if (source / "tokenizer.json").is_file() else None)
        extra = {}
        if loaded.task is not None and (source / METRICS_FILE).is_file():
            extra[METRICS_FILE] = json.loads((source / METRICS_FILE).read_text())
        task = None if loaded.task is None else {k: v for k, v in loaded.task.items()
                                                 if not k.startswith("transformers_class")}  # decided anew
        return export_tensors(unique_state(loaded.model), loaded.config, out_dir, tokenizer=tok, task=task,
                              head=loaded.head, extra_json=extra,
                              source={"kind": "export", "path": str(source), "layout": loaded.layout}, **kwargs)
    return export_checkpoint(source, out_dir, tokenizer=tokenizer, **kwargs)
