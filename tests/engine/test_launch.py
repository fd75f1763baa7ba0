"""Real launches: two 'nodes' on this machine (one launcher per node rank, ours or DeepSpeed's
`--no_ssh --node_rank`, rendezvous over loopback), and a killed rank that must not hang the rest."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from launching import base_env, free_port, tail, wait_for_step

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
RECIPE = ROOT / "configs" / "clm_tiny.yaml"
QUIET = ["run.log_every=1", "run.eval_every=0", "run.progress_bar=false", "run.tensorboard=false",
         "run.dist_timeout_s=45"]


def start_two_nodes(tmp_path: Path, *overrides: str, launcher: str = "ptft") -> list[subprocess.Popen]:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    port = str(free_port())
    procs = []
    for node_rank in (0, 1):
        env = dict(base_env(), HOSTFILE=str(hostfile), NODE_RANK=str(node_rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, PYTHON=sys.executable)
        if launcher == "deepspeed":
            env["LAUNCHER"] = "deepspeed"  # `deepspeed --no_ssh --node_rank N` instead of our launcher
        log = open(tmp_path / f"node{node_rank}.log", "w")
        procs.append(subprocess.Popen(
            [str(ROOT / "launch" / "multinode.sh"), "--config", str(RECIPE), f"run.output_dir={tmp_path}", *QUIET,
             *overrides], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def stop(procs):
    for p in procs:
        if p.poll() is None:
            for child in psutil.Process(p.pid).children(recursive=True):
                child.kill()
            p.kill()


@pytest.mark.parametrize("launcher", ["ptft", "deepspeed"])
def test_two_node_launch_trains_and_both_exit_0(tmp_path, launcher):
    procs = start_two_nodes(tmp_path, "run.max_steps=4", "checkpoint.every=0", launcher=launcher)
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        stop(procs)
    assert codes == [0, 0], tail(tmp_path / "node0.log") + tail(tmp_path / "node1.log")
    run_dir = tmp_path / "clm_tiny"
    assert json.loads((run_dir / "deepspeed_config.json").read_text())["train_batch_size"] == 2 * 8
    assert json.loads((run_dir / "checkpoints" / "step-00000004" / "meta.json").read_text())["world_size"] == 2
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]


def test_a_killed_rank_makes_the_other_node_exit_nonzero_quickly(tmp_path):
    procs = start_two_nodes(tmp_path, "run.max_steps=100000", "checkpoint.every=0", "checkpoint.save_at_end=false")
    try:
        wait_for_step(tmp_path / "clm_tiny", 2, procs, timeout=240)
        ranks = [c for c in psutil.Process(procs[1].pid).children(recursive=True)
                 if "ptft_engine.cli" in c.cmdline() and "deepspeed.launcher.launch" not in c.cmdline()]
        assert len(ranks) == 1
        ranks[0].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        code0 = procs[0].wait(timeout=60)  # raises (fails the test) if node 0 hangs
        elapsed = time.monotonic() - t0
        code1 = procs[1].wait(timeout=30)
    finally:
        stop(procs)
    assert code0 != 0 and code1 != 0, (code0, code1)
    assert elapsed < 60


def test_local_launch_with_two_ranks(tmp_path):
    # CLIP with negatives gathered across both ranks: the launcher, the recipe and the
    # cross-rank objective together
    out = subprocess.run([str(ROOT / "launch" / "local.sh"), "2", "--config", str(ROOT / "configs" / "clip_tiny.yaml"),
                          f"run.output_dir={tmp_path}", "run.max_steps=3", *QUIET],
                         env=dict(base_env(), PYTHON=sys.executable), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_dir = tmp_path / "clip_tiny"
    assert json.loads((run_dir / "deepspeed_config.json").read_text())["train_batch_size"] == 2 * 16
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records] == ["train"] * 3 + ["summary"]
