"""Does MLM pre-training pay for text classification? Real text that ships with Python:
docstrings. Task: which stdlib package a docstring comes from (7 topics: tkinter,
asyncio, email, logging, xml, multiprocessing, unittest). Pre-training corpus: every
other docstring of the stdlib and the installed packages (none of the labelled ones).

    python -m ptft_engine.finetune.evidence_text --out evidence_text_out [--steps 1500]

Workflow through the CLI: `ptft tokenizer train` (WordPiece) -> `ptft shard` ->
`ptft pretrain` (masked LM, tiny BERT) -> `ptft export` (HF BERT layout) -> fine-tune with
10 % and 100 % of the labels, pre-trained vs from scratch; test accuracy as JSON lines
and a Markdown table.
"""
from __future__ import annotations

import argparse
import ast
import json
import random
import sys
import sysconfig
from pathlib import Path

import torch

from ptft_engine.finetune.evidence import ptft

TOPICS = ("tkinter", "asyncio", "email", "logging", "xml", "multiprocessing", "unittest")
ENCODER = {"arch": "encoder", "vocab_size": 4096, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 128, "max_position_embeddings": 64, "type_vocab_size": 2, "hidden_dropout_prob": 0.1}
CORPUS_PACKAGES = ("networkx", "sklearn", "pip", "setuptools", "jinja2", "pydantic", "rich", "matplotlib")
RECIPES = [
    ("scratch / full", "scratch", {"kind": "full"}, {"lr": 1e-3}),
    ("MLM / linear probe", "pretrained", {"kind": "linear_probe"}, {"lr": 1e-3, "head_lr": 1e-2}),
    ("MLM / LoRA r=8", "pretrained", {"kind": "lora", "lora": {"r": 8, "alpha": 16, "targets": ["attn", "mlp"]}},
     {"lr": 3e-3, "head_lr": 1e-2}),
    ("MLM / full", "pretrained", {"kind": "full"}, {"lr": 1e-3, "layer_decay": 0.8}),
]
FRACTIONS = (0.1, 1.0)


def docstrings(root: Path, skip_dirs=("test", "tests", "site-packages")):
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root).parts
        if any(p in skip_dirs for p in rel[:-1]):
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    yield rel[0].removesuffix(".py"), " ".join(doc.split())[:600]


def write_data(out: Path, seed: int = 0) -> dict[str, int]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    labelled, corpus = [], []
    for top, doc in docstrings(stdlib):
        (labelled if top in TOPICS else corpus).append({"text": doc, "label": top} if top in TOPICS else {"text": doc})
    # a few installed packages with plenty of English prose (walking all of them takes long)
    for pkg in CORPUS_PACKAGES:
        if (site / pkg).is_dir():
            corpus += [{"text": doc} for _, doc in docstrings(site / pkg, skip_dirs=("test", "tests"))]
    rng = random.Random(seed)
    rng.shuffle(labelled)
    n = len(labelled)
    splits = {"train": labelled[: int(0.7 * n)], "val": labelled[int(0.7 * n): int(0.8 * n)],
              "test": labelled[int(0.8 * n):]}
    out.mkdir(parents=True, exist_ok=True)
    for name, recs in splits.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (out / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    return {"corpus": len(corpus), **{k: len(v) for k, v in splits.items()}}


def pretrain(out: Path, steps: int) -> Path:
    import yaml

    data = out / "data"
    ptft("tokenizer", "train", str(data / "corpus.jsonl"), "--kind", "wordpiece", "--vocab-size",
         str(ENCODER["vocab_size"]), "--lowercase", "--output", str(out / "tokenizer"))
    ptft("shard", str(data / "corpus.jsonl"), "--format", "jsonl", "--text-field", "text", "--output",
         str(out / "shards"), "--shard-size", "2MB", "--no-progress", "--overwrite")
    recipe = {
        "run": {"name": "mlm", "output_dir": str(out / "runs"), "max_steps": steps, "log_every": 50,
                "progress_bar": False},
        "model": ENCODER, "objective": {"name": "mlm"},
        "data": {"shards": [str(out / "shards")], "tokenizer": str(out / "tokenizer/tokenizer.json"), "seq_len": 64,
                 "batch_size": 32, "num_workers": 0},
        "train": {"lr": 2e-3, "warmup_steps": 100, "schedule": "cosine", "weight_decay": 0.01, "clip_grad": 1.0},
        "deepspeed": {"zero_stage": 1}, "checkpoint": {"every": steps},
    }
    (out / "mlm.yaml").write_text(yaml.safe_dump(recipe))
    ptft("pretrain", "--config", str(out / "mlm.yaml"), env={"OMP_NUM_THREADS": "1"})
    export = out / "export/mlm-bert"
    ptft("export", str(out / "runs/mlm"), str(export), "--overwrite")
    return export


def test_accuracy(best: Path, test_file: Path) -> float:
    from ptft_engine.finetune import load_task_model
    from ptft_engine.finetune.data import TextEncoder, pad_collate, read_records

    model, info = load_task_model(best)
    enc = TextEncoder(best / "tokenizer.json", "encoder")
    index = {name: i for i, name in enumerate(info["labels"])}
    items = [{**enc.encode_text(r["text"], None, 64), "labels": index[r["label"]]} for r in read_records(test_file, "jsonl")]
    correct = 0
    with torch.no_grad():
        for i in range(0, len(items), 128):
            batch = pad_collate(enc.pad_id)(items[i:i + 128])
            correct += int((model(batch).argmax(-1) == batch["labels"]).sum())
    return correct / len(items)


def run_grid(out: Path, export: Path, seeds: list[int], epochs: int) -> list[dict]:
    from ptft_engine.finetune import finetune, parse_finetune_config

    data, rows = out / "data", []
    for fraction in FRACTIONS:
        for name, init, strategy, optim in RECIPES:
            accs = []
            for seed in seeds:
                tag = f"{init}-{strategy['kind']}-{fraction}-{seed}"
                model = ({"pretrained": str(export)} if init == "pretrained" else {"config": ENCODER})
                cfg = {"model": model, "task": {"kind": "sequence_classification", "pooling": "mean"},
                       "data": {"train": str(data / "train.jsonl"), "validation": str(data / "val.jsonl"),
                                "train_fraction": fraction, "max_length": 64,
                                "tokenizer": str(out / "tokenizer/tokenizer.json")},
                       "strategy": strategy,
                       "optim": {"batch_size": 32, "epochs": int(epochs / fraction ** 0.5), **optim},
                       "eval": {"patience": 10}, "output_dir": str(out / "finetune" / tag), "seed": seed,
                       "progress_bar": False}
                result = finetune(parse_finetune_config(cfg))
                accs.append(test_accuracy(out / "finetune" / tag / "best", data / "test.jsonl"))
            row = {"case": f"docstrings {int(fraction * 100)}% labels: {name}", "labels_fraction": fraction,
                   "recipe": name, "test_accuracy": sum(accs) / len(accs), "per_seed": accs,
                   "trainable_params": result["params"]["trainable_params"]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    from ptft_engine.finetune.evidence import markdown

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="evidence_text_out")
    p.add_argument("--steps", type=int, default=1500, help="MLM pre-training steps")
    p.add_argument("--export", default=None, help="reuse this MLM export instead of pre-training")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs at 100 %% labels")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out).resolve()
    if not (out / "data/test.jsonl").is_file():
        print(json.dumps({"docstrings": write_data(out / "data")}), flush=True)
    export = Path(args.export) if args.export else pretrain(out, args.steps)
    rows = run_grid(out, export, [int(s) for s in args.seeds.split(",")], args.epochs)
    table = markdown(rows, [r[0] for r in RECIPES], FRACTIONS)
    (out / "evidence.json").write_text(json.dumps(rows, indent=1))
    (out / "evidence.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
