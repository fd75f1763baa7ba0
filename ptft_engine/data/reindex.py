"""`ptft shard --index-only`: an index (index.json + offset sidecars) for tars that exist
already, local or remote, so the stream can seek in them and check their sha256."""
from __future__ import annotations

import glob
import os
import tempfile

import numpy as np

from ptft_engine.data import remote, sources
from ptft_engine.data.errors import DataError
from ptft_engine.data.index import INDEX_NAME, ShardIndex, read_members, scan_tar


def _guess_kind(path: str, offsets) -> str | None:
    """The data kind from the first sample's members, as `ptft shard` would have written it."""
    if len(offsets) < 2:
        return None
    with open(path, "rb") as fh:
        exts = set(read_members(fh, offsets, 0)) - {"__key__"}
    if "pcm" in exts:  # `ptft shard --format audio` (its .txt is a transcript)
        return "audio"
    images = exts & set(sources.IMAGE_EXTS)
    if images:
        return "image_text" if "txt" in exts else "image"
    return "text" if "txt" in exts else None


def index_existing(inputs: list[str], output: str | None, *, timeout: float = 60.0, retries: int = 3) -> ShardIndex:
    """`ptft shard --index-only`: scan existing tars (local paths, brace ranges, URLs or
    pipe: commands) and write OUTPUT/index.json plus an offset sidecar per shard.

    Remote tars are downloaded once each to a temporary file; the index is written
    locally (put it beside the shards, where the stream looks for it)."""
    locations = [loc for spec in inputs for loc in
                 (remote.expand(spec) if remote.is_remote(spec) or remote.has_braces(spec)
                  else sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec])]
    if not locations:
        raise DataError(f"no shards in {inputs}")
    if output is None:
        if any(remote.is_remote(loc) for loc in locations):
            raise DataError("--index-only with URL or pipe: inputs needs --output (a local folder for index.json)")
        dirs = {os.path.dirname(os.path.abspath(loc)) for loc in locations}
        if len(dirs) != 1:
            raise DataError("--index-only over several folders needs --output")
        output = dirs.pop()
    os.makedirs(output, exist_ok=True)
    shards, kind = [], None
    for loc in locations:
        if remote.is_remote(loc):
            name = remote.file_name(loc)
            if not name.endswith(".tar"):
                raise DataError(f"{remote.redact(loc)} does not name a .tar shard")
            with tempfile.NamedTemporaryFile(suffix=".tar", dir=output) as tmp:
                try:
                    remote.fetch_file(loc, tmp, timeout=timeout, retries=retries)
                except remote.FetchError as exc:
                    raise DataError(f"cannot read {exc}") from None
                info = scan_tar(tmp.name, with_sha=True)
                kind = kind or _guess_kind(tmp.name, info.offsets)
            info.path = os.path.join(output, name)  # where the index says it is: beside index.json
        else:
            if not os.path.isfile(loc):
                raise DataError(f"shard {loc!r} does not exist")
            info = scan_tar(loc, with_sha=True)
            kind = kind or _guess_kind(loc, info.offsets)
        idx_path = os.path.join(output, os.path.basename(info.path)[: -len(".tar")] + ".idx")
        np.asarray(info.offsets, dtype="<i8").tofile(idx_path)
        info.offsets, info.offsets_path = None, idx_path
        shards.append(info)
    names = [os.path.basename(s.path) for s in shards]
    if len(set(names)) != len(names):
        raise DataError("--index-only inputs share file names; index each folder separately")
    index = ShardIndex(shards=shards, kind=kind)
    index.save(os.path.join(output, INDEX_NAME))
    return index
