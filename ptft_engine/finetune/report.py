"""End-of-run report: report.json (config, history, best metrics) and curves.png
(training loss and validation metrics per step), drawn with matplotlib's Agg backend."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(out_dir: str | Path, report: dict[str, Any], metric: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=1, default=str))
    png_path = out_dir / "curves.png"
    plot_curves(report["history"], metric, png_path)
    return [json_path, png_path]


def plot_curves(history: dict[str, list[dict[str, float]]], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: render to file only
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    train = history.get("train", [])
    val = history.get("val", [])
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", alpha=0.8)
    if val:
        ax_loss.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="validation loss")
        ax_metric.plot([r["step"] for r in val], [r.get(metric, float("nan")) for r in val], "o-", color="C2",
                       label=f"validation {metric}")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_metric.set_xlabel("step")
    ax_metric.set_title(metric)
    ax_metric.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
