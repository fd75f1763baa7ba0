"""FinetuneConfig + the backbone's config -> train/validation datasets, label names, collate."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptft_engine.finetune.data import (
    ListDataset,
    TextEncoder,
    field,
    load_image,
    pad_collate,
    read_records,
    split_records,
    subsample,
)
from ptft_engine.finetune.errors import FinetuneDataError


@dataclass
class TaskData:
    train: ListDataset
    val: ListDataset
    label_names: list[str] | None  # None for regression
    collate: Callable
    tokenizer_path: str | None


def _sort_labels(values) -> list[str]:
    values = sorted({str(v) for v in values})
    try:
        return sorted(values, key=float)
    except ValueError:
        return values


def _tag_names(records, tags_field: str, where: str) -> list[str]:
    tags = {str(t) for r in records for t in field(r, tags_field, where)}
    return (["O"] if "O" in tags else []) + sorted(tags - {"O"}, key=lambda t: (t[2:], t[:2]))


def build_task_data(cfg, model_cfg, tokenizer_path: str | None) -> TaskData:
    d, kind = cfg.data, cfg.task.kind
    train_recs = read_records(d.train, d.format, d.text_field, d.label_field)
    where = str(d.train)
    label_of = (lambda r: str(field(r, d.label_field, where))) if kind in (
        "sequence_classification", "image_classification") else None
    if d.validation:
        val_recs = read_records(d.validation, d.format, d.text_field, d.label_field)
    else:
        train_recs, val_recs = split_records(train_recs, d.val_fraction, cfg.seed, label_of)
    train_recs = subsample(train_recs, d.train_fraction, cfg.seed, label_of)
    if not train_recs or not val_recs:
        raise FinetuneDataError(f"{where}: too few records for a train/validation split "
                                f"({len(train_recs)} train, {len(val_recs)} validation)")

    names: list[str] | None = None
    if kind in ("sequence_classification", "image_classification"):
        names = cfg.task.labels or _sort_labels(label_of(r) for r in train_recs + val_recs)
    elif kind == "token_classification":
        names = cfg.task.labels or _tag_names(train_recs + val_recs, d.tags_field, where)
    index = {n: i for i, n in enumerate(names or [])}

    def label_id(value, rec_where: str) -> int:
        if str(value) not in index:
            raise FinetuneDataError(f"{rec_where}: label {value!r} is not one of task.labels {names}")
        return index[str(value)]

    if kind == "image_classification":
        if model_cfg.arch not in ("vit", "dual_encoder"):
            raise FinetuneDataError(f"image_classification needs a vit or dual_encoder model, got {model_cfg.arch}")
        vcfg = model_cfg.vision if model_cfg.arch == "dual_encoder" else model_cfg
        size, channels = d.image_size or vcfg.image_size, vcfg.num_channels

        def make(recs):
            ex = [(field(r, "image", where), label_id(field(r, d.label_field, where), where)) for r in recs]
            return ListDataset(ex, lambda e: {"pixel_values": load_image(e[0], size, channels), "labels": e[1]})

        return TaskData(make(train_recs), make(val_recs), names, pad_collate(0), None)

    if model_cfg.arch not in ("encoder", "decoder"):
        raise FinetuneDataError(f"{kind} needs a text model (encoder or decoder), got {model_cfg.arch}")
    if tokenizer_path is None:
        raise FinetuneDataError("no tokenizer: set data.tokenizer (the export has no tokenizer.json)")
    enc = TextEncoder(tokenizer_path, model_cfg.arch)
    continuation = {index[t]: index["I-" + t[2:]] for t in index if t.startswith("B-") and "I-" + t[2:] in index}

    def encode(rec: dict[str, Any], n: int, src: str) -> dict[str, Any]:
        at = f"{src} record {n}"
        if kind == "token_classification":
            words, tags = field(rec, d.tokens_field, at), field(rec, d.tags_field, at)
            if isinstance(words, str):  # CSV: space-separated
                words, tags = words.split(), str(tags).split()
            if len(words) != len(tags):
                raise FinetuneDataError(f"{at}: {len(words)} tokens but {len(tags)} tags")
            return enc.encode_words(words, [label_id(t, at) for t in tags], d.max_length,
                                    cfg.task.label_all_subtokens, continuation)
        pair = rec.get(d.text_pair_field) if d.text_pair_field else None
        out = enc.encode_text(field(rec, d.text_field, at), pair, d.max_length)
        raw = field(rec, d.label_field, at)
        if kind == "regression":
            try:
                out["labels"] = float(raw)
            except (TypeError, ValueError):
                raise FinetuneDataError(f"{at}: regression label {raw!r} is not a number") from None
        else:
            out["labels"] = label_id(raw, at)
        return out

    val_src = str(d.validation or d.train)
    train = ListDataset([encode(r, i, where) for i, r in enumerate(train_recs, 1)])
    val = ListDataset([encode(r, i, val_src) for i, r in enumerate(val_recs, 1)])
    for ex in train.examples + val.examples:
        if max(ex["input_ids"]) >= model_cfg.vocab_size:
            raise FinetuneDataError(f"tokenizer {tokenizer_path} produces id {max(ex['input_ids'])} >= the model's "
                                    f"vocab_size {model_cfg.vocab_size}: wrong tokenizer for this model")
    return TaskData(train, val, names, pad_collate(enc.pad_id), str(Path(tokenizer_path)))
