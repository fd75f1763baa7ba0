"""Elastic resume onto other layouts of one rank, in this process: ZeRO-3 -> ZeRO-2 with the
optimizer offloaded -> ZeRO-0. The state loaded into each, saved again at once, equals the
checkpoint it came from after consolidation, bit for bit; then training goes on."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ptft_engine.config import load_run_config
from ptft_engine.engine import Trainer
from ptft_engine.export.zero import optimizer_tensors

RECIPE = Path(__file__).parents[2] / "configs" / "clm_tiny.yaml"
pytestmark = pytest.mark.slow  # three DeepSpeed engines


def _trainer(tmp_path, *extra):
    return Trainer(load_run_config(RECIPE, [f"run.output_dir={tmp_path}", "run.name=t", "run.progress_bar=false",
                                            "run.tensorboard=false", "checkpoint.resume=auto", *extra]))


def _same(a: Path, b: Path) -> None:
    for key in (None, "exp_avg", "exp_avg_sq"):
        sa, sb = dict(optimizer_tensors(a, key)), dict(optimizer_tensors(b, key))
        assert sa.keys() == sb.keys() and len(sa) > 1, key
        for name in sa:
            assert torch.equal(sa[name], sb[name]), (key, name)


def test_resume_onto_offload_and_stage_0_keeps_the_state_bitwise(tmp_path):
    trainer = _trainer(tmp_path, "run.max_steps=2", "deepspeed.zero_stage=3")
    try:
        trainer.fit()
    finally:
        trainer.close()
    ckpts = tmp_path / "t" / "checkpoints"
    for i, (layout, changes) in enumerate([
            (["deepspeed.zero_stage=2", "deepspeed.offload_optimizer=true"],
             ["ZeRO stage 3 -> 2", "offload_optimizer False -> True"]),
            (["deepspeed.zero_stage=0"], ["ZeRO stage 2 -> 0", "offload_optimizer True -> False"])]):
        trainer = _trainer(tmp_path, f"run.max_steps={3 + i}", *layout)
        try:
            assert trainer.resume_changes == changes and trainer.state.step == 2 + i
            own, trainer.ckpt_dir = trainer.ckpt_dir, tmp_path / f"resaved{i}"
            trainer.last_saved_step = -1
            trainer.save()
            trainer.settle_saves()
            _same(ckpts / f"step-{2 + i:08d}", trainer.ckpt_dir / f"step-{2 + i:08d}")
            trainer.ckpt_dir = own
            assert trainer.fit().step == 3 + i  # and it trains on from there
        finally:
            trainer.close()
