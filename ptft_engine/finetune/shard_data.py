"""Labelled samples from `ptft shard` output for fine-tuning.

An audio shard sample (`ptft shard --format audio --manifest ...`) holds KEY.pcm (int16
PCM at the index's "sample_rate") and KEY.cls; it becomes {"audio": float32 clip, "label":
class name, "sample_rate": rate}, read whole (clips are short) for audio_classification.

An image shard sample holds the image (KEY.png / .jpg / ...) and KEY.cls, the class
index; index.json keeps the class names ("classes"). A text shard sample written with
`ptft shard --format jsonl --label-field F` holds KEY.txt and KEY.label (the field's
value as JSON); it becomes a record {text_field: text, label_field: value}, as a JSONL
line would.

The labels are read once up front (splitting needs them); the images stay in the
shards and each record keeps only its sample's byte range, read again on access.
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from typing import Any

from ptft_engine.data.cache import Opened, ShardCache, ShardFailed
from ptft_engine.data.errors import DataError
from ptft_engine.data.index import ShardInfo, read_members, resolve_source
from ptft_engine.data.remote import is_remote, redact
from ptft_engine.data.sources import IMAGE_EXTS
from ptft_engine.finetune.errors import FinetuneDataError

_PINNED: list = []  # open cached shards: a shared flock on each keeps it from eviction


@dataclass(frozen=True)
class ShardImage:
    """One sample's byte range in a shard; `open()` returns its image as a file object."""
    shard: str
    start: int
    stop: int
    ext: str

    def open(self) -> io.BytesIO:
        with open(self.shard, "rb") as fh:
            sample = read_members(fh, (self.start, self.stop), 0)
        return io.BytesIO(sample[self.ext])


def _label_name(raw: bytes, classes: list[str] | None, shard: str, key: str) -> str:
    try:
        cls = int(raw.decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise FinetuneDataError(f"shard {shard}, key {key}: .cls member {raw[:20]!r} is not a class index") from None
    if classes is None:
        return str(cls)
    if not 0 <= cls < len(classes):
        raise FinetuneDataError(f"shard {shard}, key {key}: class index {cls} is outside the index's "
                                f"{len(classes)} classes")
    return str(classes[cls])


def _text_record(sample: dict, shard: str, key: str, text_field: str, label_field: str) -> dict[str, Any]:
    if "label" not in sample:
        raise FinetuneDataError(f"shard {shard}, key {key}: no .label member; write text shards for fine-tuning "
                                "with ptft shard --format jsonl --label-field FIELD")
    try:
        return {text_field: sample["txt"].decode("utf-8"), label_field: json.loads(sample["label"])}
    except (UnicodeDecodeError, ValueError) as exc:
        raise FinetuneDataError(f"shard {shard}, key {key}: undecodable .txt or .label ({exc})") from None


def _audio_record(sample: dict, classes: list[str] | None, rate, shard: str, key: str) -> dict[str, Any]:
    """An audio sample of `ptft shard --format audio`: .pcm (int16) and .cls -> float32 clip + label."""
    from ptft_engine.data.audio import pcm_frames, to_float  # the stream's decoding: one reading of .pcm

    if "cls" not in sample:
        raise FinetuneDataError(f"shard {shard}, key {key}: no .cls label member; shard labelled audio with "
                                "ptft shard --format audio --manifest labels.jsonl")
    try:
        audio = to_float(pcm_frames(sample))
    except ValueError as exc:
        raise FinetuneDataError(f"shard {shard}, key {key}: {exc}") from None
    return {"audio": audio, "label": _label_name(sample["cls"], classes, shard, key), "sample_rate": rate}


def _open(shard: ShardInfo) -> Opened:
    """A shard opened through the node-local cache (remote: downloaded; local: sha256 checked).
    A cached shard stays open for the process (pinned), as records point into it."""
    try:
        opened = ShardCache().open(shard)
    except (ShardFailed, OSError) as exc:
        raise FinetuneDataError(f"shard {redact(shard.path)}: {exc}") from None
    if is_remote(shard.path):
        _PINNED.append(opened.fh)
    return opened


def read_shard_records(spec: str, text_field: str = "text", label_field: str = "label") -> list[dict[str, Any]]:
    """Shard directory / index.json / tar / glob / URL / pipe: -> [{"image": ShardImage, "label": class
    name}] for image shards, [{text_field: text, label_field: label}] for labelled text shards,
    [{"audio": clip, "label": class name, "sample_rate": Hz}] for labelled audio shards."""
    try:
        index = resolve_source(str(spec))
    except DataError as exc:
        raise FinetuneDataError(str(exc)) from None
    classes = index.extra.get("classes")
    classes = list(classes) if isinstance(classes, list) and classes else None
    out = []
    for shard in index.shards:
        opened = _open(shard)
        table, local = opened.table, opened.fh.name
        with opened.fh if not is_remote(shard.path) else contextlib.nullcontext(opened.fh) as fh:
            for i in range(shard.samples):
                try:
                    sample = read_members(fh, table, i)
                except (ValueError, OSError, EOFError) as exc:
                    raise FinetuneDataError(f"shard {shard.path}, sample {i}: unreadable ({exc})") from None
                key = sample["__key__"]
                if "pcm" in sample:
                    out.append(_audio_record(sample, classes, index.extra.get("sample_rate"), redact(shard.path), key))
                    continue
                if "txt" in sample and not any(e in sample for e in IMAGE_EXTS):
                    out.append(_text_record(sample, redact(shard.path), key, text_field, label_field))
                    continue
                if "cls" not in sample:
                    members = ", .".join(e for e in sorted(sample) if e != "__key__")
                    raise FinetuneDataError(
                        f"shard {shard.path}, key {key}: no .cls label member (has .{members}); "
                        "format: shards needs image-folder shards (ptft shard --format images)")
                ext = next((e for e in IMAGE_EXTS if e in sample), None)
                if ext is None:
                    raise FinetuneDataError(f"shard {shard.path}, key {key}: no image member "
                                            f"(.{', .'.join(IMAGE_EXTS)})")
                out.append({"image": ShardImage(local, int(table[i]), int(table[i + 1]), ext),
                            "label": _label_name(sample["cls"], classes, shard.path, key)})
    if not out:
        raise FinetuneDataError(f"{spec}: the shards hold no samples")
    return out
