"""Every command has --help with an example; mistakes a user can fix give one clear line
(what is wrong, what to do) and no traceback; --debug shows the traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from shared_helpers import free_port

from ptft_engine import cli

REPO = Path(__file__).resolve().parents[1]
MLM = str(REPO / "configs" / "mlm_tiny.yaml")


def ptft(*args, env=None, timeout=120, cwd=None):
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ptft_engine.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)


def one_line_error(res, *needles):
    """rc 1, no Python traceback, and the last stderr line is `ptft CMD: error: ...` naming the needles."""
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    ours = [line for line in res.stderr.splitlines() if line.startswith("ptft ") and ": error: " in line]
    assert len(ours) == 1 and res.stderr.rstrip().endswith(ours[0]), res.stderr[-2000:]
    for needle in needles:
        assert needle in ours[0], ours[0]
    return ours[0]


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_help_with_an_example(name):
    text = cli._command_parser(name).format_help()
    assert "xample" in text and f"ptft {name}" in text, text


@pytest.mark.slow  # CLI subprocesses
def test_help_through_the_cli_exits_zero():
    res = ptft("report", "--help")
    assert res.returncode == 0 and "Example" in res.stdout


@pytest.mark.slow  # CLI subprocesses
def test_wrong_paths(tmp_path):
    one_line_error(ptft("shard", str(tmp_path / "nope"), "--output", str(tmp_path / "s")), "nope", "does not exist")
    one_line_error(ptft("export", str(tmp_path / "nope"), str(tmp_path / "e")), "nope")
    one_line_error(ptft("report", str(tmp_path / "nope")), "nope", "no such directory")
    one_line_error(ptft("report", str(tmp_path)), "nothing to report")
    one_line_error(ptft("pretrain", "--config", str(tmp_path / "nope.yaml")), "nope.yaml", "not found")
    one_line_error(ptft("finetune", "--config", str(tmp_path / "nope.yaml")), "nope.yaml")


@pytest.mark.slow  # CLI subprocesses
def test_bad_config_keys():
    one_line_error(ptft("pretrain", "--config", MLM, "train.lrr=1e-3"), "train.lrr", "unknown key")
    one_line_error(ptft("pretrain", "--config", MLM, "train.lr=fast"), "train.lr")
    one_line_error(ptft("finetune", "--config", str(REPO / "configs/finetune/sentiment.yaml"), "optim.lrr=1"),
                   "optim.lrr")


@pytest.mark.slow  # CLI subprocesses
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
def test_cuda_requested_without_a_gpu(tmp_path):
    one_line_error(ptft("pretrain", "--config", MLM, "run.device=cuda", f"run.output_dir={tmp_path}"), "cuda",
                   "no CUDA device")
    # an explicit kernel backend that cannot run here: said once, with what to do instead
    one_line_error(ptft("pretrain", "--config", MLM, "run.max_steps=1", f"run.output_dir={tmp_path}",
                        env={"PTFT_KERNEL_BACKEND": "cuda"}),
                   "backend 'cuda' cannot run here", "PTFT_KERNEL_BACKEND=auto")


@pytest.mark.slow  # CLI subprocesses
def test_unreachable_master_address(tmp_path):
    port = free_port()  # nobody listens on it: rank 1 can never reach rank 0
    res = ptft("pretrain", "--config", MLM, "run.dist_timeout_s=2", f"run.output_dir={tmp_path}",
               env={"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(port)})
    one_line_error(res, f"127.0.0.1:{port}", "cannot reach", "MASTER_ADDR")
    assert "frame #" not in res.stderr  # no C++ stack dump either


@pytest.mark.slow  # CLI subprocesses
def test_debug_shows_the_traceback(tmp_path):
    res = ptft("--debug", "shard", str(tmp_path / "nope"), "--output", str(tmp_path / "s"))
    assert res.returncode != 0 and "Traceback" in res.stderr
