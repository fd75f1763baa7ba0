"""The demo's stages in order: data -> shards -> tokenizer -> pre-training on N ranks
(SimCLR on digits, MLM on text) -> export -> fine-tuning grid -> table -> report."""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ptft_engine.demo import compare, data, speech
from ptft_engine.demo.stages import REPO, Launch, Stages, ptft

CONFIGS = REPO / "configs" / "demo"
MADE_HERE = ("bundled", "shards", "tokenizer", "runs", "export", "finetune", "finetune_speech", "logs", "report")


@dataclass(frozen=True)
class Plan:
    simclr_steps: int
    mlm_steps: int
    log_every: int
    recipes: tuple[str, ...]
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    epochs: int                 # at 100 % labels; smaller budgets take more
    finetune_max_steps: int | None
    speech: speech.SpeechPlan   # the speech table's stage (demo/speech.py)


QUICK = Plan(simclr_steps=150, mlm_steps=20, log_every=5, recipes=("scratch", "probe"),
             fractions=(0.01, 0.1, 1.0), seeds=(0,), epochs=4, finetune_max_steps=None, speech=speech.QUICK)
FULL = Plan(simclr_steps=800, mlm_steps=200, log_every=10, recipes=("scratch", "probe", "full", "lora"),
            fractions=(0.01, 0.1, 1.0), seeds=(0, 1), epochs=10, finetune_max_steps=None, speech=speech.FULL)


def default_ranks() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 2


def run_demo(out: Path, plan: Plan, ranks: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for name in MADE_HERE:  # a rerun starts clean (metrics files append, shards refuse to overwrite)
        shutil.rmtree(out / name, ignore_errors=True)
    on_gpu = _cuda()
    env = {} if on_gpu else {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    os.environ.update({k: v for k, v in env.items() if k == "DS_ACCELERATOR"})  # no accelerator-probe warning
    logging.getLogger().setLevel(logging.WARNING)  # the stages print what matters; INFO lines are noise here
    if not on_gpu:
        import torch

        torch.set_num_threads(1)  # tiny models: a second thread only spins against the other processes
    device = f"{ranks} GPU rank(s)" if on_gpu else f"{ranks} CPU ranks (gloo)"
    st = Stages(total=8, out=out)
    digits, text, shards = out / "bundled/digits", out / "bundled/text", out / "shards"

    with st.stage("prepare bundled data", "scikit-learn digits as PNG folders, Python's help texts as .txt"):
        split = data.write_digits(digits)
        corpus = data.write_text_corpus(text)
        print(f"    digits: {split} images; text: {corpus['files']} help topics, {corpus['chars']:,} characters")

    with st.stage("write WebDataset shards", "labels are not used for pre-training"):
        ptft("shard", str(digits / "train"), "--format", "images", "--output", str(shards / "digits/train"),
             "--shard-size", "64KB", "--no-progress")
        ptft("shard", str(digits / "val"), "--format", "images", "--output", str(shards / "digits/val"), "--no-progress")
        ptft("shard", str(text), "--format", "text", "--text-unit", "paragraph", "--output", str(shards / "text"),
             "--shard-size", "256KB", "--no-progress")

    with st.stage("train a WordPiece tokenizer", "on the text shards"):
        ptft("tokenizer", "train", str(shards / "text"), "--kind", "wordpiece", "--vocab-size", "2048",
             "--lowercase", "--output", str(out / "tokenizer"))

    common = [f"run.output_dir={out / 'runs'}", f"run.log_every={plan.log_every}"]
    with st.stage("pre-train", f"SimCLR (tiny ViT, digits, {plan.simclr_steps} steps) and masked LM (tiny BERT, "
                               f"text, {plan.mlm_steps} steps) side by side, DeepSpeed ZeRO-2 on {device} each"):
        mlm = Launch("mlm", ranks, CONFIGS / "mlm_text.yaml",
                     [*common, f"run.max_steps={plan.mlm_steps}", f"data.shards=[{shards / 'text'}]",
                      f"data.tokenizer={out / 'tokenizer/tokenizer.json'}", "run.progress_bar=false"],
                     out / "logs/pretrain_mlm.log", env, quiet=True)
        try:
            simclr = Launch("simclr", ranks, CONFIGS / "simclr_digits.yaml",
                            [*common, f"run.max_steps={plan.simclr_steps}", f"data.shards=[{shards / 'digits/train'}]",
                             f"data.eval_shards=[{shards / 'digits/val'}]", f"run.eval_every={plan.simclr_steps}"],
                            out / "logs/pretrain_simclr.log", env)
            st.timings["pre-train simclr"] = round(simclr.wait(), 1)
            st.timings["pre-train mlm"] = round(mlm.wait(), 1)
        finally:
            mlm.kill()

    with st.stage("export", "ZeRO checkpoints -> safetensors + config.json (+ tokenizer, HF BERT layout)"):
        ptft("export", str(out / "runs/simclr_digits"), str(out / "export/simclr-vit"))
        ptft("export", str(out / "runs/mlm_text"), str(out / "export/mlm-bert"))

    n_runs = len(plan.fractions) * len(plan.recipes) * len(plan.seeds)
    with st.stage("fine-tune", f"{n_runs} runs: {', '.join(compare.RECIPES[r].name for r in plan.recipes)} "
                               f"x {len(plan.fractions)} label budgets x {len(plan.seeds)} seed(s)"):
        rows = compare.run_grid(out / "export/simclr-vit", digits, out / "finetune", recipes=list(plan.recipes),
                                fractions=list(plan.fractions), seeds=list(plan.seeds), epochs=plan.epochs,
                                max_steps=plan.finetune_max_steps)
        md = compare.table(rows)
        (out / "comparison.json").write_text(json.dumps({"rows": rows, "ranks": ranks, "device": device,
                                                          "simclr_steps": plan.simclr_steps}, indent=1))
        (out / "comparison.md").write_text(md + "\n")

    spoken = speech.run_speech(st, out, plan.speech, ranks, env, plan.log_every)
    with st.stage("report", "plots and a summary of every run"):
        from ptft_engine.report import build_report

        timings = st.save()
        paths = build_report(out, extra={"demo timings (s)": timings})
        print(f"    {len(paths)} files in {out / 'report'}")
    timings = st.save()
    print("\nPre-trained vs from scratch, same ViT, test accuracy on held-out digits "
          "(gain over scratch in brackets):\n")
    print(md)
    print("\nSpeech: wav2vec 2.0 pre-trained vs from scratch, same tiny model, spoken digits of voices never heard "
          "in fine-tuning:\n")
    print(spoken["table"])
    print(f"\nEverything is in {out}/: shards, tokenizer, runs (checkpoints, metrics.jsonl), export, finetune, "
          f"report/report.html. Took {timings['total_s']:.0f} s.")
    return {"rows": rows, "speech_rows": spoken["rows"], "timings": timings}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
