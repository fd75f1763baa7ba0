"""Pre-train a model with DeepSpeed: masked LM, causal LM, SimCLR, CLIP, wav2vec 2.0 or HuBERT.

The run is described by a YAML recipe (configs/*.yaml); any key can be overridden on the
command line as dotted.key=value. The resolved config, the generated DeepSpeed config,
metrics.jsonl, TensorBoard events and checkpoints go to <run.output_dir>/<run.name>/.

A run directory belongs to one run: an existing run name needs --resume auto (continue
it) or --overwrite (move the old run aside to <name>.old-<time>); a lock keeps a second
live job out. SIGTERM/SIGINT (to a rank, the launcher or the process group) make every rank
finish its step, save one checkpoint together and exit with code 75 (EXIT_STOPPED); exit
code 3: stopped by repeated bad steps, a collective that timed out, or data it must not
train on (a remote source unreachable; with data.strict=true a bad sample): a checkpoint of
the last complete step is saved, and `--resume auto` trains the untrained batches first; 1: an error.

One process runs one rank. For several ranks or nodes start it under a launcher:
launch/local.sh (one node), launch/multinode.sh or launch/slurm.sbatch (several).
"""
from __future__ import annotations

import argparse
import os

EXAMPLE = """examples:
  ptft pretrain --config configs/clm_tiny.yaml run.max_steps=200 train.lr=1e-3
  ptft pretrain --config configs/mlm_tiny.yaml --resume auto deepspeed.zero_stage=2
  launch/local.sh 2 --config configs/clm_tiny.yaml        # two ranks on this machine"""


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="YAML recipe, e.g. configs/clm_tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=1e-3")
    p.add_argument("--resume", default=None, metavar="auto|PATH|none",
                   help="'auto': newest complete checkpoint of the run (if any); or a checkpoint directory")
    p.add_argument("--overwrite", action="store_true",
                   help="start anew in an existing run directory: the old run is renamed <name>.old-<time>")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    # the deepspeed launcher may pass it; LOCAL_RANK in the environment is what counts
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args) -> int:
    from ptft_engine.config import load_run_config

    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={args.resume}")
    cfg = load_run_config(args.config, overrides)
    if args.print_config:
        print(cfg.model_dump_json(indent=1))
        return 0

    from ptft_engine.engine import Trainer, TrainingStopped
    from ptft_engine.engine.checks import StartCheckError
    from ptft_engine.engine.signals import EXIT_STOPPED

    try:
        trainer = Trainer(cfg, overwrite=args.overwrite)
    except StartCheckError:
        if os.environ.get("RANK", "0") != "0":
            return 1  # every rank stops; rank 0 alone prints the line
        raise
    try:
        state = trainer.fit()
    except TrainingStopped as exc:
        print(f"ptft pretrain: {exc}", flush=True)
        return 3
    finally:
        trainer.close()
    if trainer.stopped_by is not None:
        return EXIT_STOPPED
    if trainer.rank == 0:
        print(f"done: {state.step} steps, {state.skipped} skipped; run directory {trainer.run_dir}", flush=True)
    return 0
