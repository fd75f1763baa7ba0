"""Fine-tuning data: JSONL / CSV / image folders / image or labelled text shards -> tokenised examples,
train/val split.

Token classification aligns word labels to sub-words: the first sub-word of a word gets
the word's label, the others -100 (ignored) unless label_all_subtokens, in which case
continuation pieces get the I- form of a B- tag. `word_starts` marks first sub-words so
evaluation is always per word (entity-level F1 over words, as seqeval does).
"""
from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ptft_engine.data.sources import IMAGE_EXTS
from ptft_engine.data.tokenizer import role_ids
from ptft_engine.finetune.errors import FinetuneDataError
from ptft_engine.finetune.shard_data import ShardImage, read_shard_records
from ptft_engine.labels import IGNORE_INDEX


# ---------------------------------------------------------------------------- reading
def read_records(path: str | Path, fmt: str, text_field: str = "text",
                 label_field: str = "label") -> list[dict[str, Any]]:
    if fmt == "shards":  # as given: a URL keeps its "//"
        return read_shard_records(str(path), text_field, label_field)
    path = Path(path)
    if fmt == "image_folder":
        return read_image_folder(path)
    if not path.is_file():
        raise FinetuneDataError(f"{path}: data file not found")
    if fmt == "jsonl":
        out = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError as exc:
                    raise FinetuneDataError(f"{path}:{n}: not valid JSON ({exc})") from None
        return out
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_image_folder(root: Path) -> list[dict[str, Any]]:
    """root/<class name>/<image>: one record per image, label = folder name."""
    if not root.is_dir():
        raise FinetuneDataError(f"{root}: image folder not found")
    out = [{"image": str(p), "label": cls_dir.name}
           for cls_dir in sorted(d for d in root.iterdir() if d.is_dir())
           for p in sorted(cls_dir.iterdir()) if p.suffix.lower().lstrip(".") in IMAGE_EXTS]
    if not out:
        raise FinetuneDataError(f"{root}: no images in class subfolders (expected root/<class>/<image>.png)")
    return out


def field(rec: dict, key: str, where: str):
    if key not in rec:
        raise FinetuneDataError(f"{where}: record has no field {key!r} (has {', '.join(map(str, rec)) or 'nothing'})")
    return rec[key]


# ---------------------------------------------------------------------------- splitting
def _label_key(rec: dict, cfg) -> Any:
    return rec.get(cfg.label_field) if cfg is not None else None


def split_records(records: list, val_fraction: float, seed: int, stratify_key=None) -> tuple[list, list]:
    """Random (per-class when stratify_key is given) train/validation split."""
    rng = random.Random(seed)
    groups: dict[Any, list] = {}
    for rec in records:
        groups.setdefault(stratify_key(rec) if stratify_key else None, []).append(rec)
    train, val = [], []
    for key in sorted(groups, key=str):
        g = groups[key][:]
        rng.shuffle(g)
        k = max(1, round(len(g) * val_fraction)) if len(g) > 1 else 0
        val += g[:k]
        train += g[k:]
    rng.shuffle(train)
    return train, val


def subsample(records: list, fraction: float, seed: int, stratify_key=None) -> list:
    """Keep `fraction` of the records (at least one per class when stratified)."""
    if fraction >= 1.0:
        return records
    rng = random.Random(seed + 1)
    groups: dict[Any, list] = {}
    for rec in records:
        groups.setdefault(stratify_key(rec) if stratify_key else None, []).append(rec)
    kept = []
    for key in sorted(groups, key=str):
        g = groups[key][:]
        rng.shuffle(g)
        kept += g[: max(1, math.floor(len(g) * fraction + 0.5))]
    rng.shuffle(kept)
    return kept


# ---------------------------------------------------------------------------- text encoding
class TextEncoder:
    """A tokenizers.Tokenizer plus the special ids a task needs (any may be missing)."""

    def __init__(self, path: str | Path, arch: str):
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FinetuneDataError(f"{path}: tokenizer file not found (set data.tokenizer)")
        self.tok = Tokenizer.from_file(str(path))
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self.ids = role_ids(vocab)
        self.arch = arch
        self.pad_id = self.ids["pad"] if self.ids["pad"] is not None else (self.ids["eos"] or 0)

    def _wrap(self, a: list[int], b: list[int] | None, max_length: int) -> tuple[list[int], list[int], list[int]]:
        """ids, token types, and the index map of `a`'s pieces (-1 for specials)."""
        if self.arch == "encoder":
            cls, sep = self.ids["cls"], self.ids["sep"]
            head = [cls] if cls is not None else []
            tail = [sep] if sep is not None else []
        else:  # decoder: pooled at the last token, so end with eos when the vocabulary has one
            head, tail = [], [self.ids["eos"]] if self.ids["eos"] is not None else []
        budget = max_length - len(head) - len(tail) * (2 if b is not None else 1)
        if b is not None:
            b = b[: max(0, budget // 2)]
            a = a[: budget - len(b)]
        else:
            a = a[:budget]
        ids = head + a + tail
        types = [0] * len(ids)
        pos = [-1] * len(head) + list(range(len(a))) + [-1] * len(tail)
        if b is not None:
            ids += b + tail
            types += [1] * (len(b) + len(tail))
            pos += [-1] * (len(b) + len(tail))
        return ids, types, pos

    def encode_text(self, text: str, pair: str | None, max_length: int) -> dict[str, list[int]]:
        a = self.tok.encode(str(text), add_special_tokens=False).ids
        b = None if pair is None else self.tok.encode(str(pair), add_special_tokens=False).ids
        ids, types, _ = self._wrap(a, b, max_length)
        return {"input_ids": ids, "token_type_ids": types}

    def encode_words(self, words: list[str], tags: list[int], max_length: int, all_subtokens: bool,
                     continuation: dict[int, int]) -> dict[str, list[int]]:
        enc = self.tok.encode([str(w) for w in words], is_pretokenized=True, add_special_tokens=False)
        word_ids = enc.word_ids
        ids, types, pos = self._wrap(enc.ids, None, max_length)
        labels, starts = [], []
        for p in pos:
            w = word_ids[p] if p >= 0 else None
            first = w is not None and (p == 0 or word_ids[p - 1] != w)
            if w is None:
                labels.append(IGNORE_INDEX)
            elif first:
                labels.append(tags[w])
            else:
                labels.append(continuation.get(tags[w], tags[w]) if all_subtokens else IGNORE_INDEX)
            starts.append(1 if first else 0)
        return {"input_ids": ids, "token_type_ids": types, "labels": labels, "word_starts": starts}


# ---------------------------------------------------------------------------- datasets
@dataclass
class Example:
    features: dict[str, Any]
    label: Any


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list, load=None):
        self.examples, self.load = examples, load

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        return self.load(self.examples[i]) if self.load else self.examples[i]


def pad_collate(pad_id: int):
    """List of examples -> batch dict; sequences are right-padded, labels padded with IGNORE_INDEX."""
    def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if "pixel_values" in items[0]:
            out["pixel_values"] = torch.stack([it["pixel_values"] for it in items])
        if "input_ids" in items[0]:
            n = max(len(it["input_ids"]) for it in items)
            for key, fill in (("input_ids", pad_id), ("token_type_ids", 0), ("word_starts", 0)):
                if key in items[0]:
                    out[key] = torch.tensor([it[key] + [fill] * (n - len(it[key])) for it in items])
            out["attention_mask"] = torch.tensor([[1] * len(it["input_ids"]) + [0] * (n - len(it["input_ids"]))
                                                  for it in items])
        labels = [it["labels"] for it in items]
        if isinstance(labels[0], list):
            n = max(len(x) for x in labels)
            out["labels"] = torch.tensor([x + [IGNORE_INDEX] * (n - len(x)) for x in labels])
        else:
            out["labels"] = torch.tensor(labels)
        return out
    return collate


def load_image(path, size: int, channels: int) -> torch.Tensor:
    """Image file (or a shard's ShardImage) -> (C, size, size), normalised like the
    pre-training pipeline (ImageNet mean/std)."""
    import numpy as np
    from PIL import Image

    from ptft_engine.data.images import MEAN, STD

    with Image.open(path.open() if isinstance(path, ShardImage) else path) as im:
        im = im.convert("RGB" if channels == 3 else "L").resize((size, size), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    x = torch.from_numpy(arr.copy())
    x = x.permute(2, 0, 1) if x.dim() == 3 else x[None]  # (C, H, W)
    mean, std = (MEAN, STD) if channels == 3 else (MEAN[:1], STD[:1])
    return (x - mean) / std
