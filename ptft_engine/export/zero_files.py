"""DeepSpeed's checkpoint files: safe unpickling, rank file discovery, page release.

DeepSpeed's files are pickles: they are unpickled with torch's weights_only loader,
allowing only the few DeepSpeed classes its optimizer state is known to contain, and
memory-mapped where the file allows it. A missing or damaged rank file is one line
naming the rank and the file (meta.json records the world size the run saved with).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import json
import mmap
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from ptft_engine.export.errors import ExportError

_SAFE_DS_GLOBALS = {
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
}
_RANK_RE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_(\d+)_(optim|model)_states\.pt$")


def _rank_of(path: Path) -> str:
    m = _RANK_RE.search(path.name)
    return f"rank {int(m.group(1))} file" if m else "file"


def torch_load(path: Path) -> dict[str, Any]:
    """Unpickle a DeepSpeed file with weights_only, allowing only known DeepSpeed classes;
    memory-mapped where the file allows it. A damaged file is one line naming it."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        unknown = sorted(set(unsafe) - _SAFE_DS_GLOBALS)
        if unknown:
            raise ExportError(f"{path}: refusing to unpickle unexpected class(es) {', '.join(unknown)}")
        allowed = []
        for dotted in unsafe:
            module, _, name = dotted.rpartition(".")
            allowed.append(getattr(importlib.import_module(module), name))
        with torch.serialization.safe_globals(allowed):
            try:
                return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
                if "zip" not in str(exc) or zipfile.is_zipfile(path):
                    raise
                return torch.load(str(path), map_location="cpu", weights_only=True)
    except ExportError:
        raise
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        why = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise ExportError(f"{path}: {_rank_of(path)} is damaged or truncated ({why})") from None


def _check_complete(path: Path) -> None:
    """torch's zip files end with a central directory: a truncated file has none."""
    try:
        with zipfile.ZipFile(path):
            pass
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return  # a legacy (non-zip) torch file: torch_load judges it
        raise ExportError(f"{path}: {_rank_of(path)} is damaged or truncated (no zip central directory; "
                          f"{path.stat().st_size} bytes)") from None
    except OSError as exc:
        raise ExportError(f"{path}: {_rank_of(path)} cannot be read ({exc.strerror or exc})") from None


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform.startswith("linux") else None
_MADV_DONTNEED = 4


def release_pages(t: torch.Tensor) -> None:
    """Drop the resident pages of a slice of a memory-mapped (read-only, private) rank file
    from this process: they count in its RSS until the whole file is unmapped, and the
    kernel re-reads them from the file if they are touched again. Callers pass only slices
    of files torch_load memory-mapped. Only pages that lie wholly inside the slice are
    dropped, and only on Linux; elsewhere this does nothing."""
    if _LIBC is None or t.numel() == 0:
        return
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    lo = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    hi = end // mmap.PAGESIZE * mmap.PAGESIZE
    if hi > lo:
        _LIBC.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_DONTNEED)


def _rank_files(ckpt: Path, kind: str, world: int | None = None) -> list[Path]:
    """The rank files of one kind, ranks 0..world-1; a missing one is named with its rank."""
    found = {}
    for p in ckpt.iterdir():
        m = _RANK_RE.search(p.name)
        if m and m.group(3) == kind:
            if int(m.group(2)) != 0:
                raise ExportError(f"{p}: model-parallel checkpoints (mp_rank > 0) are not supported")
            found[int(m.group(1))] = p
    if not found:
        return []
    ranks = sorted(found)
    expected = range(world if world else max(ranks) + 1)
    missing = [r for r in expected if r not in found]
    if missing:
        some = found[ranks[0]]
        name = some.name.replace(f"zero_pp_rank_{ranks[0]}_", f"zero_pp_rank_{missing[0]}_")
        more = f" (and {len(missing) - 1} more rank(s))" if len(missing) > 1 else ""
        saved = f"meta.json: world_size={world}" if world else f"ranks up to {max(ranks)} exist"
        raise ExportError(f"{ckpt}: rank {missing[0]} file {name} is missing{more} ({saved})")
    if world and len(ranks) > world:
        raise ExportError(f"{ckpt}: {kind} files of {len(ranks)} ranks but meta.json says world_size={world}")
    return [found[r] for r in ranks]


def _optimizer_state(sd: dict, path: Path) -> dict:
    try:
        return sd["optimizer_state_dict"]
    except KeyError:
        raise ExportError(f"{path}: no optimizer_state_dict (not a DeepSpeed ZeRO optimizer file)") from None


def _saved_layout(ckpt: Path) -> tuple[int | None, int | None]:
    """(world size, ZeRO stage) as meta.json recorded them (None where it does not say)."""
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
    except (OSError, ValueError):
        return None, None
    meta = meta if isinstance(meta, dict) else {}
    world, stage = meta.get("world_size"), meta.get("zero_stage")
    return (world if isinstance(world, int) and world > 0 else None), (stage if isinstance(stage, int) else None)
