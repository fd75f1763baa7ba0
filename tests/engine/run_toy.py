"""Run the engine on the toy objective, one or several trainings in one process group.

    python run_toy.py COMMON_OVERRIDES [:: JOB1_OVERRIDES :: JOB2_OVERRIDES ...]

Run under a launcher (or with RANK/WORLD_SIZE/MASTER_* set) for several ranks. Jobs run
one after another in the same processes, which spares the tests a start-up per training.
`toy.nan_at=1,2,3` injects NaN losses at those forward calls (on every rank);
`toy.slow_from=6` sleeps 0.5 s per forward from call 6 on (so a kill lands mid-run).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from toy import ToyCausalLM  # noqa: E402

from ptft_engine.config import load_run_config  # noqa: E402
from ptft_engine.engine import Trainer, TrainingStopped  # noqa: E402
from ptft_engine.engine.rank_exit import exit_rank  # noqa: E402


def run_job(overrides: list[str]) -> int:
    toy = dict(a[len("toy."):].split("=", 1) for a in overrides if a.startswith("toy."))
    overrides = [a for a in overrides if not a.startswith("toy.")]
    calls = [int(x) for x in toy["nan_at"].split(",")] if "nan_at" in toy else []
    slow = int(toy["slow_from"]) if "slow_from" in toy else None
    cfg = load_run_config(None, ["data.synthetic=true", *overrides])
    trainer = Trainer(cfg, objective_factory=lambda: ToyCausalLM(vocab_size=cfg.data.vocab_size, nan_at_calls=calls,
                                                                 slow_from_call=slow))
    try:
        trainer.fit()
    except TrainingStopped as exc:
        print(f"TrainingStopped: {exc}", flush=True)
        return 3
    return 0


def main(argv: list[str]) -> int:
    argv = [a for a in argv if not a.startswith("--local_rank")]
    chunks, current = [], []
    for a in argv:
        if a == "::":
            chunks.append(current)
            current = []
        else:
            current.append(a)
    chunks.append(current)
    common, jobs = chunks[0], chunks[1:] or [[]]
    rc = 0
    try:
        for job in jobs:
            rc = max(rc, run_job(common + job))
    finally:
        import deepspeed.comm
        import torch.distributed as dist
        if dist.is_initialized():
            deepspeed.comm.destroy_process_group()
    return rc


if __name__ == "__main__":
    exit_rank(main(sys.argv[1:]))  # as `python -m ptft_engine.cli` ends a launched rank
