"""Start ranks of the toy runner as plain processes (env rendezvous) or via `deepspeed`."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
RUNNER = HERE / "run_toy.py"
PY = sys.executable
DEEPSPEED = str(Path(PY).parent / "deepspeed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env() -> dict[str, str]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(HERE.parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def spawn_ranks(world: int, args: list[str], log_dir: Path, runner: Path = RUNNER) -> list[subprocess.Popen]:
    """One process per rank, rendezvous over loopback (what a launcher does, minus its start-up)."""
    port = free_port()
    procs = []
    log_dir.mkdir(parents=True, exist_ok=True)
    for rank in range(world):
        env = base_env()
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        out = open(log_dir / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen([PY, str(runner), *args], env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return codes


def read_losses(run_dir: Path) -> dict[int, float]:
    """step → loss of the train records in metrics.jsonl (a resumed run appends; later wins)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["split"] == "train":
            out[rec["step"]] = rec["loss"]
    return out


def wait_for_step(run_dir: Path, step: int, procs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        f = run_dir / "metrics.jsonl"
        if f.exists() and any(json.loads(row)["step"] >= step for row in f.read_text().splitlines() if row.strip()):
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a rank exited before step {step}: {[p.poll() for p in procs]}")
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""
