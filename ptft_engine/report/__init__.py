"""`ptft report RUN_DIR`: PNG plots and a self-contained summary of what a folder holds.

It finds, anywhere under RUN_DIR: pre-training runs (metrics.jsonl: loss, lr, throughput,
gradient norm, evaluation loss per step), fine-tuning runs (report.json: validation
curves) and a demo comparison (comparison.json: pre-trained vs scratch bars), and
writes RUN_DIR/report/*.png, report.md and report.html (images embedded).
"""
from ptft_engine.report.build import build_report

__all__ = ["build_report"]
