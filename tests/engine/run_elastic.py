"""Run `Trainer` on a recipe with probes for the elastic-resume tests.

    python run_elastic.py RECIPE [OVERRIDES] [probe.stop_at=K] [probe.samples=DIR]
                          [probe.resave_to=DIR] [probe.slow_write=SECONDS]

stop_at: stop as on SIGTERM at step K (one save there, then exit), so a run ends at a
known step without changing max_steps (the LR schedule depends on it). samples: each
rank appends {"step", "rank", "index"} per batch (needs data.emit_sample_index=true).
resave_to: right after the resume, save the loaded state into DIR (a checkpoints dir),
to compare it with the checkpoint it came from. slow_write: sleep before each file of
an async save (a kill lands mid-write). A run stopped by TrainingStopped exits 3 with
its line, as `ptft pretrain` does.
"""
import json
import signal
import sys
import time
from pathlib import Path

from ptft_engine.config import load_run_config
from ptft_engine.engine import Trainer, TrainingStopped, async_save
from ptft_engine.engine.rank_exit import exit_rank


def main(argv: list[str]) -> int:
    argv = [a for a in argv if not a.startswith("--local_rank")]
    probes = dict(a[len("probe."):].split("=", 1) for a in argv[1:] if a.startswith("probe."))
    cfg = load_run_config(argv[0], [a for a in argv[1:] if not a.startswith("probe.")])
    if "slow_write" in probes:
        real_write, delay = async_save.write_file, float(probes["slow_write"])
        async_save.write_file = lambda *a, **k: (time.sleep(delay), real_write(*a, **k))
    trainer = Trainer(cfg)
    try:
        if "resave_to" in probes:
            own_dir, trainer.ckpt_dir = trainer.ckpt_dir, Path(probes["resave_to"])
            trainer.last_saved_step = -1
            trainer.save()
            trainer.settle_saves()
            trainer.ckpt_dir, trainer.last_saved_step = own_dir, trainer.state.step
        if "samples" in probes:
            out = Path(probes["samples"])
            out.mkdir(parents=True, exist_ok=True)
            real_next = trainer._next_batch

            def recorded():
                batch = real_next()
                with open(out / f"rank{trainer.rank}.jsonl", "a") as f:
                    f.write(json.dumps({"step": trainer.state.step + 1, "rank": trainer.rank,
                                        "index": batch["sample_index"].tolist()}) + "\n")
                return batch
            trainer._next_batch = recorded
        if "stop_at" in probes:
            stop_at, real_step = int(probes["stop_at"]), trainer._train_step

            def step():
                if trainer.state.step + 1 == stop_at:
                    trainer.stop.signum = signal.SIGTERM  # carried to every rank by the step's all-reduce
                return real_step()
            trainer._train_step = step
        trainer.fit()
    except TrainingStopped as exc:  # as `ptft pretrain` ends it
        print(f"ptft pretrain: {exc}", flush=True)
        return 3
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    exit_rank(main(sys.argv[1:]))  # as `python -m ptft_engine.cli` ends a launched rank
