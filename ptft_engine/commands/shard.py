"""Write WebDataset tar shards from text files, JSONL, image folders, image-caption JSONL or audio.

Writes OUTPUT/shard-NNNNNN.tar, a shard-NNNNNN.idx of sample offsets next to each (the
stream seeks with them, so a resume costs no re-reading), and OUTPUT/index.json with
each shard's sample count and sha256 (from 1,000 shards on, these go to columns in
OUTPUT/index.columns.safetensors, which loads in milliseconds). Inputs are read in
parallel; unreadable files, undecodable images and empty texts are skipped and listed
in the summary (--strict makes the first one an error). --tokenizer tok.json pre-tokenises
text: each sample also holds .ids (its token ids), shard-NNNNNN.lens their counts.

With --index-only, nothing is written but OUTPUT/index.json and the .idx sidecars of
tars that exist already (local paths, brace ranges, http(s)/s3/gs URLs or pipe:
commands): what the stream needs to read tars made elsewhere. For remote tars, put
the written files beside the shards.

Formats:
  text        plain text files or directories (--text-unit file|line|paragraph)
  jsonl       one JSON object per line, text in --text-field (--label-field: keep a label too)
  images      a folder with one subfolder per class (.jpg/.png + .cls members)
  image_text  JSONL with --image-field (path, relative to the JSONL file) and --caption-field
  audio       WAV/FLAC/OGG files or folders, mono, resampled to --sample-rate and stored as int16
              PCM (.pcm); --manifest labels.jsonl adds labels (.cls) and transcripts (.txt)
"""
from __future__ import annotations

import os
import re

from ptft_engine.cli import UserError

EXAMPLE = """Examples:
  ptft shard corpus/ --output shards/wiki --shard-size 256MB
  ptft shard data/*.jsonl --format jsonl --text-field content --output shards/web
  ptft shard corpus/ --text-unit paragraph --tokenizer tok/tokenizer.json --output shards/pretok
  ptft shard reviews.jsonl --format jsonl --label-field label --output shards/reviews
  ptft shard imagenet/train --format images --output shards/imagenet --workers 8
  ptft shard clips/ --format audio --manifest clips/labels.jsonl --sample-rate 16000 --output shards/speech
  ptft shard --index-only 'https://host/data/shard-{000000..000127}.tar' --output index/
"""

_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise UserError(f"--shard-size {text!r} is not a size like 256MB or 1GB")
    return max(1, int(float(m.group(1)) * _UNITS[m.group(2).lower()]))


def add_arguments(p) -> None:
    p.add_argument("inputs", nargs="+", help="input files, directories or globs (with --index-only: tars or URLs)")
    p.add_argument("--output", "-o", default=None,
                   help="output directory for shards and index.json (--index-only: default the tars' folder)")
    p.add_argument("--index-only", action="store_true",
                   help="write only index.json and .idx sidecars for existing tars (local or remote)")
    p.add_argument("--format", default="text", choices=["text", "jsonl", "images", "image_text", "audio"])
    p.add_argument("--text-unit", default="file", choices=["file", "line", "paragraph"],
                   help="for --format text: one sample per file, per line or per blank-line paragraph")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text")
    p.add_argument("--label-field", default=None,
                   help="jsonl: also keep this field (as a .label member) for `ptft finetune` with data.format shards")
    p.add_argument("--tokenizer", default=None,
                   help="text/jsonl: also store each sample's token ids made with this tokenizer.json (pre-tokenised "
                        "shards: training reads them instead of tokenising, packing reads lengths from the index)")
    p.add_argument("--image-field", default="image", help="image_text: JSONL field with the image path")
    p.add_argument("--caption-field", default="caption", help="image_text: JSONL field with the caption")
    p.add_argument("--manifest", default=None,
                   help='audio: JSONL of {"path": clip relative to it, "label": ..., "text": ...}; '
                        "every input clip needs an entry")
    p.add_argument("--sample-rate", type=int, default=16_000, help="audio: resample every clip to this rate (Hz)")
    p.add_argument("--shard-size", default="256MB", help="target bytes per shard (default 256MB)")
    p.add_argument("--max-samples", type=int, default=1_000_000, help="at most this many samples per shard")
    p.add_argument("--workers", type=int, default=None, help="reader processes (default: CPU count)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input instead of skipping it")
    p.add_argument("--overwrite", action="store_true", help="replace existing shards in OUTPUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from ptft_engine.data import sources
    from ptft_engine.data.shards import write_shards

    if args.index_only:
        from ptft_engine.data.reindex import index_existing

        index = index_existing(args.inputs, args.output)
        written_to = args.output or os.path.dirname(os.path.abspath(index.shards[0].path))
        print(f"indexed {index.total} samples in {len(index.shards)} shards (kind {index.kind}); "
              f"wrote index.json and .idx files to {written_to}")
        return 0
    if args.output is None:
        raise UserError("--output is required (the folder for the shards and index.json)")
    if args.max_samples < 1:
        raise UserError("--max-samples must be at least 1")
    opts = sources.Options(format=args.format, text_unit=args.text_unit, text_field=args.text_field,
                           image_field=args.image_field, caption_field=args.caption_field,
                           label_field=args.label_field, tokenizer=args.tokenizer,
                           manifest=args.manifest, sample_rate=args.sample_rate)
    summary = write_shards(args.inputs, args.output, opts, shard_bytes=parse_size(args.shard_size),
                           shard_samples=args.max_samples, workers=args.workers, strict=args.strict,
                           overwrite=args.overwrite, progress=not args.no_progress)
    print("\n".join(summary.lines()))
    return 0
