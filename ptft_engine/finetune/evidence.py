"""Does pre-training pay? SimCLR on scikit-learn's digits, then fine-tuning with 1 %, 10 %
and 100 % of the labels, against the same ViT trained from scratch.

    python -m ptft_engine.finetune.evidence --out evidence_out [--steps 1500]

Runs the whole workflow with the CLI: writes the digit images as folders (train / val /
test, fixed seed), `ptft shard`s the training images (labels unused), `ptft pretrain`s
SimCLR (configs/simclr_digits.yaml), `ptft export`s it, then fine-tunes each
(label fraction x strategy) and reports test-set accuracy as JSON lines and a
Markdown table. Validation (early stopping) uses the val split; the test split is
touched only for the reported number.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
VIT_SCRATCH = {"arch": "vit", "image_size": 8, "patch_size": 2, "num_channels": 3, "hidden_size": 32,
               "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "initializer_range": 0.1}
# (name, init, strategy, optim overrides)
RECIPES = [
    ("scratch / full", "scratch", {"kind": "full"}, {"lr": 1e-3}),
    ("SimCLR / linear probe", "pretrained", {"kind": "linear_probe"}, {"lr": 1e-3, "head_lr": 1e-2}),
    ("SimCLR / partial (frozen embeddings + block 0)", "pretrained",
     {"kind": "partial", "freeze_embeddings": True, "freeze_layers": 1}, {"lr": 1e-3, "head_lr": 1e-2}),
    ("SimCLR / LoRA r=8", "pretrained", {"kind": "lora", "lora": {"r": 8, "alpha": 16, "targets": ["attn", "mlp"]}},
     {"lr": 3e-3, "head_lr": 1e-2}),
    ("SimCLR / full", "pretrained", {"kind": "full"}, {"lr": 1e-3, "head_lr": 1e-2, "layer_decay": 0.8}),
]
FRACTIONS = (0.01, 0.1, 1.0)


def write_digits(root: Path, seed: int = 0) -> dict[str, int]:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.random.default_rng(seed).permutation(len(d.target))
    splits = {"train": idx[:1200], "val": idx[1200:1497], "test": idx[1497:]}
    for name, ids in splits.items():
        for i in ids:
            out = root / name / str(d.target[i])
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray((d.images[i] * (255 / 16)).astype(np.uint8), mode="L").save(out / f"{i}.png")
    return {k: len(v) for k, v in splits.items()}


def ptft(*args: str, env: dict | None = None) -> None:
    """Run one CLI command in a subprocess (DeepSpeed and the engine stay out of this process)."""
    cmd = [sys.executable, "-m", "ptft_engine.cli", *args]
    print("+ ptft " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, **(env or {})})


def pretrain(out: Path, steps: int) -> Path:
    digits = out / "digits"
    ptft("shard", str(digits / "train"), "--format", "images", "--output", str(out / "shards/train"),
         "--shard-size", "100KB", "--no-progress", "--overwrite")
    ptft("shard", str(digits / "val"), "--format", "images", "--output", str(out / "shards/val"),
         "--no-progress", "--overwrite")
    # the image pipeline decodes to RGB, so the ViT takes 3 (identical) channels
    ptft("pretrain", "--config", "configs/simclr_digits.yaml", f"data.shards=[{out / 'shards/train'}]",
         f"data.eval_shards=[{out / 'shards/val'}]", f"run.max_steps={steps}", f"run.output_dir={out / 'runs'}",
         "run.name=simclr", "run.progress_bar=false", "model.num_channels=3", "data.num_workers=0",
         f"checkpoint.every={steps}", env={"OMP_NUM_THREADS": "1"})
    export = out / "export/simclr-vit"
    ptft("export", str(out / "runs/simclr"), str(export), "--overwrite")
    return export


def test_accuracy(best: Path, test_dir: Path) -> float:
    from ptft_engine.finetune import load_task_model
    from ptft_engine.finetune.data import load_image, read_image_folder

    model, info = load_task_model(best)
    index = {name: i for i, name in enumerate(info["labels"])}
    recs = read_image_folder(test_dir)
    size, ch = model.backbone.config.image_size, model.backbone.config.num_channels
    x = torch.stack([load_image(r["image"], size, ch) for r in recs])
    y = torch.tensor([index[r["label"]] for r in recs])
    with torch.no_grad():
        pred = model({"pixel_values": x}).argmax(-1)
    return float((pred == y).float().mean())


def run_grid(out: Path, export: Path, seeds: list[int], epochs_full: int) -> list[dict]:
    from ptft_engine.finetune import finetune, parse_finetune_config

    rows = []
    for fraction in FRACTIONS:
        for name, init, strategy, optim in RECIPES:
            accs = []
            for seed in seeds:
                tag = f"{name.split(' ')[0].lower()}-{strategy['kind']}-{fraction}-{seed}"
                # same number of optimizer steps order of magnitude for every fraction
                epochs = max(epochs_full, int(epochs_full / fraction ** 0.5))
                cfg = {
                    "model": {"pretrained": str(export)} if init == "pretrained" else {"config": VIT_SCRATCH},
                    "task": {"kind": "image_classification", "head_dropout": 0.0},
                    "data": {"format": "image_folder", "train": str(out / "digits/train"),
                             "validation": str(out / "digits/val"), "train_fraction": fraction},
                    "strategy": strategy,
                    "optim": {"batch_size": 32, "epochs": epochs, "warmup_ratio": 0.05, "weight_decay": 0.01, **optim},
                    "eval": {"patience": 8, "every": None},
                    "output_dir": str(out / "finetune" / tag), "seed": seed, "progress_bar": False,
                }
                result = finetune(parse_finetune_config(cfg))
                accs.append(test_accuracy(out / "finetune" / tag / "best", out / "digits/test"))
                trainable = result["params"]["trainable_params"]
            row = {"case": f"digits {int(fraction * 100)}% labels: {name}", "labels_fraction": fraction,
                   "recipe": name, "test_accuracy": sum(accs) / len(accs), "per_seed": accs,
                   "trainable_params": trainable}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def markdown(rows: list[dict], recipes: list[str] | None = None, fractions=FRACTIONS) -> str:
    recipes = recipes or [r[0] for r in RECIPES]
    lines = ["| recipe | " + " | ".join(f"{int(f * 100)} % labels" for f in fractions) + " |",
             "|---|" + "---|" * len(fractions)]
    for name in recipes:
        cells = [next(f"{r['test_accuracy']:.3f}" for r in rows if r["recipe"] == name and r["labels_fraction"] == f)
                 for f in fractions]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="evidence_out")
    p.add_argument("--steps", type=int, default=1500, help="SimCLR pre-training steps")
    p.add_argument("--export", default=None, help="reuse this SimCLR export instead of pre-training")
    p.add_argument("--seeds", default="0,1", help="fine-tuning seeds to average")
    p.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs at 100 %% labels")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out).resolve()
    if not (out / "digits/test").is_dir():
        print(json.dumps({"digits_split": write_digits(out / "digits")}))
    export = Path(args.export) if args.export else pretrain(out, args.steps)
    rows = run_grid(out, export, [int(s) for s in args.seeds.split(",")], args.epochs)
    table = markdown(rows)
    (out / "evidence.json").write_text(json.dumps(rows, indent=1))
    (out / "evidence.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
