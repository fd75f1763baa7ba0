"""SIGTERM/SIGINT/SIGHUP → a flag the training loop checks between steps (then saves and exits).

The flag travels in the step's all-reduce, so a signal to any one rank stops all of them
after the same step; they save one checkpoint together and `ptft pretrain` exits with
EXIT_STOPPED. A second SIGINT raises KeyboardInterrupt, so an impatient Ctrl-C twice still
stops at once. A rank started by our launcher also stops when the launcher is gone.
"""
from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

# Exit code of a run that stopped on a signal after saving its checkpoint: EX_TEMPFAIL
# ("try again later"), what launch/slurm.sbatch requeues on. 0 is a finished run.
EXIT_STOPPED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._sigints = 0
        self._old: dict[int, object] = {}
        launcher = os.environ.get("PTFT_LAUNCHER_PID")
        self._launcher = int(launcher) if launcher and launcher.isdigit() else None

    @property
    def requested(self) -> bool:
        if self.signum is None and self._launcher is not None and os.getppid() != self._launcher:
            # our launcher died (kill -9) and PR_SET_PDEATHSIG was not available: stop as on SIGTERM
            log.warning("the launcher (pid %d) is gone: saving a checkpoint and stopping", self._launcher)
            self.signum = signal.SIGTERM
        return self.signum is not None

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self._sigints += 1
            if self._sigints > 1:
                raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            log.warning("received %s: will save a checkpoint and stop after this step", signal.Signals(signum).name)

    def install(self) -> StopRequest:
        if not self._old and threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
