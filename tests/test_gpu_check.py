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
    # the benchmarks (the figures) before the long GPU test steps
    assert [s["step"] for s in summary["steps"]] == ["build", "env", "bench_mlm", "bench_attention",
                                                      "bench_contrastive", "bench_e2e", "tests_triton", "tests_cuda"]
    assert summary["failed_steps"] == [] and summary["skipped_steps"] == []
    assert_steps_keep_the_later_shares(summary["steps"], budget=240)
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


def assert_steps_keep_the_later_shares(steps, budget):
    """No step's time limit reaches into the shares kept for the steps after it (10 s stay for the summary);
    the shares shrink step by step to none for the last."""
    for s in steps:
        if "limit" not in s:  # skipped: a step before it may overrun its limit by timeout's 5 s kill grace
            assert s["skipped"] == "deadline", s
            continue
        assert s["start"] + s["limit"] + s["kept"] <= budget - 10, s
    kept = [s["kept"] for s in steps]
    assert kept == sorted(kept, reverse=True) and kept[-1] == 0 and kept[0] > 0, kept


@pytest.mark.slow  # runs gpu_check.sh in bash
def test_deadline_skips_steps_but_still_reports(tmp_path):
    proc = run_check(tmp_path, budget=18)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["skipped_steps"], summary  # steps that would have run past the budget were skipped
    assert summary["skipped_steps"][-1] == "tests_cuda"
    assert_steps_keep_the_later_shares(summary["steps"], budget=18)
    assert summary["seconds"] <= 18 + 5
    assert "deadline is near" in proc.stdout


def test_e2e_benchmark_failure_leaves_an_error_row(tmp_path, monkeypatch):
    """Like the kernel benchmarks, a failing end-to-end run (OOM of the 1B model, a missing wheel) writes a row
    that says why, so summary.json counts it, and still exits non-zero."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_engine", ROOT / "benchmarks" / "e2e" / "bench_engine.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def fail(*args):
        raise RuntimeError("CUDA out of memory\ntraceback detail")

    monkeypatch.setattr(bench, "bench_step_time", fail)
    monkeypatch.setenv("DS_ACCELERATOR", os.environ.get("DS_ACCELERATOR", "cpu"))  # main() sets it: undone after
    out = tmp_path / "bench.jsonl"
    monkeypatch.setattr(sys, "argv", ["bench_engine.py", "--dry", "--json-out", str(out)])
    with pytest.raises(RuntimeError, match="out of memory"):
        bench.main()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"case": "engine_step_time", "ours": None, "peer": None, "ratio": None, "unit": "s/step",
                     "device": "cpu", "error": "RuntimeError: CUDA out of memory"}]


def test_shares_name_every_step_in_run_order_and_add_up_to_the_budget():
    import re

    text = SCRIPT.read_text()
    shares = [entry.split(":") for entry in re.search(r'^SHARES="([^"]*)"', text, re.M).group(1).split()]
    assert sum(int(pct) for _, pct in shares) == 100
    calls = re.findall(r"^\s*step (\w+) \d+ ", text, re.M)  # the step calls, in the script's order
    # the dry branch's build comes first in the text; the GPU branch (wheels, build) is the run order
    gpu_order = list(dict.fromkeys(reversed(calls)))[::-1]
    assert [name for name, _ in shares] == gpu_order, calls
