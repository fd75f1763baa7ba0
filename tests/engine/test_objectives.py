"""Each objective's tiny recipe trains through the engine (one rank) and its loss falls."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptft_engine.config import load_run_config
from ptft_engine.engine import Trainer

pytestmark = pytest.mark.slow  # each recipe trains through DeepSpeed

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.mark.parametrize("recipe, lr, drop, reported", [
    ("clm_tiny", 1e-2, 0.8, set()), ("mlm_tiny", 1e-2, 0.5, set()), ("simclr_tiny", 3e-3, 0.2, {"accuracy"}),
    ("clip_tiny", 3e-3, 0.8, {"accuracy", "logit_scale"}),
])
def test_recipe_loss_falls(tmp_path, recipe, lr, drop, reported):
    cfg = load_run_config(CONFIGS / f"{recipe}.yaml", [
        f"run.output_dir={tmp_path}", "run.max_steps=30", "run.log_every=1", "run.eval_every=0",
        "run.progress_bar=false", "run.tensorboard=false", f"train.lr={lr}", "train.warmup_steps=3",
        "checkpoint.save_at_end=false", "checkpoint.every=0"])
    trainer = Trainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.close()
    records = [json.loads(line) for line in (tmp_path / recipe / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]  # not the end-of-run summary
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - drop, (recipe, losses)
    # what the objective reports beside its loss reaches metrics.jsonl, a mean over the step
    train = [r for r in records if r["split"] == "train"]
    assert all(reported <= r.keys() for r in train) and not any(k.startswith("num_") for k in train[0])
    if "accuracy" in reported:
        accuracy = [r["accuracy"] for r in train]
        assert all(0 <= a <= 1 for a in accuracy) and sum(accuracy[-3:]) > sum(accuracy[:3]), accuracy
