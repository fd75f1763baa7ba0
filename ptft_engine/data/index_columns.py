"""Compact columns for big shard indexes: one safetensors sidecar beside index.json.

A JSON list of a million shards takes seconds and about a gigabyte to parse, in every
rank and worker; the same index as columns loads in milliseconds. `index.json` then
says {"columns": "index.columns.safetensors", "num_shards": n} instead of listing
"shards", and the sidecar holds:
  samples  int64 (n,)          bytes  int64 (n,)          sha256  uint8 (n, 32), if known
  paths, offsets               packed string tables: utf-8 bytes (uint8) + end of each
  path_ends, offsets_ends      string (int64 (n,)); paths relative to the index file,
                               an empty offsets entry means "scan the tar on open"
Loading reads `samples` only; the other columns are read when a shard is first asked
for by id, and no shard file is touched at load (a missing shard shows at its first
open). safetensors reads each column by itself and pickles as a file name, so
DataLoader workers re-read nothing they do not use.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ptft_engine.data.errors import DataError
from ptft_engine.data.shard_info import ShardInfo

COLUMNS_NAME = "index.columns.safetensors"
COLUMNS_MIN_SHARDS = 1000  # `ptft shard` writes columns from this many shards on; JSON below
_ENDS = {"paths": "path_ends", "offsets": "offsets_ends"}


def pack_strings(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A packed string table: the utf-8 bytes of all strings and the end of each."""
    encoded = [s.encode("utf-8") for s in strings]
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64) if encoded else np.zeros(0, np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), ends


def write_columns(path: str, shards: Sequence[ShardInfo], root: str) -> None:
    """Write the sidecar atomically (a reader never sees half of it)."""
    if any(s.offsets is not None for s in shards):
        raise ValueError("shards with inline offsets cannot be written as columns; give them offset files")
    cols = {"samples": np.array([s.samples for s in shards], dtype=np.int64),
            "bytes": np.array([s.bytes for s in shards], dtype=np.int64)}
    cols["paths"], cols["path_ends"] = pack_strings([os.path.relpath(s.path, root) for s in shards])
    cols["offsets"], cols["offsets_ends"] = pack_strings(
        [os.path.relpath(s.offsets_path, root) if s.offsets_path else "" for s in shards])
    if shards and all(s.sha256 for s in shards):
        cols["sha256"] = np.frombuffer(b"".join(bytes.fromhex(s.sha256) for s in shards),
                                       dtype=np.uint8).reshape(len(shards), 32)
    save_columns(path, cols)


def save_columns(path: str, cols: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    tmp = path + ".tmp"
    save_file(cols, tmp, metadata={"num_shards": str(len(cols["samples"]))})
    os.replace(tmp, path)


class ShardColumns(Sequence):
    """The shards of a column sidecar as a read-only sequence of ShardInfo, each built
    when asked for; `counts()` is the samples column without building any."""

    def __init__(self, file: str, root: str, index_path: str, num_shards: int):
        from safetensors import safe_open

        self.file, self.root, self.index_path = file, root, index_path
        self._cols: dict[str, np.ndarray] = {}
        try:
            with safe_open(file, framework="numpy") as f:
                self._names = set(f.keys())
                self._cols["samples"] = f.get_tensor("samples")
        except FileNotFoundError:
            raise DataError(f"column file {file!r} named by index {index_path!r} does not exist") from None
        except Exception as exc:  # safetensors raises its own error types for a bad header
            raise DataError(f"column file {file!r} of index {index_path!r} is unreadable ({exc})") from exc
        if len(self._cols["samples"]) != num_shards:
            raise DataError(f"column file {file!r} holds {len(self._cols['samples'])} shards but index "
                            f"{index_path!r} says {num_shards}: they were written by different runs")

    def _col(self, name: str) -> np.ndarray | None:
        if name not in self._cols and name in self._names:
            from safetensors import safe_open

            with safe_open(self.file, framework="numpy") as f:
                self._cols[name] = f.get_tensor(name)
        return self._cols.get(name)

    def __getstate__(self) -> dict:  # workers get the file name and the small column only
        return {**self.__dict__, "_cols": {"samples": self._cols["samples"]}}

    def counts(self) -> np.ndarray:
        return self._cols["samples"]

    def __len__(self) -> int:
        return len(self._cols["samples"])

    def _string(self, table: str, i: int) -> str:
        blob, ends = self._col(table), self._col(_ENDS[table])
        start = int(ends[i - 1]) if i else 0
        return bytes(blob[start:int(ends[i])]).decode("utf-8")

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"shard {i} outside the {len(self)} of index {self.index_path!r}")
        offsets = self._string("offsets", i)
        sha = self._col("sha256")
        return ShardInfo(path=os.path.join(self.root, self._string("paths", i)),
                         samples=int(self._cols["samples"][i]),
                         offsets_path=os.path.join(self.root, offsets) if offsets else None,
                         bytes=int(self._col("bytes")[i]), sha256=bytes(sha[i]).hex() if sha is not None else None)


class ChainedShards(Sequence):
    """Several shard sequences as one, by global shard id, without copying them."""

    def __init__(self, parts: list[Sequence]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts], dtype=np.int64)

    def counts(self) -> np.ndarray:
        return np.concatenate([shard_counts(p) for p in self.parts]) if self.parts else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i) + (len(self) if int(i) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"shard {i} outside the {len(self)} shards")
        part = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[part][i - int(self.starts[part])]


def shard_counts(shards: Sequence[ShardInfo]) -> np.ndarray:
    """Samples per shard as int64, from the column where there is one."""
    if hasattr(shards, "counts"):
        return shards.counts()
    return np.fromiter((s.samples for s in shards), dtype=np.int64, count=len(shards))


def concat_shards(parts: list[Sequence[ShardInfo]]) -> Sequence[ShardInfo]:
    """One sequence of all parts' shards: a plain list for plain lists, else a view."""
    if all(isinstance(p, list) for p in parts):
        return [s for p in parts for s in p]
    return ChainedShards([p for p in parts if len(p)])
