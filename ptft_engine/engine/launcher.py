"""The per-node launcher of launch/local.sh and launch/multinode.sh (one launcher per node).

    python -m ptft_engine.engine.launcher --nproc 2 [--master-port P] -- pretrain --config ...
    python -m ptft_engine.engine.launcher --hostfile H --node-rank R --master-addr A -- pretrain ...

It starts this node's ranks (`python -m ptft_engine.cli ARGS` with RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR/PORT set) and supervises them. Unlike DeepSpeed's and torchrun's
launchers, which SIGKILL the ranks 30 s after forwarding a SIGTERM (too short to save a
large model), it leaves the stop to the ranks:

- SIGTERM/SIGINT/SIGHUP to the launcher is forwarded to each rank as SIGTERM (a later
  SIGINT as SIGINT: twice Ctrl-C still interrupts at once); the ranks finish their step,
  save one checkpoint together and exit with EXIT_STOPPED.
- A rank started by it gets SIGTERM when the launcher dies (PR_SET_PDEATHSIG, Linux),
  even by kill -9, so no rank trains on unattended.
- A rank that fails (exit code other than 0 or EXIT_STOPPED) takes the run down: the
  others can no longer finish a collective, so they get SIGTERM, then SIGKILL after
  PTFT_FAIL_GRACE_S seconds (default 15; a stopped or hung rank cannot exit by itself).

Exit code: the first failing rank's code; else EXIT_STOPPED if a rank stopped on a signal;
else 0. Signals are not forwarded to the ranks' children: DataLoader workers ignore them.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time

from ptft_engine.engine.signals import EXIT_STOPPED

PR_SET_PDEATHSIG = 1
POLL_S = 0.2


def _die_with_parent(parent: int) -> None:
    """Runs in the child between fork and exec: SIGTERM when the launcher dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the rank's own parent check still holds
        return
    if os.getppid() != parent:  # the launcher died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def read_hostfile(path: str) -> list[tuple[str, int]]:
    """deepspeed hostfile lines `host slots=N` → [(host, N)], '#' comments skipped."""
    nodes = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            host, _, slots = line.partition(" slots=")
            if not slots.strip().isdigit() or int(slots) < 1:
                raise SystemExit(f"launcher: {path} line {n}: expected 'HOST slots=N', got {line!r}")
            nodes.append((host.strip(), int(slots)))
    if not nodes:
        raise SystemExit(f"launcher: {path} names no host")
    return nodes


def _layout(args) -> tuple[int, int, int, str]:
    """(ranks on this node, global rank of the first, world size, master address)."""
    if args.hostfile:
        nodes = read_hostfile(args.hostfile)
        if not 0 <= args.node_rank < len(nodes):
            raise SystemExit(f"launcher: NODE_RANK {args.node_rank} but {args.hostfile} lists {len(nodes)} hosts")
        first = sum(slots for _, slots in nodes[:args.node_rank])
        return nodes[args.node_rank][1], first, sum(s for _, s in nodes), args.master_addr or nodes[0][0]
    if args.nproc is None or args.nproc < 1:
        raise SystemExit("launcher: give --nproc N (one node) or --hostfile with --node-rank")
    return args.nproc, 0, args.nproc, args.master_addr or "127.0.0.1"


class Supervisor:
    def __init__(self, procs: list[subprocess.Popen], grace_s: float):
        self.procs, self.grace_s = procs, grace_s
        self.signals = 0

    def forward(self, signum, frame) -> None:
        self.signals += 1
        sent = signal.SIGINT if signum == signal.SIGINT and self.signals > 1 else signal.SIGTERM
        print(f"launcher: received {signal.Signals(signum).name}, asking the ranks to save and stop", flush=True)
        self._send(sent)

    def _send(self, sig) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass

    def wait(self) -> int:
        failed: int | None = None
        kill_at = None
        while True:
            codes = [p.poll() for p in self.procs]
            if all(c is not None for c in codes):
                break
            if failed is None:
                for rank, c in enumerate(codes):
                    if c is not None and c not in (0, EXIT_STOPPED):
                        failed = c
                        print(f"launcher: local rank {rank} failed (exit code {c}); stopping the others", flush=True)
                        self._send(signal.SIGTERM)
                        kill_at = time.monotonic() + self.grace_s
                        break
            elif time.monotonic() > kill_at:
                left = [p.pid for p in self.procs if p.poll() is None]
                print(f"launcher: ranks (pids {left}) still running {self.grace_s:g} s after a failure; killing them",
                      flush=True)
                self._send(signal.SIGKILL)
                kill_at = float("inf")
            time.sleep(POLL_S)
        if failed is None:
            failed = next((c for c in codes if c not in (0, EXIT_STOPPED)), None)
        if failed is not None:
            return failed if failed > 0 else 128 - failed  # killed by a signal: the shell's 128+N
        return EXIT_STOPPED if EXIT_STOPPED in codes else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ptft_engine.engine.launcher", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, help="ranks on this (single) node")
    p.add_argument("--hostfile", help="deepspeed-style hostfile: one 'HOST slots=N' line per node")
    p.add_argument("--node-rank", type=int, default=0, help="this node's line in the hostfile (from 0)")
    p.add_argument("--master-addr", default=None, help="rank 0's host (default: the hostfile's first)")
    p.add_argument("--master-port", type=int, default=29500)
    p.add_argument("cli_args", nargs=argparse.REMAINDER, help="-- then the arguments of `ptft` (e.g. pretrain ...)")
    args = p.parse_args(argv)
    cli_args = args.cli_args[1:] if args.cli_args[:1] == ["--"] else args.cli_args
    nproc, first, world, master = _layout(args)
    me = os.getpid()
    procs: list[subprocess.Popen] = []
    sup = Supervisor(procs, float(os.environ.get("PTFT_FAIL_GRACE_S", "15")))
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, sup.forward)  # before the first rank starts: no signal is lost
    for local in range(nproc):
        env = dict(os.environ, RANK=str(first + local), LOCAL_RANK=str(local), WORLD_SIZE=str(world),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR=master, MASTER_PORT=str(args.master_port),
                   PTFT_LAUNCHER_PID=str(me))
        procs.append(subprocess.Popen([sys.executable, "-u", "-m", "ptft_engine.cli", *cli_args], env=env,
                                      preexec_fn=lambda: _die_with_parent(me)))
    if sup.signals:  # a signal arrived while the ranks were starting: the later ones get it too
        sup._send(signal.SIGTERM)
    return sup.wait()


if __name__ == "__main__":
    sys.exit(main())
