"""The launcher's bookkeeping with stand-in ranks (shell processes): exit codes, a failed
rank taking the others down, signal forwarding, hostfile layout."""
from __future__ import annotations

import argparse
import signal
import subprocess
import time

import pytest

from ptft_engine.engine.launcher import Supervisor, _layout, read_hostfile
from ptft_engine.engine.signals import EXIT_STOPPED


def ranks(*scripts: str) -> list[subprocess.Popen]:
    return [subprocess.Popen(["sh", "-c", s]) for s in scripts]


def test_exit_code_is_stopped_when_ranks_saved_on_a_signal_else_zero():
    assert Supervisor(ranks("exit 0", "exit 0"), grace_s=5).wait() == 0
    assert Supervisor(ranks(f"exit {EXIT_STOPPED}", "exit 0"), grace_s=5).wait() == EXIT_STOPPED


def test_a_failed_rank_takes_the_others_down_after_the_grace(tmp_path):
    # the survivor ignores SIGTERM (as a rank stuck in a collective would not act on it);
    # the failing rank waits until the survivor's trap is set (a loaded machine starts sh slowly)
    ready = tmp_path / "ready"
    procs = ranks(f"while [ ! -e {ready} ]; do sleep 0.05; done; exit 3", f"trap '' TERM; touch {ready}; sleep 100")
    t0 = time.monotonic()
    assert Supervisor(procs, grace_s=1).wait() == 3
    assert time.monotonic() - t0 < 10 and procs[1].returncode == -signal.SIGKILL


def test_signals_are_forwarded_as_sigterm_and_a_second_sigint_as_sigint():
    procs = ranks("sleep 100", "sleep 100")
    sup = Supervisor(procs, grace_s=5)
    sup.forward(signal.SIGINT, None)
    assert [p.wait(timeout=10) for p in procs] == [-signal.SIGTERM, -signal.SIGTERM]
    procs[:] = ranks("trap '' TERM; sleep 100")
    sup.forward(signal.SIGINT, None)  # the second: an impatient Ctrl-C goes through as SIGINT
    assert procs[0].wait(timeout=10) == -signal.SIGINT


def test_hostfile_layout(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("# comment\nnode-a slots=2\n\nnode-b slots=3  # more\n")
    assert read_hostfile(str(hosts)) == [("node-a", 2), ("node-b", 3)]
    args = argparse.Namespace(hostfile=str(hosts), node_rank=1, master_addr=None, nproc=None)
    assert _layout(args) == (3, 2, 5, "node-a")  # 3 ranks here, the first is global rank 2, of 5
    hosts.write_text("node-a\n")
    with pytest.raises(SystemExit, match="line 1: expected 'HOST slots=N'"):
        read_hostfile(str(hosts))
