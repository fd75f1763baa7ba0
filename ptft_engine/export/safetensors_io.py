"""Streaming safetensors writer (sharded, with an index) and a reader that refuses pickle.

Tensors are written to their shard file as they arrive (a new shard starts once one would
exceed the size threshold), so exporting holds no more than the tensor being written.
Shards are written under temporary names and renamed to HF's
`model-0000i-of-0000N.safetensors` once N is known; a single shard is `model.safetensors`.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

from ptft_engine.export.errors import ExportError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Files a loader must never read: they unpickle arbitrary objects.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str | int) -> int:
    """'2GB' / '500MB' / 1024 -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ExportError(f"--max-shard-size {text!r} is not a size like 500MB or 2GB")
    return max(1, int(float(m.group(1)) * _UNITS[m.group(2).lower()]))


class ShardedWriter:
    """add(name, tensor) ... close() -> list of written files (relative names).

    Each tensor's bytes go to the open shard file as soon as it is added, so the writer
    holds no tensor: peak memory is the caller's (one tensor), not a shard. The header
    (names, shapes, offsets) is known only at the end: the data is written after a
    reserved header room, and the header lands in that room, padded with spaces as the
    safetensors format allows; a header that outgrows the room (thousands of tensors in
    a shard) makes the shard be rewritten once, copied in bounded chunks.
    """

    HEADER_ROOM = 64 * 1024
    _COPY_CHUNK = 16 * 2**20

    def __init__(self, out_dir: str | Path, max_shard_bytes: int, dtype: torch.dtype | None = None,
                 metadata: dict[str, str] | None = None):
        self.out_dir = Path(out_dir)
        self.max_bytes = max_shard_bytes
        self.dtype = dtype
        self.metadata = {"format": "pt", **(metadata or {})}
        self._file = None
        self._entries: dict[str, dict] = {}  # the open shard's header entries
        self._shard_bytes = 0
        self._tmp_files: list[Path] = []
        self._where: dict[str, int] = {}  # tensor name -> shard number
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._where or name in self._entries:
            raise ExportError(f"tensor {name!r} written twice")
        t = tensor.detach()
        if self.dtype is not None and t.is_floating_point():
            t = t.to(self.dtype)
        if t.dtype not in _ST_DTYPES:
            raise ExportError(f"tensor {name!r}: dtype {t.dtype} cannot be stored in safetensors")
        t = t.contiguous().cpu()
        nbytes = t.numel() * t.element_size()
        if self._entries and self._shard_bytes + nbytes > self.max_bytes:
            self._finish_shard()
        if self._file is None:
            path = self.out_dir / f".shard-{len(self._tmp_files):05d}.tmp"
            self._tmp_files.append(path)
            self._file = open(path, "wb")
            self._file.seek(8 + self.HEADER_ROOM)
        if nbytes:
            self._file.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        self._entries[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape),
                               "data_offsets": [self._shard_bytes, self._shard_bytes + nbytes]}
        self._where[name] = len(self._tmp_files) - 1
        self._shard_bytes += nbytes
        self.total_bytes += nbytes

    def _finish_shard(self) -> None:
        if self._file is None:
            return
        header = json.dumps({"__metadata__": self.metadata, **self._entries}, separators=(",", ":")).encode()
        f, path = self._file, self._tmp_files[-1]
        if len(header) <= self.HEADER_ROOM:
            f.seek(0)
            f.write(struct.pack("<Q", self.HEADER_ROOM) + header + b" " * (self.HEADER_ROOM - len(header)))
            f.close()
        else:  # rare: rewrite with a header of the right size
            f.close()
            header += b" " * (-len(header) % 8)
            moved = path.with_suffix(".data")
            path.rename(moved)
            with open(moved, "rb") as src, open(path, "wb") as dst:
                dst.write(struct.pack("<Q", len(header)) + header)
                src.seek(8 + self.HEADER_ROOM)
                shutil.copyfileobj(src, dst, self._COPY_CHUNK)
            moved.unlink()
        self._file, self._entries, self._shard_bytes = None, {}, 0

    def close(self) -> list[str]:
        self._finish_shard()
        n = len(self._tmp_files)
        if n == 0:
            raise ExportError("nothing to export: the model has no tensors")
        if n == 1:
            names = [SINGLE_FILE]
        else:
            names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for tmp, name in zip(self._tmp_files, names):
            tmp.replace(self.out_dir / name)
        if n > 1:
            index = {"metadata": {"total_size": self.total_bytes},
                     "weight_map": {k: names[i] for k, i in sorted(self._where.items())}}
            (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=1))
            names.append(INDEX_FILE)
        return names


def refuse_pickle(directory: Path) -> None:
    bad = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if bad:
        raise ExportError(f"{directory}: refusing to load pickle file(s) {', '.join(bad)} "
                          "(they can run arbitrary code); convert the checkpoint to safetensors first")


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of an export directory (single file or the index's shards)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"{directory}: not a directory")
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise ExportError(f"{index}: not a valid safetensors index ({exc})") from None
        files = sorted(set(weight_map.values()))
        for f in files:
            if Path(f).name != f or not f.endswith(".safetensors"):
                raise ExportError(f"{index}: shard name {f!r} is not a safetensors file in this directory")
        return [directory / f for f in files]
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    refuse_pickle(directory)
    raise ExportError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} found")


def iter_tensors(directory: str | Path, device: str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) from every shard, one shard open at a time; only safetensors is read."""
    from safetensors import SafetensorError, safe_open

    for path in weight_files(directory):
        if not path.is_file():
            raise ExportError(f"{path}: shard listed in the index is missing")
        try:
            with safe_open(str(path), framework="pt", device=device) as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except SafetensorError as exc:
            raise ExportError(f"{path}: not a readable safetensors file ({exc})") from None
