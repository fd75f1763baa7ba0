"""Two ranks on gloo: ZeRO stages agree, and a kill -9 + resume is bitwise exact (ZeRO-2, ZeRO-3)."""
from __future__ import annotations

import signal

import pytest
import torch
from launching import read_losses, spawn_ranks, tail, wait_all, wait_for_step

pytestmark = pytest.mark.slow

STEPS = 12
COMMON = [f"run.max_steps={STEPS}", "run.log_every=1", "run.progress_bar=false", "run.tensorboard=false",
          "train.lr=1e-2", "train.warmup_steps=2", "data.batch_size=4", "data.seq_len=16",
          "checkpoint.every=4", "checkpoint.keep_last=5", "run.dist_timeout_s=60"]
STAGES = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, one per ZeRO stage, in one pair of processes."""
    out = tmp_path_factory.mktemp("ref")
    jobs = []
    for stage in STAGES:
        jobs += ["::", f"deepspeed.zero_stage={stage}", f"run.name=z{stage}"]
    procs = spawn_ranks(2, [*COMMON, f"run.output_dir={out}", *jobs], out / "logs")
    codes = wait_all(procs, timeout=300)
    assert codes == [0, 0], tail(out / "logs" / "rank0.log")
    return out


def test_zero_stages_give_matching_losses(reference):
    losses = {s: read_losses(reference / f"z{s}") for s in STAGES}
    assert sorted(losses[0]) == list(range(1, STEPS + 1))
    assert losses[0][STEPS] < losses[0][1] - 0.3, losses[0]  # it learns
    for s in STAGES[1:]:
        for step in range(1, STEPS + 1):
            assert losses[s][step] == pytest.approx(losses[0][step], rel=1e-4, abs=1e-5), (s, step)


def _fp32_weights(ckpt_root, step):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_root), tag=f"step-{step:08d}")


@pytest.mark.parametrize("stage", [2, 3])
def test_kill9_and_resume_is_bitwise_exact(reference, tmp_path, stage):
    args = [*COMMON, f"run.output_dir={tmp_path}", f"deepspeed.zero_stage={stage}", "run.name=r",
            "checkpoint.resume=auto"]
    procs = spawn_ranks(2, [*args, "toy.slow_from=6"], tmp_path / "logs1")
    wait_for_step(tmp_path / "r", 6, procs, timeout=240)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    wait_all(procs, timeout=30)
    from ptft_engine.engine.checkpoint import find_latest
    latest = find_latest(tmp_path / "r" / "checkpoints")
    assert latest is not None and latest.name == "step-00000004"  # killed during steps 6-8

    procs = spawn_ranks(2, args, tmp_path / "logs2")
    assert wait_all(procs, timeout=240) == [0, 0], tail(tmp_path / "logs2" / "rank0.log")
    assert "resumed from" in (tmp_path / "logs2" / "rank0.log").read_text()

    ref, got = read_losses(reference / f"z{stage}"), read_losses(tmp_path / "r")
    assert [got[s] for s in range(1, STEPS + 1)] == [ref[s] for s in range(1, STEPS + 1)]  # bitwise
    w_ref = _fp32_weights(reference / f"z{stage}" / "checkpoints", STEPS)
    w_got = _fp32_weights(tmp_path / "r" / "checkpoints", STEPS)
    assert w_ref.keys() == w_got.keys()
    for name in w_ref:
        assert torch.equal(w_ref[name], w_got[name]), name
