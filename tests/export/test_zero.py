"""Consolidating 2-rank DeepSpeed ZeRO-2 and ZeRO-3 checkpoints gives the live weights exactly."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from shared_helpers import free_port, rank_env

from ptft_engine import cli
from ptft_engine.export import ExportError, export_checkpoint, load_export
from ptft_engine.export.zero import torch_load

HERE = Path(__file__).parent
pytestmark = pytest.mark.slow


def _launch(run_dir: Path, stage: int) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for rank in range(2):
        env = rank_env(rank, 2, port)
        log = open(run_dir.parent / f"{run_dir.name}-rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, str(HERE / "zero_rank.py"), str(run_dir), str(stage)],
                                      env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory):
    """Both 2-rank runs at once (4 processes): stage -> run dir."""
    root = tmp_path_factory.mktemp("zero")
    runs = {stage: root / f"zero{stage}" for stage in (2, 3)}
    procs = {stage: _launch(d, stage) for stage, d in runs.items()}
    for stage, ps in procs.items():
        for rank, p in enumerate(ps):
            try:
                rc = p.wait(timeout=400)
            except subprocess.TimeoutExpired:
                for q in ps:
                    q.kill()
                rc = "timeout"
            if rc != 0:
                log = (root / f"zero{stage}-rank{rank}.log").read_text()[-3000:]
                pytest.fail(f"ZeRO-{stage} rank {rank} exited {rc}:\n{log}")
    return runs


@pytest.mark.parametrize("stage", [2, 3])
def test_consolidated_export_equals_live_weights(zero_runs, tmp_path, stage):
    run = zero_runs[stage]
    live = load_file(str(run / "live_weights.safetensors"))
    manifest = export_checkpoint(run, tmp_path / "hf")
    assert manifest["source"]["world_size"] == 2 and manifest["source"]["step"] == 3
    assert manifest["source"]["zero_stage_layout"] == ("3" if stage == 3 else "1/2")
    loaded = load_export(tmp_path / "hf")
    assert loaded.layout == "hf-gpt2"
    ours = loaded.model.state_dict()
    for name, value in live.items():
        torch.testing.assert_close(ours[name], value, atol=0, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


def test_cli_exports_a_run_dir_to_native_bf16(zero_runs, tmp_path, capsys):
    out = tmp_path / "native"
    assert cli.main(["export", str(zero_runs[2]), str(out), "--format", "native", "--dtype", "bf16",
                     "--max-shard-size", "8KB"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["layout"] == "native" and "model.safetensors.index.json" in summary["files"]
    live = load_file(str(zero_runs[2] / "live_weights.safetensors"))
    ours = load_export(out).model.state_dict()
    for name, value in live.items():
        torch.testing.assert_close(ours[name], value.bfloat16().float(), atol=0, rtol=0)


def test_unexpected_pickled_class_is_refused(tmp_path):
    ckpt = tmp_path / "step-00000001"
    ckpt.mkdir()
    torch.save({"module": {}, "payload": ExportError("not a tensor")}, ckpt / "mp_rank_00_model_states.pt")
    with pytest.raises(ExportError, match="refusing to unpickle unexpected class"):
        torch_load(ckpt / "mp_rank_00_model_states.pt")


def test_missing_rank_file_is_named(zero_runs, tmp_path):
    import shutil

    ckpt = next((zero_runs[2] / "checkpoints").glob("step-*"))
    broken = tmp_path / "run"
    shutil.copytree(zero_runs[2], broken, ignore=shutil.ignore_patterns("zero_pp_rank_0_*"))
    missing = r"rank 0 file \S*zero_pp_rank_0_mp_rank_00_optim_states\.pt is missing \(meta.json: world_size=2\)"
    with pytest.raises(ExportError, match=missing):
        export_checkpoint(broken, tmp_path / "out")
    assert ckpt.is_dir()
