"""Run the whole workflow on bundled data (no download): shard, tokenizer, pre-train on
several ranks with DeepSpeed ZeRO, export, fine-tune with 1 %, 10 % and 100 % of the
labels against the same model from scratch, print the comparison and write a report.

Data: scikit-learn's 8x8 digits (SimCLR, then digit classification) and the docstrings of
the standard library and of installed packages (WordPiece tokenizer, masked LM and causal
LM, then: which package does a docstring come from), and speech made offline by eSpeak NG
(HuBERT on k-means targets, then: which digit is spoken, by voices never heard). Pre-training runs
through the engine's launcher (launch/local.sh): on CPU 2 ranks with gloo, on a GPU
machine one rank per GPU. On 2 idle CPU cores --quick took 1 min 32 s, the full run
8 min 54 s. Everything goes under --out; `ptft report DIR` redraws the plots.
"""
from __future__ import annotations

from ptft_engine.cli import UserError

EXAMPLE = """Examples:
  ptft demo --quick                 # about 2 minutes on 2 CPU cores (all three tables)
  ptft demo --out demo_out          # the full run (about 9 minutes on 2 CPU cores)
  ptft demo --ranks 4 --out /tmp/d  # more ranks (GPUs when present)
Then: open demo_out/report/report.html; ptft export/finetune/report --help for the parts."""


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help="smallest settings, finishes in about 2 minutes")
    p.add_argument("--out", default="demo_out", help="folder for everything the demo makes (default demo_out)")
    p.add_argument("--ranks", type=int, default=None,
                   help="pre-training ranks (default: 2 on CPU, one per GPU when GPUs are present)")


def run(args) -> int:
    from pathlib import Path

    from ptft_engine.demo.workflow import FULL, QUICK, default_ranks, run_demo

    ranks = args.ranks if args.ranks is not None else default_ranks()
    if ranks < 1:
        raise UserError(f"--ranks {ranks}: need at least 1 rank")
    out = Path(args.out).resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out}: exists and is not a directory; pick another folder")
    run_demo(out, QUICK if args.quick else FULL, ranks)
    return 0
