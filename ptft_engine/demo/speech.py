"""The demo's speech table: HuBERT pre-training (objectives/hubert.py) of the tiny wav2vec 2.0
model on unlabelled eSpeak NG sentences (demo/speech_data.py), its targets k-means clusters of
MFCC frames fitted on those sentences; export, then spoken-digit classification fine-tuned from
the export and, as the baseline, from a randomly initialised model of the same architecture, at
a share of the labels each; accuracy on the digits of voices that never speak in train.

One stage of `ptft demo`: data -> shards -> k-means targets -> pre-training under
launch/local.sh -> export -> grid -> speech_comparison.json / .md (the report shows every
*comparison.json).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ptft_engine.demo import speech_data
from ptft_engine.demo.compare import SCRATCH, Recipe, table
from ptft_engine.demo.stages import REPO, Launch, ptft

CONFIG = REPO / "configs" / "demo" / "hubert_speech.yaml"
RUN_NAME = "hubert_speech"  # run.name in CONFIG
CLUSTERS = 100  # k-means targets: HuBERT's first (MFCC) iteration uses 100
VAL_FRACTION = 0.1  # of the train voices' clips, per digit: picks the best epoch
LABELS = [str(d) for d in range(10)]  # the digit spoken (speech_data.DIGITS[label])


@dataclass(frozen=True)
class SpeechPlan:
    sentences: int              # unlabelled sentences for pre-training
    renditions: int             # per (train or test voice, digit)
    train_voices: int           # of 8; the 4 test voices are always held out
    pretrain_steps: int
    recipes: tuple[str, ...]
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    steps: int                  # fine-tuning optimiser steps per run, whatever the label budget


QUICK = SpeechPlan(sentences=40, renditions=1, train_voices=4, pretrain_steps=30, recipes=("scratch", "frozen_fe"),
                   fractions=(0.01, 0.1, 1.0), seeds=(0,), steps=30)
FULL = SpeechPlan(sentences=150, renditions=3, train_voices=8, pretrain_steps=150,
                  recipes=("scratch", "full", "frozen_fe"), fractions=(0.01, 0.1, 1.0), seeds=(0, 1), steps=50)

# scratch and pre-trained / full train alike; learning rates from a few trials each
RECIPES = {
    "scratch": Recipe(SCRATCH, False, {"kind": "full"}, {"lr": 1e-3, "head_lr": 3e-3}),
    "frozen_fe": Recipe("pre-trained / frozen feature encoder", True, {"kind": "freeze_feature_encoder"},
                        {"lr": 1e-3, "head_lr": 3e-3}),
    "probe": Recipe("pre-trained / linear probe", True, {"kind": "linear_probe"}, {"lr": 3e-3, "head_lr": 1e-2}),
    "full": Recipe("pre-trained / full", True, {"kind": "full"}, {"lr": 1e-3, "head_lr": 3e-3}),
}


def write_data(root: Path, plan: SpeechPlan) -> dict:
    pre = speech_data.write_pretrain_speech(root, plan.sentences)
    digits = speech_data.write_spoken_digits(root, plan.renditions, plan.train_voices)
    return {"pretrain": pre, "digits": digits}


def fit_targets(pretrain: dict, dest: Path) -> dict:
    """HuBERT's targets: k-means of the unlabelled sentences' MFCC frames, saved to `dest` (what
    `ptft speech-targets` writes); the labelled digits take no part."""
    from ptft_engine.objectives.speech_targets import fit_shards

    km = fit_shards([pretrain["shards"]], CLUSTERS)
    km.save(dest)
    return {"path": str(dest), "clusters": km.num_clusters, "frames": km.frames, "inertia": round(km.inertia, 3)}


def write_scratch(export: Path, dest: Path, seed: int = 0) -> Path:
    """The export's architecture freshly initialised as pre-training starts (the engine's own
    initialisation), exported in the same layout: the baseline differs only in the pre-training."""
    import torch

    from ptft_engine.export.writer import export_model
    from ptft_engine.models import build_model, parse_model_config

    arch = json.loads((export / "manifest.json").read_text())["model_config"]
    torch.manual_seed(seed)
    export_model(build_model(parse_model_config(arch)), dest, source={"kind": "random initialisation", "seed": seed})
    return dest


def read_digits(digits: dict, seed: int) -> dict[str, list]:
    """Train / validation (VAL_FRACTION of the train voices' clips per digit) / test records."""
    from ptft_engine.finetune.data import read_records, split_records

    train, val = split_records(read_records(digits["train"]["shards"], "shards"), VAL_FRACTION, seed, _label)
    return {"train": train, "val": val, "test": read_records(digits["test"]["shards"], "shards")}


def _label(record: dict) -> str:
    return str(record["label"])


def finetune_one(model_dir: Path, recipe: Recipe, records: dict, fraction: float, seed: int, steps: int,
                 run_dir: Path) -> dict:
    """One run of the grid: the best model by validation accuracy goes to run_dir/best (with
    report.json beside it) and is scored on the held-out voices, loaded as a server would."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from ptft_engine.finetune.audio import (
        apply_audio_strategy,
        evaluate_audio,
        finetune_audio,
        load_audio_classifier,
    )
    from ptft_engine.finetune.data import subsample
    from ptft_engine.finetune.report import write_report

    train = subsample(records["train"], fraction, seed, _label)

    def clips(rs: list[dict]) -> list:
        return [r["audio"] for r in rs]

    def labels(rs: list[dict]) -> list[int]:
        return [int(_label(r)) for r in rs]

    # no SpecAugment: transformers masks at least 2 spans of 10 frames per clip, most of a
    # spoken digit's 15-50 frames (measured: scratch after 60 steps 0.11 with it, 0.25 without)
    model, extractor = load_audio_classifier(model_dir, LABELS, mask_time_prob=0.0)
    counts = apply_audio_strategy(model, recipe.strategy["kind"])
    result = finetune_audio(model, extractor, clips(train), labels(train), clips(records["val"]),
                            labels(records["val"]), batch_size=8, max_steps=steps, warmup_ratio=0.1,
                            weight_decay=0.01, seed=seed, out_dir=run_dir, strategy=recipe.strategy["kind"],
                            source={"pretrained": str(model_dir)}, **recipe.optim)
    best = AutoModelForAudioClassification.from_pretrained(run_dir / "best")
    test = evaluate_audio(best, AutoFeatureExtractor.from_pretrained(run_dir / "best"), clips(records["test"]),
                          labels(records["test"]))
    report = {"source": {"pretrained": str(model_dir)}, "strategy": recipe.strategy["kind"], "params": counts,
              "labels": LABELS, "metric": "accuracy", "best_step": result["best"]["step"], "stopped_early": False,
              "train_labels": len(train), "test_accuracy": test["accuracy"], **result}
    write_report(run_dir, report, "accuracy")
    return report


def run_grid(pretrained: Path, scratch: Path, digits: dict, out: Path, plan: SpeechPlan) -> list[dict]:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-load "Loading weights" bars: 3 per run, noise in the demo
    records = {seed: read_digits(digits, seed) for seed in plan.seeds}
    rows = []
    for fraction in plan.fractions:
        for key in plan.recipes:
            recipe, t0 = RECIPES[key], time.perf_counter()
            dirs = [out / f"{key}-{fraction:g}-seed{seed}" for seed in plan.seeds]
            runs = [finetune_one(pretrained if recipe.pretrained else scratch, recipe, records[seed], fraction, seed,
                                 plan.steps, run_dir) for seed, run_dir in zip(plan.seeds, dirs)]
            accs = [r["test_accuracy"] for r in runs]
            row = {"recipe": recipe.name, "key": key, "labels_fraction": fraction,
                   "train_labels": runs[0]["train_labels"], "test_accuracy": sum(accs) / len(accs), "per_seed": accs,
                   "spread": (max(accs) - min(accs)) / 2 if len(accs) > 1 else None,
                   "val_accuracy": [r["best"]["accuracy"] for r in runs], "steps": runs[0]["steps"],
                   "trainable_params": runs[0]["params"]["trainable_params"], "dirs": [str(d) for d in dirs]}
            print(f"    {fraction * 100:>4g} % labels ({row['train_labels']:>3} clips)  {recipe.name:<38} "
                  f"test accuracy {row['test_accuracy']:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
            rows.append(row)
    return rows


def run_speech(st, out: Path, plan: SpeechPlan, ranks: int, env: dict[str, str], log_every: int) -> dict:
    """The demo's speech stage (one numbered stage of `st`); returns the rows and the table."""
    root = out / "bundled" / "speech"
    n_runs = len(plan.fractions) * len(plan.recipes) * len(plan.seeds)
    with st.stage("speech", f"HuBERT pre-training of a tiny wav2vec 2.0 model on unlabelled eSpeak NG sentences, "
                            f"{plan.pretrain_steps} steps on {ranks} ranks; spoken digits: {n_runs} fine-tuning "
                            "runs, pre-trained vs scratch"):
        t0 = time.perf_counter()
        data = write_data(root, plan)
        st.timings["speech data"] = round(time.perf_counter() - t0, 1)
        d = data["digits"]
        print(f"    {data['pretrain']['clips']} sentences ({data['pretrain']['seconds'] / 60:.1f} min of speech); "
              f"digits: {d['train']['clips']} train clips by {len(d['voices']['train'])} voices, "
              f"{d['test']['clips']} test clips by {len(d['voices']['test'])} other voices", flush=True)
        t0 = time.perf_counter()
        data["targets"] = fit_targets(data["pretrain"], root / "kmeans.json")
        st.timings["speech targets"] = round(time.perf_counter() - t0, 1)
        print(f"    targets: k-means of {data['targets']['frames']} MFCC frames into {CLUSTERS} clusters "
              f"({st.timings['speech targets']:.0f} s)", flush=True)
        launch = Launch("hubert", ranks, CONFIG,
                        [f"run.output_dir={out / 'runs'}", f"run.log_every={log_every}",
                         f"run.max_steps={plan.pretrain_steps}", f"data.shards=[{data['pretrain']['shards']}]",
                         f"objective.kmeans_path={data['targets']['path']}"],
                        out / "logs/pretrain_hubert.log", env, quiet=True)
        try:
            st.timings["speech pre-train"] = round(launch.wait(), 1)
        finally:
            launch.kill()
        print("    " + loss_drop(out / "runs" / RUN_NAME / "metrics.jsonl"), flush=True)
        export = out / "export/hubert-speech"
        ptft("export", str(out / "runs" / RUN_NAME), str(export))
        scratch = write_scratch(export, out / "export/speech-scratch")
        t0 = time.perf_counter()
        rows = run_grid(export, scratch, d, out / "finetune_speech", plan)
        st.timings["speech fine-tune"] = round(time.perf_counter() - t0, 1)
        md = table(rows, "spoken digits, test accuracy (held-out voices)")
        (out / "speech_comparison.json").write_text(json.dumps({
            "title": "Speech: HuBERT pre-trained vs from scratch (spoken digits, held-out voices)",
            "rows": rows, "ranks": ranks, "pretrain_steps": plan.pretrain_steps, "data": data}, indent=1))
        (out / "speech_comparison.md").write_text(md + "\n")
    return {"rows": rows, "table": md}


def loss_drop(metrics: Path) -> str:
    """'hubert: training loss A -> B over N logs' from the first and last logged train losses."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    losses = [r["loss"] for r in rows if r.get("split") == "train" and isinstance(r.get("loss"), (int, float))]
    if len(losses) < 2:
        return f"hubert: fewer than two logged losses in {metrics}"
    return f"hubert: training loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} logs"
