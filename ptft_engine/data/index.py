"""The shard index: per shard its sample count, sha256 and each sample's byte offset.

The offsets let a reader seek straight to sample i of a shard (a plain tar has no
table of contents), which is what makes a mid-epoch resume a seek instead of a
re-read. `ptft shard` writes the index; shards without one are scanned at start.

Index file (JSON): {"format": "ptft-shards", "version": 1, "kind": ..., "shards": [
  {"path": relative to the index file, "samples": n, "bytes": b, "sha256": hex,
   "offsets": "shard-000000.idx"}]}
The offsets (n + 1 little-endian int64: start of each sample's first tar header, then
the end of the last sample) live in a sidecar file per shard, read only by the worker
that opens the shard, so the index stays small however many samples there are. An
inline list of ints is accepted too. A big index keeps its shards as columns in a
binary sidecar instead of the "shards" list (index_columns.py).
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ptft_engine.data.errors import DataError, log

INDEX_NAME = "index.json"
FORMAT = "ptft-shards"
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's key/extension split


def split_key(name: str) -> tuple[str, str] | None:
    """'dir/abc.jpg' -> ('dir/abc', 'jpg'), as webdataset groups tar members into samples."""
    m = _KEY_RE.match(name)
    return (m.group(1), m.group(2)) if m else None


def sample_members(tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, str, str]]:
    """(member, sample key, extension) for each regular file of `tar` that names a sample."""
    for info in tar:
        parts = split_key(info.name) if info.isfile() else None
        if parts is not None:
            yield info, *parts


@dataclass
class ShardInfo:
    path: str  # absolute
    samples: int
    offsets: list[int] | None = None  # inline, or
    offsets_path: str | None = None  # a sidecar of n + 1 little-endian int64
    bytes: int = 0
    sha256: str | None = None

    def offset_table(self) -> np.ndarray:
        """The n + 1 sample offsets; read from the sidecar on each call (callers cache)."""
        if self.offsets is not None:
            return np.asarray(self.offsets, dtype=np.int64)
        if self.offsets_path is None:
            return np.asarray(scan_tar(self.path).offsets, dtype=np.int64)
        table = np.fromfile(self.offsets_path, dtype="<i8")
        if len(table) != self.samples + 1:
            raise DataError(f"offset file {self.offsets_path!r} holds {len(table)} entries, "
                            f"expected {self.samples + 1} for shard {self.path!r}")
        return table

    def to_json(self, root: str) -> dict:
        offsets = os.path.relpath(self.offsets_path, root) if self.offsets_path else self.offsets
        return {"path": os.path.relpath(self.path, root), "samples": self.samples, "bytes": self.bytes,
                "sha256": self.sha256, "offsets": offsets}


@dataclass
class ShardIndex:
    shards: Sequence[ShardInfo]  # a list, or index_columns.ShardColumns for a column sidecar
    kind: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        from ptft_engine.data.index_columns import shard_counts

        return int(shard_counts(self.shards).sum())

    def save(self, path: str, columns: bool | None = None) -> None:
        """Write index.json; with `columns` (default: from COLUMNS_MIN_SHARDS shards on) the
        shards go to a binary sidecar beside it, written first so index.json never names
        a missing one."""
        from ptft_engine.data import index_columns as ic

        root = os.path.dirname(os.path.abspath(path))
        doc = {"format": FORMAT, "version": 1, "kind": self.kind, "total_samples": self.total, **self.extra}
        if columns is None:
            columns = len(self.shards) >= ic.COLUMNS_MIN_SHARDS and all(s.offsets is None for s in self.shards)
        if columns:
            ic.write_columns(os.path.join(root, ic.COLUMNS_NAME), self.shards, root)
            doc.update(columns=ic.COLUMNS_NAME, num_shards=len(self.shards))
        else:
            doc["shards"] = [s.to_json(root) for s in self.shards]
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)  # a reader never sees half an index


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def scan_tar(path: str, *, with_sha: bool = False) -> ShardInfo:
    """Read the tar headers of one shard (seeking over the data) and record sample offsets.

    A shard that is truncated or garbled part-way keeps the samples before the damage;
    the damage is logged naming the shard.
    """
    offsets: list[int] = []
    last_key = None
    end = 0
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info, key, _ in sample_members(tar):
                if key != last_key:
                    offsets.append(info.offset)
                    last_key = key
                end = info.offset_data + -(-info.size // 512) * 512
    except (tarfile.TarError, OSError, EOFError) as exc:
        log.warning("shard %s is damaged after %d samples (%s); keeping those", path, len(offsets), exc)
        # the last sample begun may be incomplete: it ends the kept ones instead
        end = offsets.pop() if offsets else 0
    size = os.path.getsize(path)
    end = min(end, size)
    return ShardInfo(path=os.path.abspath(path), samples=len(offsets), offsets=offsets + [end], bytes=size,
                     sha256=sha256_file(path) if with_sha else None)


def load_index(path: str) -> ShardIndex:
    try:
        with open(path) as f:
            doc = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"index file {path!r} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f"{path!r} is not a ptft shard index (missing \"format\": \"{FORMAT}\")")
    root = os.path.dirname(os.path.abspath(path))
    extra = {k: v for k, v in doc.items()
             if k not in ("format", "version", "kind", "total_samples", "shards", "columns", "num_shards")}
    if "columns" in doc:
        # Big index: shards come from the binary sidecar, and nothing per shard touches the
        # filesystem here (a missing shard or offset file shows when a worker first opens it).
        from ptft_engine.data.index_columns import ShardColumns

        columns = ShardColumns(os.path.join(root, doc["columns"]), root, path, int(doc["num_shards"]))
        return ShardIndex(shards=columns, kind=doc.get("kind"), extra=extra)
    shards = []
    # Small index (a JSON list): each shard is checked here, so a missing one fails at start.
    for entry in doc["shards"]:
        p = os.path.join(root, entry["path"])
        if not os.path.exists(p):
            raise DataError(f"shard {p!r} listed in index {path!r} does not exist")
        offsets, offsets_path = entry.get("offsets"), None
        if isinstance(offsets, str):
            offsets_path, offsets = os.path.join(root, offsets), None
            if not os.path.exists(offsets_path):
                raise DataError(f"offset file {offsets_path!r} listed in index {path!r} does not exist")
        shards.append(ShardInfo(path=p, samples=int(entry["samples"]), offsets=offsets, offsets_path=offsets_path,
                                bytes=int(entry.get("bytes", 0)), sha256=entry.get("sha256")))
    return ShardIndex(shards=shards, kind=doc.get("kind"), extra=extra)


def resolve_source(spec: str) -> ShardIndex:
    """One config entry (index file, directory, glob or tar path) -> its shards, or a clear error."""
    if os.path.isdir(spec):
        idx = os.path.join(spec, INDEX_NAME)
        if os.path.exists(idx):
            return load_index(idx)
        paths = sorted(glob.glob(os.path.join(spec, "*.tar")))
        if not paths:
            raise DataError(f"shard directory {spec!r} has neither {INDEX_NAME} nor .tar files")
    elif spec.endswith(".json"):
        if not os.path.exists(spec):
            raise DataError(f"shard index {spec!r} does not exist")
        return load_index(spec)
    elif glob.has_magic(spec):
        paths = sorted(glob.glob(spec))
        if not paths:
            raise DataError(f"shard pattern {spec!r} matches no files")
    else:
        if not os.path.exists(spec):
            raise DataError(f"shard path {spec!r} does not exist")
        paths = [spec]
    return ShardIndex(shards=[scan_tar(p) for p in paths])


def read_members(fh: io.BufferedReader, offsets, i: int) -> dict[str, bytes]:
    """Sample i of an open shard, given its offset table, as {"__key__": key, ext: bytes};
    raises ValueError on damage."""
    start, stop = int(offsets[i]), int(offsets[i + 1])
    fh.seek(start)
    buf = fh.read(stop - start)
    if len(buf) < stop - start:
        raise ValueError(f"truncated: expected {stop - start} bytes at offset {start}, got {len(buf)}")
    sample: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(buf), mode="r:") as tar:
        for info, key, ext in sample_members(tar):
            if sample.setdefault("__key__", key) != key:
                raise ValueError(f"member {info.name!r} does not belong to sample {sample['__key__']!r}")
            data = tar.extractfile(info).read()
            if len(data) != info.size:
                raise ValueError(f"member {info.name!r} is truncated")
            sample[ext] = data
    if "__key__" not in sample:
        raise ValueError("no members")
    return sample
