"""Fine-tune the pre-trained export and the same architecture from scratch on a share
of the digit labels each; test-set accuracy per (recipe, label budget) and its table."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

SCRATCH = "scratch / full"


@dataclass(frozen=True)
class Recipe:
    name: str
    pretrained: bool
    strategy: dict
    optim: dict = field(default_factory=dict)


RECIPES = {
    "scratch": Recipe(SCRATCH, False, {"kind": "full"}, {"lr": 1e-3}),
    "probe": Recipe("pre-trained / linear probe", True, {"kind": "linear_probe"}, {"lr": 1e-3, "head_lr": 1e-2}),
    "full": Recipe("pre-trained / full", True, {"kind": "full"}, {"lr": 1e-3, "head_lr": 1e-2, "layer_decay": 0.8}),
    "lora": Recipe("pre-trained / LoRA r=8", True,
                   {"kind": "lora", "lora": {"r": 8, "alpha": 16, "targets": ["attn", "mlp"]}},
                   {"lr": 3e-3, "head_lr": 1e-2}),
}


def test_accuracy(best: Path, test_dir: Path) -> float:
    """Accuracy of a saved fine-tuned model on an image folder it never saw."""
    from ptft_engine.finetune import load_task_model
    from ptft_engine.finetune.data import load_image, read_image_folder

    model, info = load_task_model(best)
    index = {name: i for i, name in enumerate(info["labels"])}
    records = read_image_folder(test_dir)
    cfg = model.backbone.config
    x = torch.stack([load_image(r["image"], cfg.image_size, cfg.num_channels) for r in records])  # (N, C, H, W)
    y = torch.tensor([index[r["label"]] for r in records])
    model.eval()
    with torch.no_grad():
        pred = model({"pixel_values": x}).argmax(-1)
    return float((pred == y).float().mean())


def run_grid(export: Path, digits: Path, out: Path, *, recipes: list[str], fractions: list[float],
             seeds: list[int], epochs: int, max_steps: int | None) -> list[dict]:
    from ptft_engine.finetune import finetune, parse_finetune_config

    arch = json.loads((export / "config.json").read_text())["model"]  # scratch = the same architecture
    rows = []
    for fraction in fractions:
        for key in recipes:
            recipe = RECIPES[key]
            accs, t0 = [], time.perf_counter()
            for seed in seeds:
                run_dir = out / f"{key}-{fraction:g}-seed{seed}"
                # fewer labels -> more epochs, so small budgets still take a useful number of steps
                n_epochs = max(epochs, int(epochs / fraction ** 0.5))
                n = labels_used(digits / "train", fraction)
                total = max_steps or n_epochs * max(1, n // 32)
                cfg = {
                    "model": {"pretrained": str(export)} if recipe.pretrained else {"config": arch},
                    "task": {"kind": "image_classification", "head_dropout": 0.0},
                    "data": {"format": "image_folder", "train": str(digits / "train"),
                             "validation": str(digits / "val"), "train_fraction": fraction},
                    "strategy": recipe.strategy,
                    "optim": {"batch_size": 32, "epochs": n_epochs, "max_steps": max_steps, "warmup_ratio": 0.05,
                              "weight_decay": 0.01, **recipe.optim},
                    # ~6 evaluations per run: each one also saves the best model so far
                    "eval": {"patience": 3, "every": max(1, total // 6)},
                    "output_dir": str(run_dir), "seed": seed, "progress_bar": False,
                }
                result = finetune(parse_finetune_config(cfg, f"demo fine-tune {key}"))
                accs.append(test_accuracy(run_dir / "best", digits / "test"))
            row = {"recipe": recipe.name, "key": key, "labels_fraction": fraction,
                   "train_labels": labels_used(digits / "train", fraction),
                   "test_accuracy": sum(accs) / len(accs), "per_seed": accs,
                   "val_accuracy": (result["best"] or {}).get("accuracy"), "steps": result["steps"],
                   "trainable_params": result["params"]["trainable_params"],
                   "dirs": [str(out / f"{key}-{fraction:g}-seed{s}") for s in seeds]}
            print(f"    {_pct(fraction):>5} labels  {recipe.name:<28} test accuracy {row['test_accuracy']:.3f}"
                  f"  ({row['trainable_params']:,} trainable params, {time.perf_counter() - t0:.0f} s)", flush=True)
            rows.append(row)
    return rows


def labels_used(train_dir: Path, fraction: float) -> int:
    """Labelled images a budget keeps: the fine-tuning data takes it per class, at least one each."""
    import math

    sizes = [sum(1 for _ in d.iterdir()) for d in train_dir.iterdir() if d.is_dir()]
    return sum(n if fraction >= 1 else max(1, math.floor(n * fraction + 0.5)) for n in sizes)


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g} %"


def table(rows: list[dict], what: str = "digits test accuracy") -> str:
    """Markdown: one row per recipe, one column per label budget, plus the gain over scratch."""
    fractions = sorted({r["labels_fraction"] for r in rows})
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    acc = {(r["recipe"], r["labels_fraction"]): r["test_accuracy"] for r in rows}
    lines = [f"| {what} | " + " | ".join(f"{_pct(f)} labels" for f in fractions) + " |",
             "|---|" + "---:|" * len(fractions)]
    for name in recipes:
        cells = []
        for f in fractions:
            a, base = acc.get((name, f)), acc.get((SCRATCH, f))
            gain = f" ({a - base:+.3f})" if a is not None and base is not None and name != SCRATCH else ""
            cells.append("–" if a is None else f"{a:.3f}{gain}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
