"""How a launched rank process ends: Python's exit handlers, then os._exit.

After a run has finished and saved, interpreter teardown still destroys c10d's store client
and gloo's worker threads, in no fixed order; now and then a std::thread is destroyed while
joinable and the process aborts ("terminate called without an active exception", exit -6),
which fails a launch whose work is complete. Leaving with os._exit skips that teardown; the
exit handlers (logging, multiprocessing's worker clean-up, tempfile finalizers) still run.
"""
from __future__ import annotations

import atexit
import os
import sys


def exit_rank(code: int) -> None:
    """End this rank process with `code` (never returns)."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
