"""run.compile: the engine compiles the objective's forward in place, and the run still learns."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ptft_engine.config import load_run_config
from ptft_engine.engine import Trainer
from ptft_engine.engine.setup import build_objective_from_config, compile_objective, make_loader

pytestmark = pytest.mark.slow  # one short DeepSpeed run
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "clm_tiny.yaml"


def test_compiled_run_trains(tmp_path):
    cfg = load_run_config(CONFIG, [f"run.output_dir={tmp_path}", "run.name=c", "run.max_steps=12", "run.log_every=1",
                                   "run.eval_every=0", "run.progress_bar=false", "run.tensorboard=false",
                                   "run.compile=true", "run.compile_backend=aot_eager", "checkpoint.every=0",
                                   "train.warmup_steps=2", "train.lr=1e-2"])
    trainer = Trainer(cfg)
    try:
        assert trainer.engine.module._compiled_call_impl is not None  # compiled in place, names unchanged
        assert all(not n.startswith("_orig_mod") for n, _ in trainer.engine.module.named_parameters())
        state = trainer.fit()
    finally:
        trainer.close()
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "c" / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "train"]
    assert state.step == 12 and len(losses) == 12
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3


def test_mlm_objective_compiles_without_graph_breaks(monkeypatch):
    """MLM's loss on the selected rows has a data-dependent shape: compile_objective traces it, one graph."""
    monkeypatch.setattr(torch._dynamo.config, "capture_dynamic_output_shape_ops", False)  # restored after
    cfg = load_run_config(CONFIG.with_name("mlm_tiny.yaml"), [])
    batch = next(iter(make_loader(cfg, rank=0, world_size=1, epoch=0)))
    torch._dynamo.reset()
    assert torch._dynamo.explain(build_objective_from_config(cfg))(batch).graph_break_count > 0  # eager default
    objective = build_objective_from_config(cfg)
    compile_objective(objective, "aot_eager")
    assert torch._dynamo.explain(build_objective_from_config(cfg))(batch).graph_break_count == 0
    assert torch.isfinite(objective(batch)["loss"])
