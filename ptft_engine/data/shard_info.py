"""One shard's record (ShardInfo: samples, sha256, offsets) and what builds it from a tar:
the header scan that finds where each sample starts, and the file's sha256.

Below index.py, index_columns.py and cache.py, which all use it, so none of them needs
another to get it.
"""
from __future__ import annotations

import hashlib
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ptft_engine.data import remote
from ptft_engine.data.errors import DataError, log

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
    lengths_path: str | None = None  # pre-tokenised: n little-endian uint32 token counts
    ids_dtype: str | None = None  # pre-tokenised: dtype of the .ids members
    seconds: float | None = None  # audio: the shard's total duration (lengths_path: frames per clip)
    damaged: str | None = None  # indexed from a damaged tar: why (its complete samples before it are kept)

    def token_lengths(self, timeout: float = 60.0, retries: int = 3) -> np.ndarray:
        """Each sample's token count (pre-tokenised shards only; a remote sidecar is fetched)."""
        if remote.is_remote(self.lengths_path):
            raw = remote.fetch_bytes(self.lengths_path, timeout=timeout, retries=retries)
            table = np.frombuffer(raw, dtype="<u4")
        else:
            table = np.fromfile(self.lengths_path, dtype="<u4")
        if len(table) != self.samples:
            raise DataError(f"token length file {remote.redact(self.lengths_path)!r} holds {len(table)} entries, "
                            f"expected {self.samples} for shard {remote.redact(self.path)!r}")
        return table.astype(np.int64)

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
        out = {"path": os.path.relpath(self.path, root), "samples": self.samples, "bytes": self.bytes,
               "sha256": self.sha256, "offsets": offsets}
        if self.lengths_path:
            out["lengths"] = os.path.relpath(self.lengths_path, root)
        if self.ids_dtype:
            out["ids_dtype"] = self.ids_dtype
        if self.seconds is not None:
            out["seconds"] = self.seconds
        if self.damaged:
            out["damaged"] = self.damaged
        return out


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
    damaged = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info, key, _ in sample_members(tar):
                if key != last_key:
                    offsets.append(info.offset)
                    last_key = key
                end = info.offset_data + -(-info.size // 512) * 512
    except (tarfile.TarError, OSError, EOFError) as exc:
        # the last sample begun may be incomplete: it ends the kept ones instead
        end = offsets.pop() if offsets else 0
        damaged = f"{type(exc).__name__}: {exc} after {len(offsets)} complete samples"
        log.warning("shard %s is damaged (%s); its %d complete samples are kept, the rest is not read",
                    path, exc, len(offsets))
    size = os.path.getsize(path)
    end = min(end, size)
    return ShardInfo(path=os.path.abspath(path), samples=len(offsets), offsets=offsets + [end], bytes=size,
                     sha256=sha256_file(path) if with_sha else None, damaged=damaged)
