"""Token lengths of every sample of a shard: what the packing plan is built from.

Pre-tokenised shards carry them in the index (a `.lens` sidecar, fetched for a remote
shard). For raw-text shards they come from one tokenisation pass over the shard (a
remote one is downloaded into the node-local cache for it), done once per process and
kept in memory (keyed by the tokenizer file and the shard), so the loaders the trainer
makes for each epoch and each evaluation do not repeat it.
"""
from __future__ import annotations

import os
import tarfile
from collections import OrderedDict

import numpy as np

from ptft_engine.data.cache import ShardCache, ShardFailed
from ptft_engine.data.errors import BadSamples
from ptft_engine.data.index import ShardInfo, read_members
from ptft_engine.data.remote import is_remote, redact
from ptft_engine.data.tokenizer import tokenizer_file

ENCODE_CHUNK = 1024  # texts per tokenizer call (the Rust tokenizer batches them in parallel)
_CACHE: OrderedDict[tuple, tuple[np.ndarray, list]] = OrderedDict()
_CACHE_SHARDS = 4096


def _file_key(path: str) -> tuple:
    if is_remote(path):
        return (path,)
    st = os.stat(path)
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


def tokenised_lengths(shard: ShardInfo, builder, cache: ShardCache) -> tuple[np.ndarray, list[tuple[str, str, str]]]:
    """(token count per sample, skipped samples as (shard, key, reason)); an unreadable or
    undecodable sample counts 0 tokens, so the plan leaves it out."""
    key = (_file_key(tokenizer_file(builder.cfg.tokenizer)), _file_key(shard.path), shard.sha256, shard.samples,
           builder.cfg.text_field)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    lengths = np.zeros(shard.samples, dtype=np.int64)
    skipped: list[tuple[str, str, str]] = []
    bad = BadSamples(strict=False, log_limit=0)
    bad.skip = lambda s, k, reason: skipped.append((s, k, reason))  # collect; the caller decides
    records = []
    name = redact(shard.path)

    def flush():
        texts, kept = builder.texts(records, bad)
        for i, ids in zip(kept, builder.tok.encode_batch(texts) if texts else []):
            lengths[i] = len(ids)
        records.clear()

    try:
        opened = cache.open(shard)  # a wrong offset file raises DataError: the index is broken
    except (ShardFailed, OSError) as exc:  # every sample of it is skipped, as the stream would
        skipped += [(name, f"sample #{i}", f"cannot open ({exc})") for i in range(shard.samples)]
        return lengths, skipped  # not kept: a later loader tries again
    with opened.fh as fh:
        for i in range(shard.samples):
            try:
                members = read_members(fh, opened.table, i)
            except (ValueError, tarfile.TarError, OSError, EOFError) as exc:
                skipped.append((name, f"sample #{i}", f"unreadable ({exc})"))
                continue
            records.append((i, name, members.pop("__key__"), members))
            if len(records) == ENCODE_CHUNK:
                flush()
        flush()
    _CACHE[key] = (lengths, skipped)
    if len(_CACHE) > _CACHE_SHARDS:
        _CACHE.popitem(last=False)
    return lengths, skipped


def shard_lengths(shard: ShardInfo, builder, bad: BadSamples, cache: ShardCache) -> np.ndarray:
    """Token count per sample of `shard` for `builder`'s tokenizer; skips go to `bad`
    (strict mode: the first raises, naming the shard and key)."""
    if redact(shard.path) in builder.id_shards:
        return shard.token_lengths(timeout=cache.timeout, retries=cache.retries)
    lengths, skipped = tokenised_lengths(shard, builder, cache)
    for s, k, reason in skipped:
        bad.skip(s, k, reason)
    return lengths
