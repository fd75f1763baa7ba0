"""run.compile: the engine compiles the objective's forward in place, and the run still learns."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptft_engine.config import load_run_config
from ptft_engine.engine import Trainer

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
