"""Run safety with real processes through launch/local.sh (2 ranks, gloo, DataLoader workers):
signals to the process group, the launcher or one rank save one checkpoint at the signal
step and resume bitwise; a kill -9 of the launcher leaves no rank behind; a re-used run
name or a resume with another model config changes nothing on disk; a SIGSTOPped rank makes all
exit within the timeout, named; Slurm's requeue (stand-ins for srun/scontrol); a strict-mode
data error inside a worker is one line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from launching import base_env, free_port, tail

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from data_helpers import doc_text, write_text_shards  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
LOCAL = ROOT / "launch" / "local.sh"
RECIPE = ROOT / "configs" / "clm_tiny.yaml"
EXIT_STOPPED = 75
STEPS = 60
QUIET = ["run.log_every=1", "run.eval_every=0", "run.progress_bar=false", "run.tensorboard=false"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """clm_tiny on real text shards with one DataLoader worker per rank."""
    from ptft_engine.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("data")
    tok = train_tokenizer([doc_text(i) for i in range(60)], kind="bpe", vocab_size=128, min_frequency=1)
    tok.save(str(root / "tok.json"))
    tree = yaml.safe_load(RECIPE.read_text())
    tree["model"] = {**yaml.safe_load((RECIPE.parent / tree["model"]).read_text()), "vocab_size": tok.get_vocab_size()}
    tree["data"] = {"shards": [write_text_shards(root, 61)], "tokenizer": str(root / "tok.json"), "seq_len": 32,
                    "batch_size": 2, "num_workers": 1}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def start(nproc: int, recipe: Path, log: Path, *overrides: str) -> subprocess.Popen:
    """launch/local.sh in a process group of its own (what a terminal or Slurm step gives it)."""
    env = dict(base_env(), PYTHON=sys.executable, PTFT_FAIL_GRACE_S="5")
    return subprocess.Popen([str(LOCAL), str(nproc), "--config", str(recipe), *QUIET, *overrides], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def ranks(launcher: subprocess.Popen, n: int = 2, timeout: float = 60) -> dict[int, psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {int(p.environ()["RANK"]): p for p in psutil.Process(launcher.pid).children()
                 if "ptft_engine.cli" in " ".join(p.cmdline())}
        if len(found) == n:
            return found
        time.sleep(0.2)
    raise AssertionError("ranks did not start")


def train_steps(run_dir: Path, split: str = "train") -> list[int]:
    f = run_dir / "metrics.jsonl"
    if not f.exists():
        return []
    return [r["step"] for line in f.read_text().splitlines() if line.strip()
            and (r := json.loads(line))["split"] == split]


def wait_past(run_dir: Path, step: int, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if train_steps(run_dir) and max(train_steps(run_dir)) >= step:
            return
        assert proc.poll() is None, f"exited early ({proc.returncode}):\n{tail(log)}"
        time.sleep(0.1)
    raise AssertionError(f"step {step} not reached:\n{tail(log)}")


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if (r := json.loads(line))["split"] == "train"}


def error_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("ptft pretrain: error:")]


def kill_tree(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def test_signals_save_at_the_signal_step_and_resume_bitwise(recipe, tmp_path):
    timings = {}
    out = f"run.output_dir={tmp_path}"
    t = time.monotonic()
    ref = start(2, recipe, tmp_path / "ref.log", out, "run.name=ref", f"run.max_steps={STEPS}")
    assert ref.wait(timeout=400) == 0, tail(tmp_path / "ref.log")
    timings["reference run"] = time.monotonic() - t

    # a resume with another model config: refused, nothing changed (a re-used name without --resume:
    # test_run_dir.py, in-process; a resume on another world size is allowed: test_elastic.py)
    before = snapshot(tmp_path / "ref")
    for n, extra, message in [(1, ["model.num_hidden_layers=3", "--resume", "auto"],
                               "model.num_hidden_layers is 2 in the checkpoint but 3 in the config")]:
        t = time.monotonic()
        log = tmp_path / f"refused{n}.log"
        p = start(n, recipe, log, out, "run.name=ref", f"run.max_steps={STEPS}", *extra)
        assert p.wait(timeout=200) == 1, tail(log)
        lines = error_lines(log)
        assert len(lines) == 1 and message in lines[0], tail(log)  # one line, from rank 0 only
        assert snapshot(tmp_path / "ref") == before
        timings[f"refused start ({message})"] = time.monotonic() - t

    run_dir = tmp_path / "r"
    args = [out, "run.name=r", f"run.max_steps={STEPS}", "checkpoint.every=0", "checkpoint.keep_last=10",
            "--resume", "auto"]

    def group(p):
        os.killpg(p.pid, signal.SIGINT)  # Ctrl-C in a terminal (`kill -TERM -PGID` works the same)

    def launcher(p):
        p.send_signal(signal.SIGTERM)  # `kill PID` of the launcher alone

    def one_rank(p):
        ranks(p)[1].send_signal(signal.SIGTERM)  # a signal to one rank reaches the others

    stopped_at = 0
    for name, deliver in [("group", group), ("launcher", launcher), ("one rank", one_rank)]:
        t = time.monotonic()
        log = tmp_path / f"{name}.log"
        p = start(2, recipe, log, *args)
        wait_past(run_dir, stopped_at + 3, p, log)
        deliver(p)
        try:
            assert p.wait(timeout=120) == EXIT_STOPPED, tail(log)
        finally:
            kill_tree(p)
        text = log.read_text()
        assert "killed by signal" not in text and "Traceback" not in text, tail(log)
        stopped_at = max(train_steps(run_dir))
        latest = (run_dir / "checkpoints" / "latest").read_text()
        assert latest == f"step-{stopped_at:08d}", (name, latest, stopped_at)  # saved at the signal step
        # rank 0 prints the line; with Ctrl-C it gets SIGINT itself and SIGTERM from the launcher
        names = {"group": ("SIGINT", "SIGTERM"), "launcher": ("SIGTERM",), "one rank": ("on another rank",)}[name]
        assert any(f"stopped by a signal ({n}) at step {stopped_at}" in text for n in names), tail(log)
        timings[f"{'SIGINT (Ctrl-C)' if name == 'group' else 'SIGTERM'} to the {name}"] = time.monotonic() - t

    # kill -9 of the launcher: its ranks get SIGTERM (PR_SET_PDEATHSIG), save and are gone
    t = time.monotonic()
    log = tmp_path / "kill9.log"
    p = start(2, recipe, log, *args)
    wait_past(run_dir, stopped_at + 3, p, log)
    orphans = list(ranks(p).values())
    p.send_signal(signal.SIGKILL)
    t_kill = time.monotonic()
    gone, alive = psutil.wait_procs(orphans, timeout=60)
    left_after = time.monotonic() - t_kill
    kill_tree(p)
    assert not alive, f"ranks still running 60 s after the launcher died: {alive}"
    stopped_at = max(train_steps(run_dir))
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step-{stopped_at:08d}"
    timings["kill -9 of the launcher"] = time.monotonic() - t
    timings["  ranks gone after the launcher's kill -9 (s)"] = left_after

    t = time.monotonic()
    log = tmp_path / "last.log"
    p = start(2, recipe, log, *args)
    assert p.wait(timeout=300) == 0, tail(log)
    timings["resume to the end"] = time.monotonic() - t

    # every step once; losses and final weights bitwise equal to the uninterrupted run
    assert train_steps(run_dir) == list(range(1, STEPS + 1))
    assert train_steps(run_dir, "summary") == [STEPS]
    ref_losses, got = losses(tmp_path / "ref"), losses(run_dir)
    assert [got[s] for s in range(1, STEPS + 1)] == [ref_losses[s] for s in range(1, STEPS + 1)]
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    w_ref = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path / "ref" / "checkpoints"), tag=f"step-{STEPS:08d}")
    w_got = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=f"step-{STEPS:08d}")
    assert w_ref.keys() == w_got.keys() and all(torch.equal(w_ref[k], w_got[k]) for k in w_ref)
    # the data counters reached metrics.jsonl: per interval, and the lineage's totals at the end
    summary = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    records = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert summary["split"] == "summary" and summary["data_samples"] == sum(r.get("data_samples", 0)
                                                                          for r in records[:-1])
    print(json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=1))


def test_a_stopped_rank_makes_all_exit_within_the_timeout_and_is_named(tmp_path):
    log = tmp_path / "stop.log"
    p = start(2, RECIPE, log, f"run.output_dir={tmp_path}", "run.max_steps=100000", "checkpoint.every=0",
              "checkpoint.save_at_end=false", "run.dist_timeout_s=20", "deepspeed.zero_stage=2")
    try:
        wait_past(tmp_path / "clm_tiny", 3, p, log)
        procs = ranks(p)
        procs[1].send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        code = p.wait(timeout=90)
        elapsed = time.monotonic() - t0
        _, alive = psutil.wait_procs(list(procs.values()), timeout=10)
    finally:
        kill_tree(p)
    print(f"SIGSTOP of rank 1: all exited after {elapsed:.1f} s")
    assert code not in (0, EXIT_STOPPED) and not alive, tail(log)
    assert elapsed < 60, elapsed
    text = log.read_text()
    assert "a collective failed" in text and "not answering: rank 1" in text, tail(log)


def test_slurm_requeues_on_the_time_limit_signal_and_resumes(tmp_path):
    """launch/slurm.sbatch with stand-ins: `srun` runs the task in the background (its pid in
    a file, so the test can signal it as Slurm's --signal=TERM@300 does), `scontrol` lists
    one node and records a requeue."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
        'SLURM_NODEID=0 "$@" & echo $! > "$STANDIN_DIR/task.pid"\nwait $!\n')
    (bin_dir / "scontrol").write_text(
        '#!/usr/bin/env bash\ncase "$1" in\n  show) echo localhost ;;\n'
        '  requeue) echo "$2" >> "$STANDIN_DIR/requeued" ;;\nesac\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(base_env(), PATH=f"{bin_dir}:{os.environ['PATH']}", STANDIN_DIR=str(tmp_path), PYTHON=sys.executable,
               SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node[1]", SLURM_SUBMIT_DIR=str(ROOT), GPUS_PER_NODE="2",
               HOSTFILE=str(tmp_path / "hostfile"), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    cmd = ["bash", str(ROOT / "launch" / "slurm.sbatch"), "--config", str(RECIPE), f"run.output_dir={tmp_path}",
           "run.max_steps=150", "checkpoint.every=0", *QUIET]
    run_dir = tmp_path / "clm_tiny"
    t = time.monotonic()
    job = subprocess.Popen(cmd, env=env, stdout=open(tmp_path / "job1.log", "w"), stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        wait_past(run_dir, 3, job, tmp_path / "job1.log")
        os.kill(int((tmp_path / "task.pid").read_text()), signal.SIGTERM)  # the time limit is near
        assert job.wait(timeout=120) == 0, tail(tmp_path / "job1.log")
    finally:
        kill_tree(job)
    assert (tmp_path / "requeued").read_text().split() == ["4242"]
    stopped_at = max(train_steps(run_dir))
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step-{stopped_at:08d}"
    first = time.monotonic() - t

    t = time.monotonic()
    env["SLURM_RESTART_COUNT"] = "1"  # Slurm starts the same script with the same arguments
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / f'step-{stopped_at:08d}'}" in again.stdout
    assert (tmp_path / "requeued").read_text().split() == ["4242"]  # finished: not requeued again
    assert train_steps(run_dir) == list(range(1, 151))
    print(f"slurm: signal + requeue {first:.1f} s, requeued job to the end {time.monotonic() - t:.1f} s")


def test_strict_data_error_in_a_worker_is_one_line_and_saves_the_last_step(recipe, tmp_path):
    tree = yaml.safe_load(recipe.read_text())
    shards = Path(tree["data"]["shards"][0])
    bad = tmp_path / "shards"
    bad.mkdir()
    for f in shards.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    victim = sorted(bad.glob("*.tar"))[0]
    victim.write_bytes(victim.read_bytes()[:1500])  # cut inside the first samples
    # packing: batch reads documents in the workers only (the default plan reads lengths at start, in the rank)
    tree["data"].update(shards=[str(bad)], strict=True, packing="batch")
    path = tmp_path / "strict.yaml"
    path.write_text(yaml.safe_dump(tree))
    out = subprocess.run([sys.executable, "-m", "ptft_engine.cli", "pretrain", "--config", str(path),
                          f"run.output_dir={tmp_path}", "run.max_steps=3", *QUIET],
                         env=base_env(), capture_output=True, text=True, timeout=200)
    # strict: the step that met it is not trained; the last complete one is saved (exit 3, as bad steps)
    assert out.returncode == 3, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("ptft pretrain: ")]
    assert len(lines) == 1 and victim.name in lines[0] and "corrupt data in shard" in lines[0], out.stdout[-3000:]
    assert "no update was made; checkpoint of step" in lines[0] and "Traceback" not in out.stderr
    step = int(lines[0].split("checkpoint of step ")[1].split()[0])
    assert (tmp_path / tree["run"]["name"] / "checkpoints" / f"step-{step:08d}").is_dir()
