"""benchmarks/gpu_check.sh in its dry mode: the one GPU run a session gets must not fail on the script itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def run_check(out: Path, budget: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PTFT_GPU_CHECK_DRY="1", PTFT_GPU_CHECK_BUDGET=str(budget), OUT=str(out),
               PYTHON=sys.executable, OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=budget + 60)


@pytest.mark.slow
def test_dry_run_writes_every_file_and_row(tmp_path):
    proc = run_check(tmp_path, budget=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["bench.jsonl", "env.json", "junit_cuda.xml", "junit_triton.xml", "log.txt", "steps.jsonl",
                     "summary.json"]  # at most 8 files come back from the device machine
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["build", "env", "tests_triton", "tests_cuda", "bench_mlm",
                                                      "bench_attention", "bench_contrastive", "bench_e2e"]
    assert summary["failed_steps"] == [] and summary["skipped_steps"] == []
    assert summary["tests"]["triton"]["tests"] > 0 and summary["tests"]["cuda"]["tests"] > 0  # collected (skipped)
    rows = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    cases = [r["case"] for r in rows]
    # Triton ran interpreted and was measured against SDPA; the cuda backend cannot run on a CPU and says so
    triton_attn = [r for r in rows if r["case"].startswith("attention_cpu_fwdbwd_triton_packed4")]
    assert triton_attn and all(r["ours"] > 0 and r["peer"] > 0 for r in triton_attn)
    cuda_rows = [r for r in rows
                 if "_cuda_" in r["case"] or r["case"].startswith(("mlm_mask cuda", "contrastive_loss cuda"))]
    assert cuda_rows and all("cannot run here" in r["error"] for r in cuda_rows)
    assert any(c.startswith("contrastive_loss triton") for c in cases)
    assert any(c == "gpt_1b_mfu" for c in cases) and any(c.startswith("mlm_mask triton") for c in cases)
    env = json.loads((tmp_path / "env.json").read_text())
    assert env  # `ptft env --json` parsed


@pytest.mark.slow  # runs gpu_check.sh in bash
def test_deadline_skips_steps_but_still_reports(tmp_path):
    proc = run_check(tmp_path, budget=18)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["skipped_steps"], summary  # the later steps did not run past the budget
    assert summary["skipped_steps"][-1] == "bench_e2e"
    assert summary["seconds"] <= 18 + 5
    assert "deadline is near" in proc.stdout
