"""Write WebDataset tar shards and their index, in parallel.

Workers (a process pool) read the inputs and encode each sample as tar members; this
process appends them in input order, so the same inputs always give the same shards.
Sample offsets and the sha256 are taken while a shard is written: nothing is read back.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import multiprocessing as mp
import os
import sys
import tarfile
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ptft_engine.data import sources
from ptft_engine.data.errors import DataError, log
from ptft_engine.data.index import INDEX_NAME, ShardIndex, ShardInfo

SHARD_PATTERN = "shard-%06d.tar"


MTIME = 1_700_000_000  # fixed, so the same inputs give byte-identical shards


def tar_sample(key: str, sample: dict[str, bytes]) -> bytes:
    """One sample as tar members KEY.EXT (GNU headers, data padded to 512-byte blocks),
    the layout webdataset's TarWriter writes. Built in the pool workers, so the writer
    process only appends bytes; that is what lets writing scale with the workers."""
    parts = []
    for ext in sorted(sample):
        data = sample[ext]
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mode, info.mtime = len(data), 0o444, MTIME
        info.uname = info.gname = "bigdata"
        parts += [info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"), data,
                  b"\0" * (-len(data) % tarfile.BLOCKSIZE)]
    return b"".join(parts)


def encode_item(job: tuple[int, sources.Item], opts: sources.Options) -> tuple[list[bytes], list, int, list]:
    """Read one work item and encode its samples as tar bytes; keys are item_sample.
    With a tokenizer, also the samples' token counts; for audio their frame counts (else an empty list)."""
    n, item = job
    samples, bad, nbytes = sources.process(item, opts)
    lengths = sources.add_token_ids(samples, opts) if opts.tokenizer and samples else []
    if opts.format == "audio":  # frames of int16 PCM: the index keeps each clip's duration
        lengths = [len(s["pcm"]) // 2 for s in samples]
    return [tar_sample(f"{n:07d}_{j:06d}", s) for j, s in enumerate(samples)], bad, nbytes, lengths


class ShardFiles:
    """Appends encoded samples to shard-NNNNNN.tar files, rotating by size / sample
    count, and records each sample's offset and the file's sha256 as it goes."""

    def __init__(self, pattern: str, max_bytes: int, max_samples: int, ids_dtype: str | None = None,
                 sample_rate: int | None = None):
        self.pattern, self.max_bytes, self.max_samples = pattern, max_bytes, max_samples
        self.ids_dtype = ids_dtype  # pre-tokenised: each write() brings the sample's token count
        self.sample_rate = sample_rate  # audio: each write() brings the clip's frame count
        self.shards: list[ShardInfo] = []
        self.file = None

    def write(self, buf: bytes, length: int | None = None) -> None:
        if self.file is None or len(self.offsets) >= self.max_samples or self.pos >= self.max_bytes:
            self.finish()
            self.path = os.path.abspath(self.pattern % len(self.shards))
            self.file = open(self.path, "wb")
            self.sha = hashlib.sha256()
            self.offsets: list[int] = []
            self.lengths: list[int] = []
            self.pos = 0
        self.offsets.append(self.pos)
        if length is not None:
            self.lengths.append(length)
        self.file.write(buf)
        self.sha.update(buf)
        self.pos += len(buf)

    def finish(self) -> None:
        if self.file is None:
            return
        tail = b"\0" * (2 * tarfile.BLOCKSIZE)  # the end-of-archive marker
        self.file.write(tail)
        self.sha.update(tail)
        self.file.close()
        self.file = None
        idx_path = self.path[: -len(".tar")] + ".idx"
        np.asarray(self.offsets + [self.pos], dtype="<i8").tofile(idx_path)
        lens_path = None
        if self.ids_dtype or self.sample_rate:
            lens_path = self.path[: -len(".tar")] + ".lens"
            np.asarray(self.lengths, dtype="<u4").tofile(lens_path)
        seconds = round(sum(self.lengths) / self.sample_rate, 3) if self.sample_rate else None
        self.shards.append(ShardInfo(path=self.path, samples=len(self.offsets), offsets_path=idx_path,
                                     bytes=self.pos + len(tail), sha256=self.sha.hexdigest(),
                                     lengths_path=lens_path, ids_dtype=self.ids_dtype,
                                     seconds=seconds))


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
               f"in {self.seconds:.1f} s ({self.mb_per_s:.1f} MB/s, "
               f"{self.samples / max(self.seconds, 1e-9):.0f} samples/s)",
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
    if opts.tokenizer:
        if opts.format not in ("text", "jsonl"):
            raise DataError(f"--tokenizer pre-tokenises text shards (--format text or jsonl), not {opts.format}")
        from ptft_engine.data.index import sha256_file
        from ptft_engine.data.tokenizer import load_tokenizer, tokenizer_file

        tok_path = os.path.abspath(tokenizer_file(opts.tokenizer))
        vocab = load_tokenizer(tok_path).vocab_size  # a missing or unusable tokenizer fails before any work
        opts = dataclasses.replace(opts, tokenizer=tok_path, ids_dtype="<u2" if vocab <= 1 << 16 else "<u4")
    if opts.manifest and opts.format != "audio":
        raise DataError(f"--manifest gives labels of audio clips (--format audio), not {opts.format}")
    if opts.format == "audio" and opts.sample_rate < 1:
        raise DataError(f"--sample-rate must be a positive number of Hz, not {opts.sample_rate}")
    if opts.label_field and opts.format != "jsonl":
        raise DataError(f"--label-field keeps a JSONL field; --format {opts.format} has none")
    for old in (p for p in os.listdir(output) if p.startswith("shard-") and p.endswith((".tar", ".idx", ".lens"))):
        os.remove(os.path.join(output, old))  # stale shards of an earlier run would mix in

    items, meta = sources.plan(inputs, opts)
    summary = WriteSummary(index_path=index_path)
    if opts.tokenizer:
        meta = {**meta, "tokenizer_sha256": sha256_file(opts.tokenizer)}
    kinds = {"text": "text", "jsonl": "text", "images": "image", "image_text": "image_text", "audio": "audio"}
    index = ShardIndex(shards=[], kind=kinds[opts.format], extra=meta)

    workers = workers or min(len(items), os.cpu_count() or 1)
    start = time.perf_counter()
    work = functools.partial(encode_item, opts=opts)
    # fork starts in milliseconds; nothing here has started threads yet (the bar comes later)
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    pool = ctx.Pool(workers) if workers > 1 else None
    results = pool.imap(work, enumerate(items), chunksize=1) if pool else map(work, enumerate(items))
    writer = ShardFiles(os.path.join(output, SHARD_PATTERN), shard_bytes, shard_samples,
                        ids_dtype=opts.ids_dtype if opts.tokenizer else None,
                        sample_rate=opts.sample_rate if opts.format == "audio" else None)
    try:
        bar = tqdm(total=len(items), unit="input", disable=not progress, desc="shard")
        for samples, bad, nbytes, lengths in results:
            if bad and strict:
                name, reason = bad[0]
                raise DataError(f"bad input {name}: {reason} (--strict)")
            summary.bad += bad
            summary.bytes_read += nbytes
            for j, buf in enumerate(samples):
                writer.write(buf, lengths[j] if lengths else None)
            summary.samples += len(samples)
            bar.update(1)
            bar.set_postfix(samples=summary.samples, bad=len(summary.bad), refresh=False)
        bar.close()
    finally:
        writer.finish()
        if pool:
            pool.terminate()
    for name, reason in summary.bad:
        log.debug("bad input %s: %s", name, reason)
    if summary.samples == 0:
        raise DataError(f"no usable samples in {inputs} ({len(summary.bad)} bad inputs)")
    index.shards = writer.shards
    if opts.format == "audio":
        from ptft_engine.data.audio_sources import PCM_DTYPE

        index.extra.update(pcm_dtype=PCM_DTYPE, total_seconds=round(sum(s.seconds for s in writer.shards), 3))
    index.save(index_path)
    summary.seconds = time.perf_counter() - start
    summary.shards = len(index.shards)
    summary.bytes_written = sum(s.bytes for s in index.shards)
    return summary
