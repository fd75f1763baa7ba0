"""Models under DeepSpeed ZeRO-3 zero.Init: tied weights, shapes read at build time and
0-dim parameters are the usual traps. Runs in a subprocess (it initialises torch.distributed)."""
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")


@pytest.mark.slow
def test_every_arch_builds_and_trains_under_zero3_init():
    script = Path(__file__).with_name("zero3_check.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    port = str(random.randint(20000, 40000))
    proc = subprocess.run([sys.executable, str(script), port], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count(" ok ") == 7, proc.stdout[-2000:]
