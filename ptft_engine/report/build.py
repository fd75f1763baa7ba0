"""Collect the runs under a folder, draw them, and write report.md + report.html.

The summary is kept as a list of blocks (heading, text, table, image) rendered twice:
Markdown that links the PNGs next to it, and HTML with the PNGs embedded (one file
to mail around).
"""
from __future__ import annotations

import base64
import html
import json
import statistics
import time
from pathlib import Path

from ptft_engine.report import plots
from ptft_engine.report.collect import (
    FinetuneRun,
    PretrainRun,
    find_comparisons,
    find_finetune_runs,
    find_pretrain_runs,
)

Block = tuple  # ("h2", text) | ("p", text) | ("table", header, rows) | ("img", path, caption)


def build_report(root: str | Path, out_dir: str | Path | None = None, extra: dict | None = None) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory "
                                "(give a run directory, a fine-tuning output or a demo --out)")
    out = Path(out_dir) if out_dir else root / "report"
    pre, fine, comparisons = find_pretrain_runs(root), find_finetune_runs(root), find_comparisons(root)
    comparison = comparisons[0][1] if comparisons else None  # the first one groups the fine-tuning curves
    if not (pre or fine or comparison):
        raise FileNotFoundError(f"{root}: nothing to report — no metrics.jsonl (pre-training), report.json "
                                "(fine-tuning) or comparison.json (demo) below it")
    out.mkdir(parents=True, exist_ok=True)
    blocks: list[Block] = [("h1", f"Run report: {root.name}"),
                           ("p", f"{root.resolve()} — written {time.strftime('%Y-%m-%d %H:%M:%S')}")]
    for name, data in comparisons:
        blocks += _comparison(root, name, data, out)
    for run in pre:
        blocks += _pretrain(run, root, out)
    if fine:
        blocks += _finetune(fine, comparison, root, out)
    if extra:
        blocks.append(("h2", "Details"))
        blocks += [("p", f"{k}: {json.dumps(v)}") for k, v in extra.items()]
    md = out / "report.md"
    md.write_text(_markdown(blocks, out))
    page = out / "report.html"
    page.write_text(_html(blocks))
    return sorted(out.glob("*.png")) + [md, page]


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def _comparison(root: Path, name: str, comparison: dict, out: Path) -> list[Block]:
    rows = comparison["rows"]
    title = comparison.get("title", "Pre-trained vs from scratch")
    png = plots.plot_comparison(rows, out / f"{name}.png", title=title)
    blocks: list[Block] = [("h2", title)]
    md_table = root / f"{name}.md"
    fractions = sorted({r["labels_fraction"] for r in rows})
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    by = {(r["recipe"], r["labels_fraction"]): r for r in rows}
    header = ["test accuracy"] + [f"{f * 100:g} % labels" for f in fractions]
    table = [[recipe] + [_accuracy(by[(recipe, f)]) if (recipe, f) in by else "–" for f in fractions]
             for recipe in recipes]
    blocks.append(("table", header, table))
    if md_table.is_file():
        blocks.append(("p", f"(also in {md_table.name}, with gains over scratch)"))
    for goal in (comparison.get("goal") or "").split("\n\n"):  # one paragraph per goal
        if goal:
            blocks.append(("p", goal))
    blocks.append(("img", png, "test accuracy per label budget"))
    return blocks


def _accuracy(row: dict) -> str:
    """mean, and ± the spread over seeds where the row has one"""
    spread = row.get("spread")
    return f"{row['test_accuracy']:.3f}" + (f" ± {spread:.3f}" if isinstance(spread, (int, float)) else "")


def _pretrain(run: PretrainRun, root: Path, out: Path) -> list[Block]:
    png = plots.plot_pretrain(run, out / f"pretrain_{run.name}.png")
    losses = [r["loss"] for r in run.train if isinstance(r.get("loss"), (int, float))]
    speed_key = "tokens_per_s" if any("tokens_per_s" in r for r in run.train) else "samples_per_s"
    speeds = [r[speed_key] for r in run.train if isinstance(r.get(speed_key), (int, float))]
    steps = max((r.get("step", 0) for r in run.train + run.eval), default=0)
    facts = [["steps", str(steps)],
             ["objective", str((run.config.get("objective") or {}).get("name", "?"))],
             ["loss first → last logged", f"{losses[0]:.4f} → {losses[-1]:.4f}" if losses else "–"],
             ["held-out loss (last)", f"{run.eval[-1]['loss']:.4f}" if run.eval else "–"],
             [f"{speed_key.replace('_per_s', '/s')} (median)", f"{statistics.median(speeds):,.0f}" if speeds else "–"],
             ["ZeRO stage", str((run.config.get("deepspeed") or {}).get("zero_stage", "?"))]]
    return [("h2", f"Pre-training: {run.name} ({_rel(run.path, root)})"), ("table", ["", ""], facts),
            ("img", png, "loss, learning rate, throughput, gradient norm per step")]


def _finetune(runs: list[FinetuneRun], comparison: dict | None, root: Path, out: Path) -> list[Block]:
    blocks: list[Block] = [("h2", "Fine-tuning")]
    by_dir = {str(r.path): r for r in runs}
    groups: list[tuple[str, list[FinetuneRun]]] = []
    if comparison:  # one figure per label budget: the recipes side by side (first seed)
        for fraction in sorted({r["labels_fraction"] for r in comparison["rows"]}):
            group = []
            for row in comparison["rows"]:
                if row["labels_fraction"] == fraction and row.get("dirs") and row["dirs"][0] in by_dir:
                    run = by_dir[row["dirs"][0]]
                    group.append(FinetuneRun(run.path, row["recipe"], run.report))
            if group:
                groups.append((f"{fraction * 100:g} % labels", group))
    if not groups:
        groups = [(f"runs {i + 1}-{i + len(runs[i:i + 8])}", runs[i:i + 8]) for i in range(0, len(runs), 8)]
    for n, (title, group) in enumerate(groups):
        png = plots.plot_finetune(group, out / f"finetune_{n}.png", f"fine-tuning, {title}")
        blocks.append(("img", png, f"validation curves, {title}"))
    table = []
    for r in runs:
        metric = r.report.get("metric", "accuracy")
        best = (r.report.get("best") or {}).get(metric)
        table.append([_rel(r.path, root), metric, f"{best:.4f}" if isinstance(best, (int, float)) else "–",
                      str(r.report.get("steps", "?")),
                      str((r.report.get("params") or {}).get("trainable_params", "?"))])
    blocks.append(("table", ["run", "metric", "best (validation)", "steps", "trainable params"], table))
    return blocks


def _markdown(blocks: list[Block], out: Path) -> str:
    lines: list[str] = []
    for b in blocks:
        if b[0] == "h1":
            lines += [f"# {b[1]}", ""]
        elif b[0] == "h2":
            lines += [f"## {b[1]}", ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "table":
            lines += ["| " + " | ".join(b[1]) + " |", "|" + "---|" * len(b[1])]
            lines += ["| " + " | ".join(row) + " |" for row in b[2]] + [""]
        elif b[0] == "img":
            lines += [f"![{b[2]}]({_rel(b[1], out)})", ""]
    return "\n".join(lines)


def _html(blocks: list[Block]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>ptft report</title><style>"
             "body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
             "img{max-width:100%}</style></head><body>"]
    e = html.escape
    for b in blocks:
        if b[0] in ("h1", "h2"):
            parts.append(f"<{b[0]}>{e(b[1])}</{b[0]}>")
        elif b[0] == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b[2])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif b[0] == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            parts.append(f"<figure><img alt='{e(b[2])}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{e(b[2])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
