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

Pre-tokenised shards (`ptft shard --tokenizer`) add per shard "lengths" (a sidecar of n
little-endian uint32: each sample's token count, what the packing plan needs) and
"ids_dtype" (numpy dtype of the samples' .ids members), and at the top level
"tokenizer_sha256" (of the tokenizer.json the ids were made with).
Audio shards (`ptft shard --format audio`) add per shard "lengths" (each clip's frame
count) and "seconds" (its total duration), and at the top level "sample_rate",
"pcm_dtype" ("<i2"), "total_seconds" and, when labelled, "classes". Like pre-tokenised
shards they keep the JSON list (the columns hold no lengths).
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field

from ptft_engine.data import remote
from ptft_engine.data.errors import DataError

# shard records live one level down (shard_info.py); importers of the index get them here too
from ptft_engine.data.shard_info import ShardInfo, sample_members, scan_tar, sha256_file, split_key  # noqa: F401
from ptft_engine.data.tarblocks import plain_members

INDEX_NAME = "index.json"
FORMAT = "ptft-shards"


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
            # the columns hold no token lengths: pre-tokenised shards keep the JSON list
            columns = len(self.shards) >= ic.COLUMNS_MIN_SHARDS and all(
                s.offsets is None and s.lengths_path is None for s in self.shards)
        if columns:
            ic.write_columns(os.path.join(root, ic.COLUMNS_NAME), self.shards, root)
            doc.update(columns=ic.COLUMNS_NAME, num_shards=len(self.shards))
        else:
            doc["shards"] = [s.to_json(root) for s in self.shards]
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)  # a reader never sees half an index


def load_index(path: str) -> ShardIndex:
    try:
        with open(path) as f:
            doc = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"index file {path!r} is not valid JSON: {exc}") from exc
    _check_format(doc, path)
    root = os.path.dirname(os.path.abspath(path))
    if "columns" in doc:
        # Big index: shards come from the binary sidecar, and nothing per shard touches the
        # filesystem here (a missing shard or offset file shows when a worker first opens it).
        from ptft_engine.data.index_columns import ShardColumns

        columns = ShardColumns(os.path.join(root, doc["columns"]), root, path, int(doc["num_shards"]))
        return ShardIndex(shards=columns, kind=doc.get("kind"), extra=_extra(doc))
    return index_from_doc(doc, path, lambda rel: os.path.join(root, rel), check_files=True)


def _check_format(doc, where: str) -> None:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f"{where!r} is not a ptft shard index (missing \"format\": \"{FORMAT}\")")


def _extra(doc: dict) -> dict:
    return {k: v for k, v in doc.items()
            if k not in ("format", "version", "kind", "total_samples", "shards", "columns", "num_shards")}


def index_from_doc(doc, where: str, locate, *, check_files: bool) -> ShardIndex:
    """The index in the parsed JSON list `doc` read from `where`; `locate` turns a path in it into a
    location (a local path or a URL). Local files are checked for existence at start; remote
    ones on first open (no per-shard network call at start)."""
    _check_format(doc, where)
    extra = _extra(doc)
    shards = []
    # Small index (a JSON list): each shard is checked here, so a missing one fails at start.
    for entry in doc["shards"]:
        p = locate(entry["path"])
        if check_files and not os.path.exists(p):
            raise DataError(f"shard {p!r} listed in index {where!r} does not exist")
        offsets, offsets_path = entry.get("offsets"), None
        if isinstance(offsets, str):
            offsets_path, offsets = locate(offsets), None
            if check_files and not os.path.exists(offsets_path):
                raise DataError(f"offset file {offsets_path!r} listed in index {where!r} does not exist")
        lengths_path = locate(entry["lengths"]) if entry.get("lengths") else None
        if check_files and lengths_path and not os.path.exists(lengths_path):
            raise DataError(f"token length file {lengths_path!r} listed in index {where!r} does not exist")
        shards.append(ShardInfo(path=p, samples=int(entry["samples"]), offsets=offsets, offsets_path=offsets_path,
                                bytes=int(entry.get("bytes", 0)), sha256=entry.get("sha256"),
                                lengths_path=lengths_path, ids_dtype=entry.get("ids_dtype"),
                                seconds=entry.get("seconds"), damaged=entry.get("damaged")))
    return ShardIndex(shards=shards, kind=doc.get("kind"), extra=extra)


def _select(index: ShardIndex, wanted: list[str], where: str) -> ShardIndex:
    """The shards of `index` at the locations `wanted`, in that order."""
    by_location = {s.path: s for s in index.shards}
    missing = [w for w in wanted if w not in by_location]
    if missing:
        raise DataError(f"shard {remote.redact(missing[0])} is not listed in {remote.redact(where)} "
                        f"({len(missing)} of {len(wanted)} missing); rewrite it with `ptft shard --index-only`")
    return ShardIndex(shards=[by_location[w] for w in wanted], kind=index.kind, extra=index.extra)


def _resolve_remote(spec: str, *, timeout: float, retries: int, cache_dir: str | None) -> ShardIndex:
    """A URL or pipe: source: fetch its index.json (once, not per shard) and pick the named shards."""
    groups: dict[str, list[str] | None] = {}  # index location -> the shards named from it (None: all)
    for location in remote.expand(spec):
        where = remote.index_location(location, INDEX_NAME)
        if remote.names_tar(location):
            groups.setdefault(where, [])
            if groups[where] is not None:
                groups[where].append(location)
        else:
            groups[where] = None
    parts = []
    for where, locations in groups.items():
        try:
            doc = json.loads(remote.fetch_bytes(where, timeout=timeout, retries=retries))
        except remote.FetchError as exc:
            if exc.missing:  # the source answered: there is no index
                raise DataError(f"cannot read the shard index {remote.redact(where)} ({exc}); make one with "
                                f"`ptft shard --index-only {remote.redact(spec)} --output DIR` and put DIR's files "
                                "beside the shards") from None
            why = "the source is unreachable; check that it is up and reachable from here" if exc.unreachable else ""
            raise DataError(f"cannot read the shard index {remote.redact(where)} ({exc})"
                            + (f"; {why}" if why else "")) from None
        except ValueError as exc:
            raise DataError(f"the shard index {remote.redact(where)} is not valid JSON ({exc})") from None
        if isinstance(doc, dict) and "columns" in doc:
            index = _remote_columns(doc, where, cache_dir=cache_dir, timeout=timeout, retries=retries)
        else:
            index = index_from_doc(doc, remote.redact(where), lambda rel, where=where: remote.sibling(where, rel),
                                   check_files=False)
        parts.append(index if locations is None else _select(index, locations, where))
    from ptft_engine.data.index_columns import concat_shards

    return ShardIndex(shards=concat_shards([p.shards for p in parts]), kind=parts[0].kind, extra=parts[0].extra)


def _remote_columns(doc: dict, where: str, *, cache_dir: str | None, timeout: float, retries: int) -> ShardIndex:
    """A big remote index: its column sidecar is fetched once into the cache folder (workers
    re-open it by name); shard locations are joined to the index's folder URL."""
    from ptft_engine.data.index_columns import ShardColumns

    _check_format(doc, remote.redact(where))
    root = remote.sibling(where, ".")
    if where.startswith("pipe:") or "?" in where or "#" in where:
        raise DataError(f"the column index {remote.redact(where)} can be read from plain http(s)/s3/gs URLs "
                        "only; write a JSON-list index for this source (ptft shard --index-only)")
    if cache_dir is None:
        from ptft_engine.data.cache import default_cache_dir

        cache_dir = default_cache_dir()
    local = os.path.join(cache_dir, "index", hashlib.sha256(where.encode()).hexdigest()[:32] + "-" +
                         os.path.basename(doc["columns"]))
    try:
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(f"{local}.{os.getpid()}.part", "wb") as f:
            remote.fetch_file(remote.sibling(where, doc["columns"]), f, timeout=timeout, retries=retries)
        os.replace(f"{local}.{os.getpid()}.part", local)
    except remote.FetchError as exc:
        raise DataError(f"cannot read the column file of {remote.redact(where)} ({exc})") from None
    return ShardIndex(shards=ShardColumns(local, root, remote.redact(where), int(doc["num_shards"])),
                      kind=doc.get("kind"), extra=_extra(doc))


def _local_tars(paths: list[str]) -> ShardIndex:
    """Named local tars: their entries of the index.json beside them when it lists them all, else scanned."""
    dirs = {os.path.dirname(os.path.abspath(p)) for p in paths}
    idx = os.path.join(dirs.pop(), INDEX_NAME) if len(dirs) == 1 else None
    if idx and os.path.exists(idx):
        index = load_index(idx)
        wanted = [os.path.abspath(p) for p in paths]
        if set(wanted) <= {s.path for s in index.shards}:
            return _select(index, wanted, idx)
    return ShardIndex(shards=[scan_tar(p) for p in paths])


def resolve_source(spec: str, *, timeout: float = 60.0, retries: int = 3, cache_dir: str | None = None) -> ShardIndex:
    """One config entry (index file, directory, glob, tar path, brace range, URL or pipe:
    command) -> its shards, or a clear error. `timeout`/`retries` bound reading a remote
    index; a big one's column sidecar is kept in `cache_dir` (default: the shard cache's)."""
    if remote.is_remote(spec):
        return _resolve_remote(spec, timeout=timeout, retries=retries, cache_dir=cache_dir)
    if remote.has_braces(spec):
        paths = remote.expand(spec)
        for p in paths:
            if not os.path.exists(p):
                raise DataError(f"shard path {p!r} (from {spec!r}) does not exist")
        return _local_tars(paths)
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
        return _local_tars([spec])
    return ShardIndex(shards=[scan_tar(p) for p in paths])


def read_members(fh: io.BufferedReader, offsets, i: int) -> dict[str, bytes]:
    """Sample i of an open shard, given its offset table, as {"__key__": key, ext: bytes};
    raises ValueError on damage."""
    start, stop = int(offsets[i]), int(offsets[i + 1])
    fh.seek(start)
    buf = fh.read(stop - start)
    if len(buf) < stop - start:
        raise ValueError(f"truncated: expected {stop - start} bytes at offset {start}, got {len(buf)}")
    fast = plain_members(buf)
    if fast is not None:
        return _as_sample((name, split_key(name), data) for name, data in fast)
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


def _as_sample(members) -> dict[str, bytes]:
    """{"__key__": key, ext: bytes} of (name, (key, ext) or None, data) members of one sample."""
    sample: dict[str, bytes] = {}
    for name, parts, data in members:
        if parts is None:
            continue  # not a sample member (as sample_members skips it)
        key, ext = parts
        if sample.setdefault("__key__", key) != key:
            raise ValueError(f"member {name!r} does not belong to sample {sample['__key__']!r}")
        sample[ext] = data
    if "__key__" not in sample:
        raise ValueError("no members")
    return sample
