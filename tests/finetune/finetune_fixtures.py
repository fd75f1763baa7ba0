"""Tiny data sets, a tokenizer and a tiny pre-trained export for the fine-tuning tests."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

POS = ["good", "great", "lovely", "superb", "happy"]
NEG = ["bad", "awful", "poor", "sad", "terrible"]
FILLER = ["the", "movie", "was", "a", "plot", "and", "actors", "quite", "very", "film", "story", "it"]
PEOPLE = ["alice", "bob", "carolina", "dmitri"]
SURNAMES = ["smith", "jones", "okafor"]
PLACES = ["paris", "lagos", "toronto", "kyoto"]


def sentiment_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randint(0, len(words)), rng.choice(POS if label else NEG))
        out.append({"text": " ".join(words), "label": "positive" if label else "negative",
                    "score": float(sum(w in POS for w in words) - sum(w in NEG for w in words))})
    return out


def ner_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(3, 6)):
            r = rng.random()
            if r < 0.2:
                tokens += [rng.choice(PEOPLE), rng.choice(SURNAMES)]
                tags += ["B-PER", "I-PER"]
            elif r < 0.35:
                tokens.append(rng.choice(PLACES))
                tags.append("B-LOC")
            else:
                tokens.append(rng.choice(FILLER))
                tags.append("O")
        out.append({"tokens": tokens, "tags": tags})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def make_tokenizer(path: Path) -> Path:
    from ptft_engine.data.tokenizer import train_tokenizer

    texts = [r["text"] for r in sentiment_records(300)] + [" ".join(r["tokens"]) for r in ner_records(300)]
    # a small vocabulary, so the longer words split into several sub-words
    tok = train_tokenizer(texts, kind="wordpiece", vocab_size=90, min_frequency=1, lowercase=True)
    tok.save(str(path))
    return path


def make_image_folder(root: Path, per_class: int = 30, size: int = 8, seed: int = 0) -> Path:
    """Two classes: a bright top half or a bright bottom half, plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, name in enumerate(["top", "bottom"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.uniform(0, 0.4, (size, size))
            if label == 0:
                img[: size // 2] += 0.5
            else:
                img[size // 2:] += 0.5
            Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8), mode="L").save(root / name / f"{i}.png")
    return root


def make_pretrained(tmp: Path, arch: str = "encoder") -> Path:
    """A tiny random engine model exported (HF layout) with the tokenizer."""
    import torch

    from ptft_engine.export import export_model
    from ptft_engine.models import DecoderConfig, EncoderConfig, build_model

    tok = make_tokenizer(tmp / "tokenizer.json")
    torch.manual_seed(0)
    if arch == "encoder":
        cfg = EncoderConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0)
    else:
        cfg = DecoderConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=64)
    out = tmp / f"pretrained_{arch}"
    export_model(build_model(cfg), out, tokenizer=tok)
    return out


def base_config(assets, tmp_path, task: str, **over) -> dict:
    data = {"sequence_classification": "sentiment", "regression": "sentiment", "token_classification": "ner"}[task]
    cfg = {
        "model": {"pretrained": str(assets["encoder"])},
        "task": {"kind": task},
        "data": {"train": str(assets[data]), **({"label_field": "score"} if task == "regression" else {})},
        "optim": {"lr": 2e-3, "epochs": 6, "batch_size": 16},
        "eval": {"patience": None},
        "output_dir": str(tmp_path / "out"),
        "progress_bar": False,
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            cfg.setdefault(section, {})[field] = value
        else:
            cfg[section] = value
    return cfg
