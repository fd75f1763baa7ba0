"""Bundled data, written as the files `ptft shard` and `ptft finetune` read.

Images: scikit-learn's 8x8 digits (1,797 real handwritten digits, 10 classes) as PNG
folders train/val/test, one subfolder per class; the split is fixed by a seed, and the
test split is touched only for the reported accuracy.
Text: the English help texts that ship with Python (`pydoc_data.topics`: the language
reference behind `help("if")` etc.), one file per topic, paragraphs as samples.
"""
from __future__ import annotations

from pathlib import Path

SPLITS = {"train": 0.67, "val": 0.165}  # test: the rest (~300 images)


def write_digits(root: Path, seed: int = 0) -> dict[str, int]:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    n_train = int(SPLITS["train"] * len(order))
    n_val = int(SPLITS["val"] * len(order))
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    for split, ids in parts.items():
        for i in ids:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            # pixel values are 0..16: stretch to 0..255 for an 8-bit grey PNG
            pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    return {split: len(ids) for split, ids in parts.items()}


def write_text_corpus(root: Path) -> dict[str, int]:
    from pydoc_data.topics import topics

    root.mkdir(parents=True, exist_ok=True)
    chars = 0
    for name, text in sorted(topics.items()):
        (root / f"{name}.txt").write_text(text, encoding="utf-8")
        chars += len(text)
    return {"files": len(topics), "chars": chars}
