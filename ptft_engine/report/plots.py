"""Matplotlib figures (Agg backend: files only, no display needed)."""
from __future__ import annotations

from pathlib import Path

from ptft_engine.report.collect import FinetuneRun, PretrainRun


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_pretrain(run: PretrainRun, path: Path) -> Path:
    """2x2: loss (train + eval), learning rate, throughput, gradient norm — per step."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    (ax_loss, ax_lr), (ax_speed, ax_norm) = axes
    ax_loss.plot(*_series(run.train, "loss"), label="train")
    if run.eval:
        ax_loss.plot(*_series(run.eval, "loss"), "o-", label="eval (held out)")
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_lr.plot(*_series(run.train, "lr"), color="C1")
    ax_lr.set_title("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    speed_key = "tokens_per_s" if any("tokens_per_s" in r for r in run.train) else "samples_per_s"
    ax_speed.plot(*_series(run.train, speed_key), color="C2")
    ax_speed.set_title(speed_key.replace("_per_s", "/s") + " (all ranks)")
    ax_speed.set_ylim(bottom=0)
    ax_norm.plot(*_series(run.train, "grad_norm"), color="C3")
    ax_norm.set_title("gradient norm (before clipping)")
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    objective = (run.config.get("objective") or {}).get("name", "")
    fig.suptitle(f"pre-training: {run.name}" + (f" ({objective})" if objective else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_finetune(runs: list[FinetuneRun], path: Path, title: str) -> Path:
    """Validation metric and training loss per step, one line per run."""
    plt = _plt()
    fig, (ax_metric, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, run in enumerate(runs):
        metric = run.report.get("metric", "accuracy")
        hist = run.report["history"]
        color = f"C{i % 10}"
        ax_metric.plot(*_series(hist.get("val", []), metric), "o-", ms=3, color=color, label=run.name)
        ax_loss.plot(*_series(hist.get("train", []), "loss"), color=color, alpha=0.7, label=run.name)
    metric = runs[0].report.get("metric", "accuracy") if runs else "metric"
    ax_metric.set_title(f"validation {metric}")
    ax_loss.set_title("training loss")
    for ax in (ax_metric, ax_loss):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax_metric.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_comparison(rows: list[dict], path: Path,
                    title: str = "pre-trained vs from scratch (same architecture)") -> Path:
    """Grouped bars: test accuracy per label budget, one bar per recipe (scratch first);
    error bars where the rows carry a spread over seeds."""
    plt = _plt()
    fractions = sorted({r["labels_fraction"] for r in rows})
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    acc = {(r["recipe"], r["labels_fraction"]): r["test_accuracy"] for r in rows}
    spread = {(r["recipe"], r["labels_fraction"]): r["spread"] for r in rows
              if isinstance(r.get("spread"), (int, float))}
    width = 0.8 / len(recipes)
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(fractions) + 2, 0.3 * len(recipes) * len(fractions) + 2),
                                    4.5 + 0.15 * len(recipes)))
    for i, name in enumerate(recipes):
        have = [(j, f) for j, f in enumerate(fractions) if (name, f) in acc]  # a recipe may skip a budget
        xs = [j + (i - (len(recipes) - 1) / 2) * width for j, _ in have]
        ys = [acc[(name, f)] for _, f in have]
        err = [spread.get((name, f), 0.0) for _, f in have] if spread else None
        bars = ax.bar(xs, ys, width, yerr=err, label=name, color="0.6" if name.startswith("scratch") else f"C{i}")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    labels = {r["labels_fraction"]: r.get("train_labels") for r in rows}
    ax.set_xticks(range(len(fractions)),
                  [f"{f * 100:g} % labels" + (f"\n({labels[f]} labelled)" if labels.get(f) else "") for f in fractions])
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)  # below: many recipes cover bars
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
