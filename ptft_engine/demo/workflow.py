"""The demo's stages in order: data -> shards -> tokenizer -> pre-training on N ranks
(SimCLR on digits; masked LM and causal LM on docstrings) -> export -> fine-tuning grids
(digits in this process, text in a second one beside it) -> tables -> report.

Each evidence table is a (bundled data, pre-training, grid) strand; a new one adds its
data in stage 1, its launch in stage 4, its grid in stage 6 and its table in TABLES. Speech
(demo/speech.py) is still a stage of its own (7), run before the report."""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ptft_engine.cli import UserError
from ptft_engine.demo import compare, data, speech, text_compare, text_data
from ptft_engine.demo.stages import REPO, Grid, Launch, Stages, ptft

CONFIGS = REPO / "configs" / "demo"
MADE_HERE = ("bundled", "shards", "tokenizer", "runs", "export", "finetune", "finetune_text", "finetune_speech", "logs",
             "report")


@dataclass(frozen=True)
class Plan:
    simclr_steps: int
    log_every: int
    recipes: tuple[str, ...]
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    epochs: int                 # at 100 % labels; smaller budgets take more
    finetune_max_steps: int | None
    # text: docstring corpus, masked-LM and causal-LM pre-training, its own grid
    text_corpus_chars: int | None
    text_stdlib: bool
    lm_steps: dict[str, int]    # pre-training steps of "mlm" and "clm"
    text_recipes: tuple[str, ...]
    # at 100 % labels only these (the goal is about few labels; each 100 % run costs what 2-3 at 10 % do,
    # and the full demo has to stay within 10 minutes on 2 cores)
    text_full_label_recipes: tuple[str, ...]
    text_seeds: tuple[int, ...]
    text_steps_scale: float     # times text_compare.STEPS
    speech: speech.SpeechPlan   # the speech table's own stage (demo/speech.py)


TEXT_PER_CLASS = {"train": 400, "val": 50, "test": 150}  # docstrings per package (8 packages)
QUICK = Plan(simclr_steps=150, log_every=5, recipes=("scratch", "probe"), fractions=(0.01, 0.1, 1.0), seeds=(0,),
             epochs=4, finetune_max_steps=None, text_corpus_chars=2_000_000, text_stdlib=False,
             lm_steps={"mlm": 40, "clm": 40},
             text_recipes=("scratch", "small_lr", "clm_small_lr"), text_full_label_recipes=("scratch", "small_lr",
             "clm_small_lr"), text_seeds=(0,), text_steps_scale=0.3,
             speech=speech.QUICK)
FULL = Plan(simclr_steps=800, log_every=10, recipes=("scratch", "probe", "full", "lora"),
            fractions=(0.01, 0.1, 1.0), seeds=(0, 1), epochs=10, finetune_max_steps=None,
            text_corpus_chars=12_000_000, text_stdlib=True,
            lm_steps={"mlm": 1500, "clm": 750},
            # all but two CLM rows (small LR; last-token pooling, which lost to the mean: README), for time
            text_recipes=tuple(k for k in text_compare.RECIPES if k not in ("clm_small_lr", "clm_last")),
            text_full_label_recipes=("scratch", "large_lr", "clm_scratch", "clm_large_lr"),
            text_seeds=(0, 1, 2), text_steps_scale=1.0, speech=speech.FULL)


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
    digits, text, shards = out / "bundled/digits", out / "bundled/docstrings", out / "shards"

    with st.stage("prepare bundled data", "scikit-learn digits as PNG folders; docstrings of installed packages"):
        split = data.write_digits(digits)
        task = text_data.write_text_task(text, TEXT_PER_CLASS, packages=text_data.PACKAGES,
                                         corpus_chars=plan.text_corpus_chars, stdlib=plan.text_stdlib)
        print(f"    digits: {split} images")
        print(f"    docstrings: which of {len(text_data.PACKAGES)} packages ({', '.join(text_data.PACKAGES)}); "
              f"labelled {task['train']}/{task['val']}/{task['test']} (train/val/test), from source files kept out "
              f"of the pre-training corpus ({task['corpus_docs']:,} texts, {task['corpus_chars'] / 1e6:.1f} MB)")

    with st.stage("write WebDataset shards", "labels are not used for pre-training"):
        ptft("shard", str(digits / "train"), "--format", "images", "--output", str(shards / "digits/train"),
             "--shard-size", "64KB", "--no-progress")
        ptft("shard", str(digits / "val"), "--format", "images", "--output", str(shards / "digits/val"),
             "--no-progress")
        for name in ("corpus", "corpus_val"):
            ptft("shard", str(text / f"{name}.jsonl"), "--format", "jsonl", "--text-field", "text",
                 "--output", str(shards / "text" / name), "--shard-size", "2MB", "--no-progress")

    with st.stage("train a WordPiece tokenizer", "on the pre-training corpus"):
        ptft("tokenizer", "train", str(text / "corpus.jsonl"), "--kind", "wordpiece", "--vocab-size", str(text_vocab()),
             "--lowercase", "--output", str(out / "tokenizer"))
        tokens = text_data.count_tokens(text / "corpus.jsonl", out / "tokenizer/tokenizer.json")
        print(f"    pre-training corpus: {tokens:,} tokens")

    common = [f"run.output_dir={out / 'runs'}", f"run.log_every={plan.log_every}"]
    lm = [*common, f"data.shards=[{shards / 'text/corpus'}]", f"data.eval_shards=[{shards / 'text/corpus_val'}]",
          f"data.tokenizer={out / 'tokenizer/tokenizer.json'}", "run.progress_bar=false"]
    with st.stage("pre-train", f"SimCLR (tiny ViT, digits, {plan.simclr_steps} steps), masked LM (small BERT) and "
                               f"causal LM (small GPT) on docstrings ({plan.lm_steps['mlm']} and "
                               f"{plan.lm_steps['clm']} steps), side by side, "
                               f"DeepSpeed ZeRO-2 on {device} each"):
        launches = [Launch(name, ranks, CONFIGS / f"{name}_docstrings.yaml",
                           [*lm, f"run.max_steps={steps}", f"run.eval_every={max(1, steps // 6)}"],
                           out / f"logs/pretrain_{name}.log", env, quiet=True) for name, steps in plan.lm_steps.items()]
        try:
            simclr = Launch("simclr", ranks, CONFIGS / "simclr_digits.yaml",
                            [*common, f"run.max_steps={plan.simclr_steps}", f"data.shards=[{shards / 'digits/train'}]",
                             f"data.eval_shards=[{shards / 'digits/val'}]", f"run.eval_every={plan.simclr_steps}"],
                            out / "logs/pretrain_simclr.log", env)
            st.timings["pre-train simclr"] = round(simclr.wait(), 1)
            for launch in launches:
                st.timings[f"pre-train {launch.tag}"] = round(launch.wait(), 1)
        finally:
            for launch in launches:
                launch.kill()
        for name in ("mlm", "clm"):
            print("    " + _validation_drop(out / f"runs/{name}_docstrings/metrics.jsonl", name))

    with st.stage("export", "ZeRO checkpoints -> safetensors + config.json (+ tokenizer, HF BERT / GPT-2 layout)"):
        ptft("export", str(out / "runs/simclr_digits"), str(out / "export/simclr-vit"))
        ptft("export", str(out / "runs/mlm_docstrings"), str(out / "export/mlm-bert"))
        ptft("export", str(out / "runs/clm_docstrings"), str(out / "export/clm-gpt2"))

    n_runs = len(plan.fractions) * len(plan.recipes) * len(plan.seeds)
    n_text = len(plan.text_seeds) * sum(len(plan.text_recipes if f < 1 else plan.text_full_label_recipes)
                                        for f in plan.fractions)
    with st.stage("fine-tune", f"digits: {n_runs} runs ({', '.join(compare.RECIPES[r].name for r in plan.recipes)} "
                               f"x {len(plan.fractions)} label budgets x {len(plan.seeds)} seed(s)); beside it, "
                               f"docstrings: {n_text} runs + the bag-of-words baseline"):
        text_grid = Grid("text", [sys.executable, "-m", "ptft_engine.demo.text_compare", "--data", str(text),
                                  "--mlm", str(out / "export/mlm-bert"), "--clm", str(out / "export/clm-gpt2"),
                                  "--out", str(out / "finetune_text"), "--recipes", ",".join(plan.text_recipes),
                                  "--fractions", ",".join(f"{f:g}" for f in plan.fractions),
                                  "--seeds", ",".join(map(str, plan.text_seeds)),
                                  "--steps-scale", f"{plan.text_steps_scale:g}",
                                  "--full-label-recipes", ",".join(plan.text_full_label_recipes),
                                  "--jobs", "1" if on_gpu else "2"],
                         out / "logs/finetune_text.log", env)
        try:
            rows = compare.run_grid(out / "export/simclr-vit", digits, out / "finetune", recipes=list(plan.recipes),
                                    fractions=list(plan.fractions), seeds=list(plan.seeds), epochs=plan.epochs,
                                    max_steps=plan.finetune_max_steps)
            st.timings["fine-tune text"] = round(text_grid.wait(), 1)
        finally:
            text_grid.kill()
        md = compare.table(rows)
        (out / "comparison.json").write_text(json.dumps({"rows": rows, "ranks": ranks, "device": device,
                                                          "simclr_steps": plan.simclr_steps}, indent=1))
        (out / "comparison.md").write_text(md + "\n")
        text_result = json.loads((out / "finetune_text/text_comparison.json").read_text())
        text_md = text_compare.table(text_result["rows"])
        (out / "text_comparison.json").write_text(json.dumps({
            **text_result, "title": "Docstrings: pre-trained (masked LM, causal LM) vs from scratch",
            "goal": text_compare.goal_lines(text_result["rows"]), "corpus_tokens": tokens, "lm_steps": plan.lm_steps,
            "task": task}, indent=1))
        (out / "text_comparison.md").write_text(text_md + "\n")

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
    print(f"\nDocstrings, which package (8 classes), test accuracy on {task['test']} held-out docstrings, "
          f"mean ± spread over {len(plan.text_seeds)} seed(s) (gain over the scratch model of the same "
          f"architecture in brackets); pre-trained on {tokens:,} tokens:\n")
    print(text_md)
    print("\nSpeech: HuBERT pre-trained vs from scratch, same tiny wav2vec 2.0 model, spoken digits of voices never "
          "heard in fine-tuning:\n")
    print(spoken["table"])
    print(f"\nEverything is in {out}/: shards, tokenizer, runs (checkpoints, metrics.jsonl), export, finetune, "
          f"finetune_text, finetune_speech, report/report.html. Took {timings['total_s']:.0f} s.")
    return {"rows": rows, "text_rows": text_result["rows"], "speech_rows": spoken["rows"], "timings": timings}


def text_vocab() -> int:
    """The demo's one tokenizer size: model.vocab_size of the masked-LM and causal-LM configs."""
    import yaml

    sizes = {yaml.safe_load((CONFIGS / f"{name}_docstrings.yaml").read_text())["model"]["vocab_size"]
             for name in ("mlm", "clm")}
    if len(sizes) != 1:
        raise UserError(f"{CONFIGS}/{{mlm,clm}}_docstrings.yaml: model.vocab_size differs ({sorted(sizes)}); "
                        "the demo trains one tokenizer for both")
    return sizes.pop()


def _validation_drop(metrics: Path, tag: str) -> str:
    """'mlm: validation loss 8.1 -> 4.2 (perplexity 3300 -> 67)' from a run's metrics.jsonl."""
    import math

    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    losses = [r["loss"] for r in rows if r.get("split") == "eval" and isinstance(r.get("loss"), (int, float))]
    if len(losses) < 2:
        return f"{tag}: fewer than two validation losses in {metrics}"
    return (f"{tag}: validation loss {losses[0]:.2f} -> {losses[-1]:.2f} "
            f"(perplexity {math.exp(losses[0]):,.0f} -> {math.exp(losses[-1]):,.0f}) over {len(losses)} evaluations")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
