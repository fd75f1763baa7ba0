"""Raw inputs for `ptft shard`: split into work items, each turned into encoded samples.

A work item is small enough for one pool worker (a file, a byte range of a big
text/JSONL file, or a group of images), so a few huge files still spread over all
cores. Workers return samples already encoded as bytes plus the bad inputs by name;
the writer process only appends them to tars.
"""
from __future__ import annotations

import functools
import glob
import io
import json
import os
from dataclasses import dataclass

from ptft_engine.data.inputs import expand_inputs

CHUNK_BYTES = 1 << 20  # one work item reads at most this much of a line-oriented file
IMAGES_PER_ITEM = 64
# The image file suffixes read everywhere (shard inputs, image folders) and the tar members
# holding an image, preferred first; `ptft shard` writes a .jpeg file as a .jpg member.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
FORMATS = ("text", "jsonl", "images", "image_text", "audio")


@dataclass(frozen=True)
class Options:
    format: str
    text_unit: str = "file"  # file | line | paragraph
    text_field: str = "text"
    image_field: str = "image"
    caption_field: str = "caption"
    label_field: str | None = None  # jsonl: keep this field as the sample's .label member (JSON)
    tokenizer: str | None = None  # text: also store the token ids (.ids) made with this tokenizer.json
    ids_dtype: str = "<u2"  # of the .ids members; "<u4" when the vocabulary exceeds 65,536
    manifest: str | None = None  # audio: JSONL of {"path", "label", "text"} (audio_sources.py)
    sample_rate: int = 16_000  # audio: every clip is resampled to this rate


@dataclass(frozen=True)
class Item:
    path: str
    start: int = 0
    stop: int = -1  # -1: whole file
    images: tuple[tuple[str, int], ...] = ()  # (path, class index) for image folders
    clips: tuple = ()  # audio: (path, class index or -1, transcript or None); see audio_sources.py


def plan(inputs: list[str], opts: Options) -> tuple[list[Item], dict]:
    """Work items for the inputs, plus metadata for the index (class names for images)."""
    if opts.format == "audio":
        from ptft_engine.data.audio_sources import plan_audio

        groups, meta = plan_audio(inputs, opts.manifest)
        return [Item(path=g[0][0], clips=g) for g in groups], {**meta, "sample_rate": opts.sample_rate}
    if opts.format == "images":
        items, classes = [], []
        for root in inputs:
            if not os.path.isdir(root):
                raise FileNotFoundError(f"image folder {root!r} does not exist (expected one subfolder per class)")
            for name in sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))):
                if name not in classes:
                    classes.append(name)
        if not classes:
            raise ValueError(f"no class subfolders in {inputs}")
        pairs = []
        for root in inputs:
            for name in classes:
                folder = os.path.join(root, name)
                if os.path.isdir(folder):
                    pairs += [(p, classes.index(name)) for p in sorted(glob.glob(os.path.join(folder, "*")))
                              if os.path.isfile(p)]
        for i in range(0, len(pairs), IMAGES_PER_ITEM):
            items.append(Item(path=pairs[i][0], images=tuple(pairs[i:i + IMAGES_PER_ITEM])))
        return items, {"classes": classes}
    items = []
    for path in expand_inputs(inputs):
        line_mode = opts.format in ("jsonl", "image_text") or opts.text_unit == "line"
        size = os.path.getsize(path)
        if line_mode and size > CHUNK_BYTES:
            items += [Item(path, s, min(s + CHUNK_BYTES, size)) for s in range(0, size, CHUNK_BYTES)]
        else:
            items.append(Item(path))
    return items, {}


def _lines(item: Item):
    """Lines whose first byte lies in [start, stop): each line belongs to exactly one item."""
    with open(item.path, "rb") as f:
        if item.start > 0:
            f.seek(item.start - 1)
            f.readline()  # finish the line that began before this range
        while item.stop < 0 or f.tell() < item.stop:
            pos = f.tell()
            line = f.readline()
            if not line:
                break
            yield pos, line


def _image_bytes(path: str) -> tuple[bytes, str]:
    from PIL import Image

    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as im:
        im.verify()  # catches truncated / garbled files without a full decode
        fmt = (im.format or "").lower()
    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    ext = suffix if suffix in IMAGE_EXTS else (fmt or "jpg")
    ext = "jpg" if ext == "jpeg" else ext
    return data, ext


def process(item: Item, opts: Options) -> tuple[list[dict], list[tuple[str, str]], int]:
    """Encoded samples of one work item, its bad inputs (name, reason), and bytes read."""
    samples: list[dict] = []
    bad: list[tuple[str, str]] = []
    nbytes = 0
    if opts.format == "audio":
        from ptft_engine.data.audio_sources import process_audio

        return process_audio(item.clips, opts.sample_rate)
    if opts.format == "images":
        for path, cls in item.images:
            try:
                data, ext = _image_bytes(path)
            except Exception as exc:  # PIL raises many types for a broken image
                bad.append((path, f"undecodable image ({exc.__class__.__name__}: {exc})"))
                continue
            nbytes += len(data)
            samples.append({ext: data, "cls": str(cls).encode()})
        return samples, bad, nbytes
    try:
        if opts.format == "text" and opts.text_unit != "line":
            with open(item.path, "rb") as f:
                raw = f.read()
            nbytes = len(raw)
            text = raw.decode("utf-8")
            docs = [text] if opts.text_unit == "file" else text.split("\n\n")
            for doc in docs:
                if doc.strip():
                    samples.append({"txt": doc.strip().encode()})
                elif opts.text_unit == "file":
                    bad.append((item.path, "empty text"))
            return samples, bad, nbytes
        for pos, line in _lines(item):
            nbytes += len(line)
            if not line.strip():
                continue
            where = f"{item.path} (byte {pos})"
            if opts.format == "text":
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    bad.append((where, f"not UTF-8 text ({exc.reason})"))
                    continue
                samples.append({"txt": line.strip()})
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                bad.append((where, f"invalid JSON line ({exc})"))
                continue
            field = opts.text_field if opts.format == "jsonl" else opts.caption_field
            text = rec.get(field) if isinstance(rec, dict) else None
            if not isinstance(text, str) or not text.strip():
                bad.append((where, f"missing or empty text field {field!r}"))
                continue
            sample = {"txt": text.strip().encode()}
            if opts.format == "jsonl" and opts.label_field:
                if opts.label_field not in rec:
                    bad.append((where, f"missing label field {opts.label_field!r}"))
                    continue
                sample["label"] = json.dumps(rec[opts.label_field], ensure_ascii=False).encode()
            if opts.format == "image_text":
                img = rec.get(opts.image_field)
                if not isinstance(img, str):
                    bad.append((where, f"missing image field {opts.image_field!r}"))
                    continue
                img_path = img if os.path.isabs(img) else os.path.join(os.path.dirname(item.path), img)
                try:
                    data, ext = _image_bytes(img_path)
                except Exception as exc:
                    bad.append((img_path, f"unreadable or undecodable image ({exc.__class__.__name__}: {exc})"))
                    continue
                sample[ext] = data
            samples.append(sample)
    except UnicodeDecodeError as exc:
        bad.append((item.path, f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
    except OSError as exc:
        bad.append((item.path, f"unreadable ({exc.strerror or exc})"))
    return samples, bad, nbytes


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def add_token_ids(samples: list[dict], opts: Options) -> list[int]:
    """Give each text sample an .ids member (its token ids, no special tokens, as
    opts.ids_dtype bytes); returns the token counts."""
    import numpy as np

    tok = _tokenizer(opts.tokenizer)
    encoded = tok.encode_batch([s["txt"].decode("utf-8") for s in samples], add_special_tokens=False)
    for sample, enc in zip(samples, encoded):
        sample["ids"] = np.asarray(enc.ids, dtype=opts.ids_dtype).tobytes()
    return [len(enc.ids) for enc in encoded]
