"""Load an export (ours or a transformers checkpoint directory) into an engine model.

Safe by construction: only JSON and safetensors are read. Pickle files (*.bin, *.pt ...)
are refused when they are the only weights, and ignored with a warning beside safetensors;
the manifest's sha256 are checked first (no manifest: a warning, or an error with
require_manifest=True); a tensor whose shape the config does not predict is a one-line
error naming it. A fine-tuned model's head (task.json) is read from the same files.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ptft_engine.export.errors import ExportError
from ptft_engine.export.formats import layout_of_config
from ptft_engine.export.manifest import MANIFEST, verify
from ptft_engine.export.safetensors_io import PICKLE_SUFFIXES, iter_tensors, refuse_pickle, weight_files
from ptft_engine.export.task_heads import HEAD_FILE, TASK_FILE, task_head

log = logging.getLogger(__name__)


@dataclass
class LoadedExport:
    model: torch.nn.Module
    config: Any                       # engine model config
    layout: str                       # "native", "hf-bert", "hf-gpt2", "hf-llama", "hf-vit"
    manifest: dict[str, Any] | None   # None for a plain transformers directory
    path: Path
    extras: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] | None = None     # task.json of a fine-tuned model
    head: dict[str, torch.Tensor] = field(default_factory=dict)  # its head tensors (TaskModel names)


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise ExportError(f"{directory}: no config.json")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from None


def _tensor_names(files: list[Path]) -> list[str]:
    from safetensors import SafetensorError, safe_open

    names = []
    for path in files:
        if not path.is_file():
            raise ExportError(f"{path}: shard listed in the index is missing")
        try:
            with safe_open(str(path), framework="pt") as f:
                names += list(f.keys())
        except SafetensorError as exc:
            raise ExportError(f"{path}: not a readable safetensors file ({exc})") from None
    return names


def _checked_manifest(directory: Path, verify_checksums: bool, require_manifest: bool) -> dict[str, Any] | None:
    if not verify_checksums:
        return None
    manifest = verify(directory)
    if manifest is None:
        if require_manifest:
            raise ExportError(f"{directory}: no {MANIFEST} (required): the files' integrity cannot be checked")
        log.warning("%s: no %s: file integrity is NOT checked (require_manifest=True / --require-manifest "
                    "refuses such a directory)", directory, MANIFEST)
    return manifest


def _read_task(directory: Path, cfg, layout, config: dict[str, Any]) -> tuple[dict | None, Any]:
    """task.json and the TaskHead that says where its head tensors are (None, None: no task)."""
    path = directory / TASK_FILE
    if not path.is_file():
        return None, None
    try:
        task = json.loads(path.read_text())
        task["kind"]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{path}: not a valid task file ({exc.__class__.__name__}: {exc})") from None
    th = task_head(cfg, task, layout is not None, config.get("pad_token_id"), config.get("eos_token_id"))
    if task.get("transformers_class") and th.architecture != task["transformers_class"]:
        raise ExportError(f"{path}: transformers_class {task['transformers_class']!r} does not fit config.json "
                          f"(expected {th.architecture})")
    if not task.get("transformers_class"):
        th = None  # the head is in head.safetensors
    return task, th


def _head_file(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = load_file(str(directory / HEAD_FILE))
    # older saves held the output layer alone ("weight", "bias")
    return {k if "." in k else f"head.{k}": v for k, v in state.items()}


def load_export(path: str | Path, *, dtype: torch.dtype | None = None, device: str = "cpu",
                verify_checksums: bool = True, require_manifest: bool = False) -> LoadedExport:
    directory = Path(path)
    if not directory.is_dir():
        raise ExportError(f"{directory}: not a directory")
    files = weight_files(directory)  # refuses a directory whose only weights are pickles
    pickles = [p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        log.warning("%s: ignoring pickle file(s) %s; only safetensors are read", directory, ", ".join(sorted(pickles)))
    manifest = _checked_manifest(directory, verify_checksums, require_manifest)
    config = read_config(directory)
    layout, cfg = layout_of_config(config, str(directory / "config.json"))
    task, th = _read_task(directory, cfg, layout, config)

    from ptft_engine.models import build_model
    from ptft_engine.models.registry import _builders

    # map names first (headers only) to decide the model's optional parts
    names = _tensor_names(files)
    engine_names = {}
    for name in names:
        if th is not None and th.from_target(name) is not None:
            continue
        mapped = [(name, None)] if layout is None else layout.from_target(name, torch.empty(0))
        for engine_name, _ in mapped:
            engine_names[engine_name] = name
    if layout is not None:
        kwargs = layout.build_kwargs(set(engine_names))
    elif cfg.arch == "encoder":  # a fine-tuned encoder is saved without its MLM head
        kwargs = {"with_mlm_head": any(n.startswith("mlm_head.") for n in engine_names)}
    else:
        kwargs = {}
    # built for real (not on meta + assign): tied projections must keep sharing one Parameter
    model = _builders()[type(cfg)](cfg, **kwargs) if kwargs else build_model(cfg)
    from ptft_engine.export.writer import unique_state

    expected = dict(unique_state(model))
    loaded: set[str] = set()
    head: dict[str, torch.Tensor] = {}
    for name, tensor in iter_tensors(directory):
        if th is not None and th.from_target(name) is not None:
            head[th.from_target(name)] = tensor
            continue
        for engine_name, t in ([(name, tensor)] if layout is None else layout.from_target(name, tensor)):
            if engine_name not in expected:
                raise ExportError(f"{directory}: tensor {name!r} ({engine_name}) does not exist in a model built "
                                  "from config.json (config and weights do not fit)")
            want = tuple(expected[engine_name].shape)
            if tuple(t.shape) != want:
                raise ExportError(f"{directory}: tensor {name!r} has shape {tuple(t.shape)} but config.json implies "
                                  f"{want} (config and weights do not fit)")
            with torch.no_grad():
                expected[engine_name].copy_(t)
            loaded.add(engine_name)
    missing = [n for n in expected if n not in loaded]
    if missing:
        raise ExportError(f"{directory}: weights lack tensor {missing[0]!r}"
                          f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''} that config.json requires")
    if dtype is not None:
        model.to(dtype)
    model.to(device)
    model.eval()
    if task is not None and th is None:
        if not (directory / HEAD_FILE).is_file():
            raise ExportError(f"{directory}: {TASK_FILE} names no transformers class and {HEAD_FILE} is missing")
        head = _head_file(directory)
    return LoadedExport(model=model, config=cfg, layout="native" if layout is None else layout.name,
                        manifest=manifest, path=directory, task=task, head=head)


def load_pretrained(path: str | Path, **kwargs) -> torch.nn.Module:
    """An export or a transformers BERT/GPT-2/Llama/ViT directory -> engine model (eval mode)."""
    return load_export(path, **kwargs).model


def load_safetensors_file(path: str | Path) -> dict[str, torch.Tensor]:
    """One extra safetensors file of an export (e.g. a fine-tuned head)."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        refuse_pickle(path.parent)
    return load_file(str(path))


def read_task_head(path: str | Path) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    """A fine-tuned model's (task.json, head tensors under TaskModel names) without building
    the backbone; (None, {}) for an export that is not fine-tuned."""
    from safetensors import safe_open

    directory = Path(path)
    config = read_config(directory)
    layout, cfg = layout_of_config(config, str(directory / "config.json"))
    task, th = _read_task(directory, cfg, layout, config)
    if task is None:
        return None, {}
    if th is None:
        return task, _head_file(directory)
    head = {}
    for file in weight_files(directory):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if th.from_target(name) is not None:
                    head[th.from_target(name)] = f.get_tensor(name)
    return task, head
