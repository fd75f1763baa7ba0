"""One rank, in this process: learning, eval, logs, bad steps, signals, interrupted saves."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch
from toy import ToyCausalLM

from ptft_engine.config import load_run_config
from ptft_engine.engine import Trainer, TrainingStopped, checkpoint

pytestmark = pytest.mark.slow  # training runs through DeepSpeed (the save/kill unit tests are test_checkpoint_kill.py)

BASE = ["data.synthetic=true", "data.batch_size=4", "data.seq_len=16", "run.log_every=1",
        "run.progress_bar=false", "train.lr=1e-2", "train.warmup_steps=2"]


def make(tmp_path, *overrides, **toy):
    cfg = load_run_config(None, [*BASE, f"run.output_dir={tmp_path}", "run.name=t", *overrides])
    return Trainer(cfg, objective_factory=lambda: ToyCausalLM(vocab_size=cfg.data.vocab_size, **toy))


def records(tmp_path, split="train"):
    lines = (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def run(trainer):
    try:
        return trainer.fit()
    finally:
        trainer.close()


def test_loss_falls_with_eval_logs_and_saved_config(tmp_path):
    trainer = make(tmp_path, "run.max_steps=30", "run.eval_every=10", "run.eval_steps=3")
    trainer_cfg = trainer.cfg
    t0 = time.perf_counter()
    state = run(trainer)
    elapsed = time.perf_counter() - t0
    train = records(tmp_path)
    assert state.step == 30 and len(train) == 30
    assert sum(r["loss"] for r in train[-5:]) / 5 < train[0]["loss"] - 1.0
    assert all(r["grad_norm"] > 0 and "mem_rss_gb" in r for r in train)
    # each step's 4 x 15 target tokens at its logged rate: the steps' times fit inside the run
    step_times = [4 * 15 / r["tokens_per_s"] for r in train]
    assert 0 < sum(step_times) < elapsed, (sum(step_times), elapsed)
    evals = records(tmp_path, "eval")
    assert [r["step"] for r in evals] == [10, 20, 30] and evals[-1]["loss"] < evals[0]["loss"]
    run_dir = tmp_path / "t"
    assert load_run_config(run_dir / "config.yaml") == trainer_cfg  # the resolved config, reloadable
    assert json.loads((run_dir / "deepspeed_config.json").read_text())["train_batch_size"] == 4
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert checkpoint.find_latest(run_dir / "checkpoints").name == "step-00000030"


def test_bad_steps_are_skipped_then_the_run_saves_and_stops(tmp_path):
    # one NaN at step 3 is skipped; three in a row (steps 6-8) stop the run with a checkpoint
    trainer = make(tmp_path, "run.max_steps=20", "bad_steps.max_consecutive=3", nan_at_calls={3, 6, 7, 8})
    weights = {}
    orig_step = trainer._train_step

    def spy():
        before = [p.detach().clone() for p in trainer.objective.parameters()]
        out = orig_step()
        weights[trainer.state.step + 1] = (out["bad"], all(torch.equal(a, b) for a, b in
                                                            zip(before, trainer.objective.parameters())))
        return out
    trainer._train_step = spy
    with pytest.raises(TrainingStopped, match="stopped at step 8: 3 steps in a row had a non-finite loss"):
        run(trainer)
    assert weights[3] == (True, True) and weights[4] == (False, False)  # skipped step: no update
    assert records(tmp_path)[-1]["skipped_steps"] == 4
    assert checkpoint.find_latest(tmp_path / "t" / "checkpoints").name == "step-00000008"


def test_bad_steps_can_roll_back_and_skip_the_batches(tmp_path):
    trainer = make(tmp_path, "run.max_steps=12", "checkpoint.every=5", "bad_steps.max_consecutive=2",
                   "bad_steps.action=rollback", nan_at_calls={7, 8})
    state = run(trainer)
    assert state.step == 12 and state.rollbacks == 1
    # after the rollback the stream continued past the bad batches: 12 steps + 3 replayed = 15 batches
    assert trainer.loader.state_dict()["position"] == 15


class _SignalAt(ToyCausalLM):
    def forward(self, batch):
        out = super().forward(batch)
        if self.calls == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return out


def test_sigterm_saves_then_resume_continues(tmp_path):
    cfg = load_run_config(None, [*BASE, f"run.output_dir={tmp_path}", "run.name=t", "run.max_steps=8"])
    state = run(Trainer(cfg, objective_factory=lambda: _SignalAt(vocab_size=128)))
    assert state.step == 4
    assert checkpoint.find_latest(tmp_path / "t" / "checkpoints").name == "step-00000004"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    state = run(make(tmp_path, "run.max_steps=8", "checkpoint.resume=auto"))
    assert state.step == 8 and [r["step"] for r in records(tmp_path)] == list(range(1, 9))


def test_a_kill_during_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    # the sync path (async: test_elastic.py)
    trainer = make(tmp_path, "run.max_steps=6", "checkpoint.every=3", "checkpoint.async_save=false")
    real_save = torch.save

    def dies_on_second_checkpoint(obj, path, *a, **k):
        if "tmp-step-00000006" in str(path) and str(path).endswith("rank00000.pt"):
            raise KeyboardInterrupt("killed while saving")  # DeepSpeed's files are half there
        return real_save(obj, path, *a, **k)
    monkeypatch.setattr(checkpoint.torch, "save", dies_on_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run(trainer)
    ckpts = tmp_path / "t" / "checkpoints"
    assert (ckpts / "tmp-step-00000006").is_dir()
    assert (ckpts / "latest").read_text() == "step-00000003"
    assert checkpoint.find_latest(ckpts).name == "step-00000003"
    monkeypatch.undo()
    resumed = make(tmp_path, "run.max_steps=6", "checkpoint.resume=auto")
    assert resumed.state.step == 3 and not (ckpts / "tmp-step-00000006").exists()
    assert run(resumed).step == 6


def test_cpu_offload_matches_plain_zero(tmp_path):
    runs = {}
    for name, extra in {"z2": [], "z2_off": ["deepspeed.offload_optimizer=true"],
                        "z3_off": ["deepspeed.zero_stage=3", "deepspeed.offload_optimizer=true",
                                   "deepspeed.offload_param=true"]}.items():
        over = ["run.max_steps=5", "deepspeed.zero_stage=2", *extra, "checkpoint.save_at_end=false"]
        run(make(tmp_path / name, *over))
        runs[name] = [r["loss"] for r in records(tmp_path / name)]
    assert runs["z2_off"] == pytest.approx(runs["z2"], rel=1e-5)
    assert runs["z3_off"] == pytest.approx(runs["z2"], rel=1e-5)


def test_bf16_with_gradient_accumulation_learns(tmp_path):
    state = run(make(tmp_path, "run.max_steps=12", "train.precision=bf16", "deepspeed.zero_stage=3",
                     "train.grad_accum_steps=2", "checkpoint.save_at_end=false"))
    losses = [r["loss"] for r in records(tmp_path)]
    assert state.step == 12 and state.skipped == 0
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3, losses
    assert all(r["tokens_per_s"] > 0 for r in records(tmp_path))
