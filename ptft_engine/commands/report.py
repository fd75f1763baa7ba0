"""Draw PNG plots of a run folder and write a short summary next to them.

RUN_DIR may be one pre-training run (metrics.jsonl: loss, learning rate, tokens/s or
samples/s, gradient norm, held-out loss per step), a fine-tuning output (report.json:
validation curves), a `ptft demo` folder (all of those plus pre-trained-vs-scratch
bars), or any folder above them. Writes RUN_DIR/report/*.png, report.md and a
self-contained report.html (images embedded).
"""
from __future__ import annotations

EXAMPLE = """Examples:
  ptft report runs/mlm_tiny
  ptft report demo_out                  # the demo's runs, fine-tunes and comparison
  ptft report finetune_out/sentiment --out reports/sentiment"""


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a run directory, fine-tuning output, demo folder, or a folder above them")
    p.add_argument("--out", default=None, help="where to write (default: RUN_DIR/report)")


def run(args) -> int:
    from ptft_engine.report import build_report

    paths = build_report(args.run_dir, args.out)
    for path in paths:
        print(path)
    return 0
