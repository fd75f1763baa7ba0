"""Integrity: a missing manifest is a warning (an error when required); a ZeRO-3 checkpoint
with a missing or truncated rank file is one line naming the rank and the file. The
checkpoints here are laid out as DeepSpeed writes ZeRO-3 (2 ranks), built without running it,
so the streaming consolidation is also checked against the weights they were made from."""
import json
import logging
import math

import pytest
import torch
import yaml
from export_fixtures import tiny_encoder

from ptft_engine import cli
from ptft_engine.export import ExportError, export_checkpoint, export_model, load_export
from ptft_engine.export.writer import unique_state
from ptft_engine.models import DecoderConfig, build_model

MODEL = {"arch": "decoder", "vocab_size": 64, "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2,
         "max_position_embeddings": 16, "intermediate_size": 40}
OPTIM = "zero_pp_rank_{r}_mp_rank_00_optim_states.pt"


@pytest.fixture
def zero3_run(tmp_path):
    """run/config.yaml + run/checkpoints/step-00000001 with 2 ranks' ZeRO-3 files; returns (ckpt, model)."""
    torch.manual_seed(0)
    model = build_model(DecoderConfig(**{k: v for k, v in MODEL.items() if k != "arch"}))
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step-00000001"
    ckpt.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": MODEL}))
    (ckpt / "meta.json").write_text(json.dumps({"step": 1, "world_size": 2, "zero_stage": 3}))
    params = [(f"model.{n}", t) for n, t in unique_state(model)]
    shapes = [{n: list(t.shape) for n, t in params}]
    world = 2
    for r in range(world):
        flat = []
        for _, t in params:  # each parameter: ceil(numel / world) elements per rank, the last padded
            part = math.ceil(t.numel() / world)
            padded = torch.cat([t.flatten(), torch.zeros(part * world - t.numel())])
            flat.append(padded[r * part:(r + 1) * part])
        torch.save({"optimizer_state_dict": {"fp32_flat_groups": [torch.cat(flat)]}}, ckpt / OPTIM.format(r=r))
        torch.save({"module": {}, "param_shapes": shapes, "buffer_names": [], "ds_version": "test"},
                   ckpt / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")
    return ckpt, model


def test_zero3_consolidation_streams_the_exact_weights(zero3_run, tmp_path):
    ckpt, model = zero3_run
    manifest = export_checkpoint(ckpt, tmp_path / "out", max_shard_size="20KB")  # several shards
    assert manifest["source"]["world_size"] == 2
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    loaded = load_export(tmp_path / "out").model.state_dict()
    for name, t in model.state_dict().items():
        assert torch.equal(loaded[name], t), name


def _one_line_error(args, capsys) -> str:
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_rank_file_is_one_line_naming_rank_and_file(zero3_run, tmp_path, capsys):
    ckpt, _ = zero3_run
    (ckpt / OPTIM.format(r=1)).unlink()  # the last rank: no gap in the numbering, only meta.json tells
    err = _one_line_error(["export", str(ckpt), str(tmp_path / "out")], capsys)
    assert "rank 1" in err and OPTIM.format(r=1) in err and "world_size=2" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_truncated_rank_file_is_one_line_naming_rank_and_file(zero3_run, tmp_path, capsys):
    ckpt, _ = zero3_run
    path = ckpt / OPTIM.format(r=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    err = _one_line_error(["export", str(ckpt), str(tmp_path / "out")], capsys)
    assert "rank 1" in err and str(path) in err and "truncated" in err


@pytest.fixture
def unmanifested(tmp_path):
    export_model(tiny_encoder(), tmp_path / "exp")
    (tmp_path / "exp" / "manifest.json").unlink()
    return tmp_path / "exp"


def test_missing_manifest_warns(unmanifested, caplog):
    with caplog.at_level(logging.WARNING):
        load_export(unmanifested)
    assert any("no manifest.json" in r.getMessage() and "NOT checked" in r.getMessage() for r in caplog.records)


def test_missing_manifest_is_an_error_when_required(unmanifested, tmp_path, capsys):
    with pytest.raises(ExportError, match="no manifest.json"):
        load_export(unmanifested, require_manifest=True)
    err = _one_line_error(["export", str(unmanifested), str(tmp_path / "re"), "--require-manifest"], capsys)
    assert "no manifest.json (required)" in err
    assert cli.main(["export", str(unmanifested), str(tmp_path / "re2")]) == 0  # default: warn and go on
