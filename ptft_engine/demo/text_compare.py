"""The text table: fine-tune the masked-LM (encoder) and causal-LM (decoder) exports and
the same architectures from scratch on a share of the docstring labels; test accuracy
per (recipe, label budget) over several seeds, beside a bag-of-words logistic regression.

    python -m ptft_engine.demo.text_compare --data D --mlm EXPORT --clm EXPORT --out O [--quick]

Runs as its own process in `ptft demo`, so it fine-tunes on the second core while the
digits grid uses the first. Writes O/text_comparison.json and prints one line per row.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

BOW = "bag-of-words logistic regression"
SCRATCH_ENCODER = "scratch encoder / full"
MAX_LENGTH = 64


@dataclass(frozen=True)
class TextRecipe:
    name: str
    backbone: str              # "mlm" | "clm": which export (or, with scratch, which architecture)
    strategy: dict
    optim: dict = field(default_factory=dict)
    scratch: bool = False
    reinit_top: int = 0        # re-initialise this many top blocks of the export before fine-tuning
    pooling: str = "mean"      # task.pooling: "mean" over tokens, or "last" (a decoder's last token)


# Encoders pool by the mean over tokens (MLM never trains [CLS]); decoders by the mean too, which
# beat their last token (what transformers' GPT2ForSequenceClassification reads) at 1 % labels,
# 0.343 vs 0.287 with a large LR; one row keeps the last token for comparison.
RECIPES = {
    "scratch": TextRecipe(SCRATCH_ENCODER, "mlm", {"kind": "full"}, {"lr": 1e-3}, scratch=True),
    "probe": TextRecipe("MLM / linear probe", "mlm", {"kind": "linear_probe"}, {"lr": 1e-2}),
    "small_lr": TextRecipe("MLM / full, small LR + layer decay", "mlm", {"kind": "full"},
                           {"lr": 5e-4, "head_lr": 5e-3, "layer_decay": 0.8}),
    "large_lr": TextRecipe("MLM / full, large LR (forgets)", "mlm", {"kind": "full"}, {"lr": 5e-3}),
    "reinit_top": TextRecipe("MLM / top block re-initialised, small LR", "mlm", {"kind": "full"},
                             {"lr": 5e-4, "head_lr": 5e-3, "layer_decay": 0.8}, reinit_top=1),
    "frozen_lower": TextRecipe("MLM / frozen embeddings + lower 2 blocks", "mlm",
                               {"kind": "partial", "freeze_embeddings": True, "freeze_layers": 2},
                               {"lr": 1e-3, "head_lr": 5e-3}),
    "lora": TextRecipe("MLM / LoRA r=8", "mlm",
                       {"kind": "lora", "lora": {"r": 8, "alpha": 16, "targets": ["attn", "mlp"]}},
                       {"lr": 3e-3, "head_lr": 1e-2}),
    "clm_scratch": TextRecipe("scratch decoder / full, mean", "clm", {"kind": "full"}, {"lr": 1e-3},
                              scratch=True),
    "clm_small_lr": TextRecipe("CLM / full, small LR + layer decay, mean", "clm", {"kind": "full"},
                               {"lr": 5e-4, "head_lr": 5e-3, "layer_decay": 0.8}),
    "clm_large_lr": TextRecipe("CLM / full, large LR (forgets), mean", "clm", {"kind": "full"}, {"lr": 5e-3}),
    "clm_last": TextRecipe("CLM / full, large LR, last token", "clm", {"kind": "full"}, {"lr": 5e-3},
                           pooling="last"),
}
# optimizer steps per label budget: a handful of epochs at 100 %, many passes over the few at 1 %
STEPS = {0.01: 40, 0.1: 100, 1.0: 200}


def bag_of_words(data: Path, fractions: list[float], seeds: list[int]) -> list[dict]:
    """TF-IDF unigrams+bigrams -> logistic regression, C picked on the validation split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from ptft_engine.demo.text_data import read_jsonl
    from ptft_engine.finetune.data import subsample

    train, val, test = (read_jsonl(data / f"{s}.jsonl") for s in ("train", "val", "test"))
    rows = []
    for fraction in fractions:
        accs = []
        for seed in seeds:
            kept = subsample(train, fraction, seed, lambda r: r["label"])  # the labels the networks get
            best = (-1.0, 0.0)
            with threadpool_limits(1):  # BLAS threads only spin against the other processes here
                for c in (1.0, 10.0, 100.0):
                    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
                    x = vec.fit_transform([r["text"] for r in kept])
                    clf = LogisticRegression(C=c, max_iter=1000).fit(x, [r["label"] for r in kept])
                    score = clf.score(vec.transform([r["text"] for r in val]), [r["label"] for r in val])
                    if score > best[0]:
                        best = (score, clf.score(vec.transform([r["text"] for r in test]), [r["label"] for r in test]))
            accs.append(best[1])
        rows.append(_row(BOW, "bow", fraction, len(kept), accs, trainable=None))
    return rows


def reinit_top_blocks(export: Path, n: int, out: Path, seed: int = 0) -> Path:
    """A copy of `export` whose top n blocks hold fresh weights (the model's own init)."""
    from ptft_engine.export import load_export
    from ptft_engine.export.writer import export_model
    from ptft_engine.models import build_model

    model = load_export(export).model
    torch.manual_seed(seed)
    fresh = build_model(model.config)
    for mine, new in zip(model.layers[-n:], fresh.layers[-n:]):
        mine.load_state_dict(new.state_dict())
    export_model(model, out, tokenizer=export / "tokenizer.json", overwrite=True)
    return out


def test_accuracy(best: Path, test_file: Path) -> float:
    from ptft_engine.finetune import load_task_model
    from ptft_engine.finetune.data import TextEncoder, pad_collate, read_records

    model, info = load_task_model(best)
    enc = TextEncoder(best / "tokenizer.json", model.backbone.config.arch)
    index = {name: i for i, name in enumerate(info["labels"])}
    items = [{**enc.encode_text(r["text"], None, MAX_LENGTH), "labels": index[r["label"]]}
             for r in read_records(test_file, "jsonl")]
    correct = 0
    with torch.no_grad():
        for i in range(0, len(items), 256):
            batch = pad_collate(enc.pad_id)(items[i:i + 256])
            correct += int((model(batch).argmax(-1) == batch["labels"]).sum())
    return correct / len(items)


def run_grid(data: Path, exports: dict[str, Path], out: Path, *, recipes: list[str], fractions: list[float],
             seeds: list[int], steps: dict[float, int] = STEPS, full_label_recipes: list[str] | None = None,
             jobs: int = 1) -> list[dict]:
    """One row per (label budget, recipe), seeds averaged; `jobs` processes share the cells."""
    for key in recipes:  # re-initialised copies are made once, before the cells fork
        if RECIPES[key].reinit_top:
            reinit_top_blocks(exports[RECIPES[key].backbone], RECIPES[key].reinit_top, out / f"export-{key}")
    cells = [(data, exports, out, key, f, seeds, steps[f]) for f in fractions for key in recipes
             if f < 1.0 or full_label_recipes is None or key in full_label_recipes]
    if jobs <= 1:
        return [_cell(*c) for c in cells]
    import multiprocessing

    import sklearn.metrics  # noqa: F401  (what the fine-tuning loop imports on first use: import once, here)
    import torch._dynamo  # noqa: F401  (AdamW's first construction imports it: seconds on a busy machine)

    # fork: the workers inherit the imports and the one-thread setting instead of paying for them again
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        return pool.starmap(_cell, cells, chunksize=1)


def _cell(data: Path, exports: dict[str, Path], out: Path, key: str, fraction: float, seeds: list[int],
          total: int) -> dict:
    from ptft_engine.finetune import finetune, parse_finetune_config

    recipe, t0, accs = RECIPES[key], time.perf_counter(), []
    source = out / f"export-{key}" if recipe.reinit_top else exports[recipe.backbone]
    for seed in seeds:
        run_dir = out / f"{key}-{fraction:g}-seed{seed}"
        model = {"config": _engine_config(source)} if recipe.scratch else {"pretrained": str(source)}
        task = {"kind": "sequence_classification", "pooling": recipe.pooling, "head_dropout": 0.1}
        cfg = {"model": model, "task": task,
               "data": {"train": str(data / "train.jsonl"), "validation": str(data / "val.jsonl"),
                        "train_fraction": fraction, "max_length": MAX_LENGTH,
                        "tokenizer": str(exports[recipe.backbone] / "tokenizer.json")},
               "strategy": recipe.strategy,
               "optim": {"batch_size": 32, "max_steps": total, "warmup_ratio": 0.1, "weight_decay": 0.01,
                         **recipe.optim},
               "eval": {"patience": None, "every": max(10, total // 4), "batch_size": 200},
               "output_dir": str(run_dir), "seed": seed, "progress_bar": False}
        result = finetune(parse_finetune_config(cfg, f"text fine-tune {key}"))
        accs.append(test_accuracy(run_dir / "best", data / "test.jsonl"))
    row = _row(recipe.name, key, fraction, _labels_used(data / "train.jsonl", fraction), accs,
               result["params"]["trainable_params"])
    print(f"    {fraction * 100:>4g} % labels  {recipe.name:<48} test accuracy {row['test_accuracy']:.3f}"
          f" ± {row['spread']:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return row


def _engine_config(export: Path) -> dict:
    from ptft_engine.export import load_export

    return load_export(export).model.config.model_dump()


def _labels_used(train: Path, fraction: float) -> int:
    from ptft_engine.demo.text_data import read_jsonl
    from ptft_engine.finetune.data import subsample

    return len(subsample(read_jsonl(train), fraction, 0, lambda r: r["label"]))


def _row(name: str, key: str, fraction: float, n: int, accs: list[float], trainable: int | None) -> dict:
    return {"recipe": name, "key": key, "labels_fraction": fraction, "train_labels": n,
            "test_accuracy": statistics.fmean(accs), "spread": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
            "per_seed": accs, "trainable_params": trainable}


def table(rows: list[dict], goal: float = 0.05) -> str:
    """Markdown: mean ± spread (population std over seeds) and the gain over the scratch
    model of the same architecture; last lines say whether the MLM (and CLM) goals were met."""
    fractions = sorted({r["labels_fraction"] for r in rows})
    names = list(dict.fromkeys(r["recipe"] for r in rows))
    by = {(r["recipe"], r["labels_fraction"]): r for r in rows}
    labels = {r["labels_fraction"]: r["train_labels"] for r in rows}
    budgets = " | ".join(f"{f * 100:g} % labels ({labels[f]})" for f in fractions)
    lines = ["| docstring package, test accuracy | " + budgets
             + " |", "|---|" + "---:|" * len(fractions)]
    for name in names:
        cells = []
        for f in fractions:
            r = by.get((name, f))
            base = by.get((_scratch_of(r), f)) if r else None
            gain = f" ({r['test_accuracy'] - base['test_accuracy']:+.3f})" if base and base is not r else ""
            cells.append("–" if r is None else f"{r['test_accuracy']:.3f} ± {r['spread']:.3f}{gain}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + goal_lines(rows, goal)


def _scratch_of(row: dict | None) -> str | None:
    if row is None or row["key"] == "bow":
        return None
    return RECIPES["clm_scratch" if RECIPES[row["key"]].backbone == "clm" else "scratch"].name


GOALS = {"mlm": ("MLM beats scratch", "scratch"), "clm": ("CLM beats the scratch decoder", "clm_scratch")}


def goal_line(rows: list[dict], goal: float = 0.05, backbone: str = "mlm") -> str:
    """Goal: the best recipe on the `backbone` export beats the scratch model of its
    architecture by >= 5 points at 1 % and 10 % labels."""
    what, scratch = GOALS[backbone]
    parts, met = [], True
    for f in (0.01, 0.1):
        base = next((r for r in rows if r["key"] == scratch and r["labels_fraction"] == f), None)
        tuned = [r for r in rows if r["labels_fraction"] == f and r["key"] in RECIPES
                 and RECIPES[r["key"]].backbone == backbone and not RECIPES[r["key"]].scratch]
        if base is None or not tuned:
            continue
        best = max(tuned, key=lambda r: r["test_accuracy"])
        gain = best["test_accuracy"] - base["test_accuracy"]
        met &= gain >= goal
        parts.append(f"{f * 100:g} % labels: {best['recipe']} {gain * 100:+.1f} points")
    head = f"Goal ({what} by >= {goal * 100:g} points at 1 % and 10 % labels)"
    if not parts:
        return f"{head}: not measured in this run."
    return f"{head}: {'met' if met else 'MISSED'} — " + "; ".join(parts) + "."


def goal_lines(rows: list[dict], goal: float = 0.05) -> str:
    """The MLM goal (the issue's), then the CLM one when the run has causal-LM rows."""
    clm = any(r["key"] in RECIPES and RECIPES[r["key"]].backbone == "clm" for r in rows)
    return "\n\n".join(goal_line(rows, goal, b) for b in (("mlm", "clm") if clm else ("mlm",)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="folder with train/val/test.jsonl")
    p.add_argument("--mlm", required=True, type=Path, help="masked-LM export")
    p.add_argument("--clm", type=Path, help="causal-LM export (recipes on it are left out without one)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--fractions", default="0.01,0.1,1")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps-scale", type=float, default=1.0, help="times the optimizer steps of STEPS")
    p.add_argument("--full-label-recipes", default=None, help="at 100 %% labels only these (default: all)")
    p.add_argument("--jobs", type=int, default=1, help="fine-tuning processes")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    exports = {"mlm": args.mlm, **({"clm": args.clm} if args.clm else {})}
    recipes = [r for r in args.recipes.split(",") if RECIPES[r].backbone in exports]
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = bag_of_words(args.data, fractions, seeds)
    for r in rows:
        print(f"    {r['labels_fraction'] * 100:>4g} % labels  {BOW:<48} test accuracy {r['test_accuracy']:.3f}"
              f" ± {r['spread']:.3f}", flush=True)
    steps = {f: max(10, round(n * args.steps_scale)) for f, n in STEPS.items()}
    full = args.full_label_recipes.split(",") if args.full_label_recipes else None
    rows += run_grid(args.data, exports, args.out, recipes=recipes, fractions=fractions, seeds=seeds, steps=steps,
                     full_label_recipes=full, jobs=args.jobs)
    (args.out / "text_comparison.json").write_text(json.dumps({"rows": rows, "seeds": seeds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
