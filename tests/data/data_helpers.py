"""Helpers for the data tests: tiny documents, images and shards."""
from __future__ import annotations

import io
import json
import os

from ptft_engine.data import sources
from ptft_engine.data.shards import write_shards

EN = ["the quick brown fox jumps over the lazy dog", "pre-training reads far more data than fits anywhere",
      "every rank yields the same number of batches", "a resumed loader continues where it stopped"]
ZH = ["深度学习模型需要大量的数据进行预训练", "中文文本也必须能够正确地处理", "数据流必须能够在中途恢复"]


def doc_text(i: int) -> str:
    """Document i: distinct, with a length that varies from doc to doc."""
    base = EN[i % len(EN)] if i % 3 else ZH[i % len(ZH)]
    return f"doc{i} " + " ".join([base] * (1 + i % 4))


def write_text_shards(root, n_docs: int, per_shard: list[int] | None = None, name: str = "shards") -> str:
    """Shards of JSONL docs; `per_shard` gives uneven shard sizes by writing several runs."""
    out = os.path.join(root, name)
    src = os.path.join(root, f"{name}.jsonl")
    with open(src, "w") as f:
        for i in range(n_docs):
            f.write(json.dumps({"text": doc_text(i)}) + "\n")
    max_samples = per_shard[0] if per_shard else 7
    write_shards([src], out, sources.Options(format="jsonl"), shard_samples=max_samples, workers=1, progress=False)
    return out


def png_bytes(seed: int, size=(20, 16)) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
