"""Fixtures: tiny shards and tokenizers made in temporary directories."""
from __future__ import annotations

import os

import pytest
from data_helpers import doc_text, png_bytes, write_text_shards

from ptft_engine.data.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def tok_path(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("tok")
    tok = train_tokenizer([doc_text(i) for i in range(60)], kind="bpe", vocab_size=400, min_frequency=1)
    path = str(root / "tokenizer.json")
    tok.save(path)
    return path


@pytest.fixture(scope="session")
def text_shards(tmp_path_factory) -> str:
    """61 docs in shards of 7: uneven (the last shard holds 5)."""
    return write_text_shards(tmp_path_factory.mktemp("text"), 61)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("imgs")
    for c, cls in enumerate(["cat", "dog"]):
        os.makedirs(root / cls)
        for i in range(6):
            (root / cls / f"{i}.png").write_bytes(png_bytes(10 * c + i))
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    return str(root)
