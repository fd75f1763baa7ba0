"""The demo's speech table: wav2vec 2.0 pre-training of the tiny model on unlabelled eSpeak NG
sentences (demo/speech_data.py), export, then spoken-digit classification fine-tuned from the
export and, as the baseline, from a randomly initialised model of the same architecture, at a
share of the labels each; accuracy on the digits of voices that never speak in train.

One stage of `ptft demo`: data -> shards -> pre-training under launch/local.sh -> export ->
grid -> speech_comparison.json / .md (the report shows every *comparison.json).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ptft_engine.demo import speech_data
from ptft_engine.demo.compare import SCRATCH, Recipe, table
from ptft_engine.demo.stages import REPO, Launch, ptft

CONFIG = REPO / "configs" / "demo" / "wav2vec2_speech.yaml"
RUN_NAME = "wav2vec2_speech"  # run.name in CONFIG
VAL_FRACTION = 0.1  # of the train voices' clips, per digit: picks the best epoch


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


QUICK = SpeechPlan(sentences=40, renditions=1, train_voices=4, pretrain_steps=60, recipes=("scratch", "frozen_fe"),
                   fractions=(0.01, 0.1, 1.0), seeds=(0,), steps=40)
FULL = SpeechPlan(sentences=150, renditions=3, train_voices=8, pretrain_steps=300,
                  recipes=("scratch", "frozen_fe", "probe"), fractions=(0.01, 0.1, 1.0), seeds=(0, 1), steps=120)

# scratch trains everything (no pre-trained conv stack to keep); lr from a few trials each
RECIPES = {
    "scratch": Recipe(SCRATCH, False, {"kind": "full"}, {"lr": 1e-3}),
    "frozen_fe": Recipe("pre-trained / frozen feature encoder", True, {"kind": "freeze_feature_encoder"},
                        {"lr": 1e-3, "head_lr": 3e-3}),
    "probe": Recipe("pre-trained / linear probe", True, {"kind": "linear_probe"}, {"lr": 3e-3, "head_lr": 1e-2}),
    "full": Recipe("pre-trained / full", True, {"kind": "full"}, {"lr": 1e-3, "head_lr": 3e-3}),
}


def write_data(root: Path, plan: SpeechPlan) -> dict:
    pre = speech_data.write_pretrain_speech(root, plan.sentences)
    digits = speech_data.write_spoken_digits(root, plan.renditions, plan.train_voices)
    return {"pretrain": pre, "digits": digits}


def write_scratch(export: Path, dest: Path) -> Path:
    """The export's architecture with transformers' random initialisation, in the same layout
    (config.json + weights + preprocessor_config.json): the baseline loads as the export does."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config.from_pretrained(export)).save_pretrained(dest)
    shutil.copy(export / "preprocessor_config.json", dest / "preprocessor_config.json")
    return dest


def test_accuracy(best: Path, test_shards: str) -> float:
    """Accuracy of a saved classifier on the held-out voices' digits, loaded as a server would."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from ptft_engine.finetune.audio import evaluate_audio
    from ptft_engine.finetune.data import read_records

    model = AutoModelForAudioClassification.from_pretrained(best)
    extractor = AutoFeatureExtractor.from_pretrained(best)
    records = read_records(test_shards, "shards")
    labels = [model.config.label2id[str(r["label"])] for r in records]
    return evaluate_audio(model, extractor, [r["audio"] for r in records], labels)["accuracy"]


def run_grid(pretrained: Path, scratch: Path, digits: dict, out: Path, plan: SpeechPlan) -> list[dict]:
    from transformers.utils import logging as hf_logging

    from ptft_engine.finetune import finetune, parse_finetune_config

    hf_logging.disable_progress_bar()  # per-load "Loading weights" bars: 2 per run, noise in the demo
    rows = []
    for fraction in plan.fractions:
        for key in plan.recipes:
            recipe, accs, t0 = RECIPES[key], [], time.perf_counter()
            for seed in plan.seeds:
                run_dir = out / f"{key}-{fraction:g}-seed{seed}"
                cfg = {
                    "model": {"pretrained": str(pretrained if recipe.pretrained else scratch)},
                    "task": {"kind": "audio_classification", "labels": [str(i) for i in range(10)]},
                    "data": {"format": "shards", "train": digits["train"]["shards"], "val_fraction": VAL_FRACTION,
                             "train_fraction": fraction},
                    "strategy": recipe.strategy,
                    # the same number of updates at every budget: few labels are seen many times
                    "optim": {"batch_size": 8, "max_steps": plan.steps, "warmup_ratio": 0.1, "weight_decay": 0.01,
                              **recipe.optim},
                    "output_dir": str(run_dir), "seed": seed, "progress_bar": False,
                }
                result = finetune(parse_finetune_config(cfg, f"demo speech fine-tune {key}"))
                accs.append(test_accuracy(run_dir / "best", digits["test"]["shards"]))
            row = {"recipe": recipe.name, "key": key, "labels_fraction": fraction,
                   "train_labels": labels_used(digits["train"]["shards"], fraction, plan.seeds[0]), "test_accuracy": sum(accs) / len(accs), "per_seed": accs,
                   "spread": (max(accs) - min(accs)) / 2 if len(accs) > 1 else None,
                   "val_accuracy": result["best"]["accuracy"], "steps": result["steps"],
                   "trainable_params": result["params"]["trainable_params"],
                   "dirs": [str(out / f"{key}-{fraction:g}-seed{s}") for s in plan.seeds]}
            print(f"    {fraction * 100:>4g} % labels ({row['train_labels']:>3} clips)  {recipe.name:<38} "
                  f"test accuracy {row['test_accuracy']:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
            rows.append(row)
    return rows


def labels_used(train_shards: str, fraction: float, seed: int) -> int:
    """Labelled clips a run trains on: the split and subsample `ptft finetune` makes."""
    from ptft_engine.finetune.data import read_records, split_records, subsample

    label = lambda r: str(r["label"])  # noqa: E731
    train, _ = split_records(read_records(train_shards, "shards"), VAL_FRACTION, seed, label)
    return len(subsample(train, fraction, seed, label))


def run_speech(st, out: Path, plan: SpeechPlan, ranks: int, env: dict[str, str], log_every: int) -> dict:
    """The demo's speech stage (one numbered stage of `st`); returns the rows and the table."""
    root = out / "bundled" / "speech"
    n_runs = len(plan.fractions) * len(plan.recipes) * len(plan.seeds)
    with st.stage("speech", f"wav2vec 2.0 (tiny) pre-training on unlabelled eSpeak NG sentences, {plan.pretrain_steps} "
                            f"steps on {ranks} ranks; spoken digits: {n_runs} fine-tuning runs, pre-trained vs scratch"):
        t0 = time.perf_counter()
        data = write_data(root, plan)
        st.timings["speech data"] = round(time.perf_counter() - t0, 1)
        d = data["digits"]
        print(f"    {data['pretrain']['clips']} sentences ({data['pretrain']['seconds'] / 60:.1f} min of speech); "
              f"digits: {d['train']['clips']} train clips by {len(d['voices']['train'])} voices, "
              f"{d['test']['clips']} test clips by {len(d['voices']['test'])} other voices", flush=True)
        launch = Launch("wav2vec2", ranks, CONFIG,
                        [f"run.output_dir={out / 'runs'}", f"run.log_every={log_every}",
                         f"run.max_steps={plan.pretrain_steps}", f"data.shards=[{data['pretrain']['shards']}]"],
                        out / "logs/pretrain_wav2vec2.log", env, quiet=True)
        try:
            st.timings["speech pre-train"] = round(launch.wait(), 1)
        finally:
            launch.kill()
        print("    " + loss_drop(out / "runs" / RUN_NAME / "metrics.jsonl"), flush=True)
        export = out / "export/wav2vec2-speech"
        ptft("export", str(out / "runs" / RUN_NAME), str(export))
        scratch = write_scratch(export, out / "export/wav2vec2-scratch")
        t0 = time.perf_counter()
        rows = run_grid(export, scratch, d, out / "finetune_speech", plan)
        st.timings["speech fine-tune"] = round(time.perf_counter() - t0, 1)
        md = table(rows, "spoken digits, test accuracy (held-out voices)")
        (out / "speech_comparison.json").write_text(json.dumps({
            "title": "Speech: wav2vec 2.0 pre-trained vs from scratch (spoken digits, held-out voices)",
            "rows": rows, "ranks": ranks, "pretrain_steps": plan.pretrain_steps, "data": data}, indent=1))
        (out / "speech_comparison.md").write_text(md + "\n")
    return {"rows": rows, "table": md}


def loss_drop(metrics: Path) -> str:
    """'wav2vec2: contrastive loss 3.12 -> 2.71 ...' from the first and last logged train losses."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    losses = [r["loss"] for r in rows if r.get("split") == "train" and isinstance(r.get("loss"), (int, float))]
    if len(losses) < 2:
        return f"wav2vec2: fewer than two logged losses in {metrics}"
    return f"wav2vec2: training loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} logs"
