"""Load an export (ours or a transformers checkpoint directory) into an engine model.

Safe by construction: only JSON and safetensors are read. Pickle files (*.bin, *.pt ...)
are refused when they are the only weights; the manifest's sha256 are checked first;
a tensor whose shape the config does not predict is a one-line error naming it.
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
from ptft_engine.export.manifest import verify
from ptft_engine.export.safetensors_io import PICKLE_SUFFIXES, iter_tensors, refuse_pickle, weight_files

log = logging.getLogger(__name__)


@dataclass
class LoadedExport:
    model: torch.nn.Module
    config: Any                       # engine model config
    layout: str                       # "native", "hf-bert", "hf-gpt2", "hf-llama", "hf-vit"
    manifest: dict[str, Any] | None   # None for a plain transformers directory
    path: Path
    extras: dict[str, Any] = field(default_factory=dict)


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


def load_export(path: str | Path, *, dtype: torch.dtype | None = None, device: str = "cpu",
                verify_checksums: bool = True) -> LoadedExport:
    directory = Path(path)
    if not directory.is_dir():
        raise ExportError(f"{directory}: not a directory")
    files = weight_files(directory)  # refuses a directory whose only weights are pickles
    pickles = [p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        log.warning("%s: ignoring pickle file(s) %s; only safetensors are read", directory, ", ".join(sorted(pickles)))
    manifest = verify(directory) if verify_checksums else None
    config = read_config(directory)
    layout, cfg = layout_of_config(config, str(directory / "config.json"))

    from ptft_engine.models import build_model
    from ptft_engine.models.registry import _builders

    # map names first (headers only) to decide the model's optional parts
    names = _tensor_names(files)
    engine_names = {}
    for name in names:
        mapped = [(name, None)] if layout is None else layout.from_target(name, torch.empty(0))
        for engine_name, _ in mapped:
            engine_names[engine_name] = name
    kwargs = {} if layout is None else layout.build_kwargs(set(engine_names))
    # built for real (not on meta + assign): tied projections must keep sharing one Parameter
    model = _builders()[type(cfg)](cfg, **kwargs) if kwargs else build_model(cfg)
    from ptft_engine.export.writer import unique_state

    expected = dict(unique_state(model))
    loaded: set[str] = set()
    for name, tensor in iter_tensors(directory):
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
    return LoadedExport(model=model, config=cfg, layout="native" if layout is None else layout.name,
                        manifest=manifest, path=directory)


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
