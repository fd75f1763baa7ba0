"""One partial fine-tuning run from scratch in a fresh process (tokenizer, export, training);
prints the accuracies and a hash of the final weights. Used to check that two processes agree."""
from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import torch
from finetune_fixtures import base_config, make_pretrained, sentiment_records, write_jsonl

from ptft_engine.finetune import finetune
from ptft_engine.finetune.config import parse_finetune_config

if __name__ == "__main__":
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(dir=sys.argv[1]))
    assets = {"encoder": make_pretrained(root, "encoder"),
              "sentiment": write_jsonl(root / "sentiment.jsonl", sentiment_records(240))}
    cfg = base_config(assets, root, "sequence_classification",
                      strategy={"kind": "partial", "freeze_embeddings": True, "freeze_layers": 1})
    result = finetune(parse_finetune_config(cfg))
    weights = b"".join(p.detach().numpy().tobytes() for p in result["model"].state_dict().values())
    print(result["initial"]["accuracy"], result["best"]["accuracy"], hashlib.sha256(weights).hexdigest())
