"""Async saves in one process: the host snapshot, a failed background write, HF exports."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ptft_engine.engine import async_save

RECIPE = Path(__file__).parents[2] / "configs" / "clm_tiny.yaml"


def test_snapshot_copies_once_per_storage_and_keeps_views():
    flat = torch.arange(10.0)
    state = {"a": flat[:4], "b": flat[4:].view(2, 3), "tied": [flat[:4]], "n": 3, "t": (flat, "x"),
             "shape": torch.Size([2, 3])}  # DeepSpeed's param_shapes: zero_to_fp32 calls .numel() on them
    snap = async_save.snapshot(state)
    flat.add_(100)  # training goes on: the snapshot must not move
    assert torch.equal(snap["a"], torch.arange(4.0)) and torch.equal(snap["b"], torch.arange(4.0, 10).view(2, 3))
    assert snap["a"].untyped_storage().data_ptr() == snap["b"].untyped_storage().data_ptr() \
        == snap["tied"][0].untyped_storage().data_ptr() != flat.untyped_storage().data_ptr()
    assert snap["n"] == 3 and snap["t"][1] == "x" and snap["b"].stride() == (3, 1)
    assert type(snap["shape"]) is torch.Size and type(snap["t"]) is tuple


def _trainer(tmp_path, *extra):
    from ptft_engine.config import load_run_config
    from ptft_engine.engine import Trainer
    return Trainer(load_run_config(RECIPE, [f"run.output_dir={tmp_path}", "run.name=t", "run.progress_bar=false",
                                            "run.tensorboard=false", "run.log_every=1", "deepspeed.zero_stage=2",
                                            *extra]))


def test_a_failed_background_write_is_an_error_and_never_complete(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, "run.max_steps=2", "checkpoint.every=1")

    def disk_full(obj, path, *a):
        raise OSError(28, "No space left on device")
    try:
        monkeypatch.setattr(async_save, "write_file", disk_full)
        with pytest.raises(RuntimeError, match="rank 0: background checkpoint write failed: .*No space left"):
            trainer.fit()
    finally:
        trainer.close()
    ckpts = tmp_path / "t" / "checkpoints"
    assert not list(ckpts.glob("step-*")) and not (ckpts / "latest").exists()


def test_export_hf_every_n_saves_and_at_the_end(tmp_path):
    trainer = _trainer(tmp_path, "run.max_steps=4", "checkpoint.every=1", "checkpoint.export_hf_every=3")
    try:
        trainer.fit()
    finally:
        trainer.close()
    exports = tmp_path / "t" / "exports"
    assert sorted(p.name for p in exports.iterdir()) == ["step-00000003-hf", "step-00000004-hf"]
    for d in exports.iterdir():
        manifest = json.loads((d / "manifest.json").read_text())
        assert (d / "model.safetensors").is_file()
        assert json.loads((d / "config.json").read_text())["model_type"] == "gpt2"
        assert manifest["source"]["step"] == int(d.name.split("-")[1])
