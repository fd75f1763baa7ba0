"""Write WebDataset tar shards (webdataset.ShardWriter) and their index, in parallel.

Workers (a process pool) read and encode the inputs; this process appends their
samples in input order, so the same inputs always give the same shards. Each shard
is indexed (sample offsets, sha256) as soon as it is closed.
"""
from __future__ import annotations

import functools
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field

import webdataset as wds
from tqdm import tqdm

from ptft_engine.data import sources
from ptft_engine.data.errors import DataError, log
from ptft_engine.data.index import INDEX_NAME, ShardIndex, scan_tar, sha256_file

SHARD_PATTERN = "shard-%06d.tar"


@dataclass
class WriteSummary:
    samples: int = 0
    shards: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    bad: list[tuple[str, str]] = field(default_factory=list)
    index_path: str = ""

    @property
    def mb_per_s(self) -> float:
        return self.bytes_written / 1e6 / max(self.seconds, 1e-9)

    def lines(self, show_bad: int = 20) -> list[str]:
        out = [f"wrote {self.samples} samples in {self.shards} shards, {self.bytes_written / 1e6:.1f} MB "
               f"in {self.seconds:.1f} s ({self.mb_per_s:.1f} MB/s, {self.samples / max(self.seconds, 1e-9):.0f} samples/s)",
               f"index: {self.index_path}"]
        if self.bad:
            out.append(f"skipped {len(self.bad)} bad inputs:")
            out += [f"  {name}: {reason}" for name, reason in self.bad[:show_bad]]
            if len(self.bad) > show_bad:
                out.append(f"  ... and {len(self.bad) - show_bad} more")
        return out


def write_shards(
    inputs: list[str],
    output: str,
    opts: sources.Options,
    *,
    shard_bytes: int = 256 << 20,
    shard_samples: int = 1_000_000,
    workers: int | None = None,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> WriteSummary:
    if opts.format not in sources.FORMATS:
        raise ValueError(f"unknown input format {opts.format!r}; choose one of {', '.join(sources.FORMATS)}")
    os.makedirs(output, exist_ok=True)
    index_path = os.path.join(output, INDEX_NAME)
    if os.path.exists(index_path) and not overwrite:
        raise DataError(f"{index_path} already exists; pass --overwrite to replace those shards")
    for old in (p for p in os.listdir(output) if p.startswith("shard-") and p.endswith(".tar")):
        os.remove(os.path.join(output, old))  # stale shards of an earlier run would mix in

    items, meta = sources.plan(inputs, opts)
    summary = WriteSummary(index_path=index_path)
    index = ShardIndex(shards=[], kind={"text": "text", "jsonl": "text", "images": "image"}.get(opts.format, "image_text"),
                       extra=meta)

    def finish_shard(fname: str) -> None:
        info = scan_tar(fname)
        if info.samples == 0:
            os.remove(fname)
            return
        info.sha256 = sha256_file(fname)
        index.shards.append(info)

    workers = workers or min(len(items), os.cpu_count() or 1)
    start = time.perf_counter()
    work = functools.partial(sources.process, opts=opts)
    pool = mp.get_context("spawn").Pool(workers) if workers > 1 else None
    results = pool.imap(work, items, chunksize=1) if pool else map(work, items)
    writer = wds.ShardWriter(os.path.join(output, SHARD_PATTERN), maxcount=shard_samples, maxsize=shard_bytes,
                             post=finish_shard, verbose=0, encoder=False)
    try:
        bar = tqdm(total=len(items), unit="input", disable=not progress, desc="shard")
        for samples, bad, nbytes in results:
            if bad and strict:
                name, reason = bad[0]
                raise DataError(f"bad input {name}: {reason} (--strict)")
            summary.bad += bad
            summary.bytes_read += nbytes
            for sample in samples:
                sample["__key__"] = f"s{summary.samples:010d}"
                writer.write(sample)
                summary.samples += 1
            bar.update(1)
            bar.set_postfix(samples=summary.samples, bad=len(summary.bad), refresh=False)
        bar.close()
    finally:
        writer.close()
        if pool:
            pool.terminate()
    for name, reason in summary.bad:
        log.debug("bad input %s: %s", name, reason)
    if summary.samples == 0:
        raise DataError(f"no usable samples in {inputs} ({len(summary.bad)} bad inputs)")
    index.shards.sort(key=lambda s: s.path)
    index.save(index_path)
    summary.seconds = time.perf_counter() - start
    summary.shards = len(index.shards)
    summary.bytes_written = sum(s.bytes for s in index.shards)
    return summary
