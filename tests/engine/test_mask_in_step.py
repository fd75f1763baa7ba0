"""`data.mask_in: step`: the loader hands MLM batches out unmasked and the trainer masks
them on the step's device through the mlm op — with the very masks the loader's workers
would have drawn (the same Philox stream, keyed by row and position)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))

from data_helpers import doc_text, write_text_shards  # noqa: E402

from ptft_engine.config import load_run_config  # noqa: E402
from ptft_engine.data import build_loader  # noqa: E402
from ptft_engine.data.tokenizer import train_tokenizer  # noqa: E402
from ptft_engine.engine import Trainer  # noqa: E402

MODELS = Path(__file__).parents[2] / "configs" / "models"


@pytest.mark.slow  # a training run through DeepSpeed
def test_the_step_masks_as_the_workers_would(tmp_path):
    tok = train_tokenizer([doc_text(i) for i in range(60)], kind="bpe", vocab_size=128, min_frequency=1)
    tok.save(str(tmp_path / "tok.json"))
    model = {**yaml.safe_load((MODELS / "bert-tiny.yaml").read_text()), "vocab_size": tok.get_vocab_size()}
    data = {"shards": [write_text_shards(tmp_path, 30)], "tokenizer": str(tmp_path / "tok.json"),
            "seq_len": 32, "batch_size": 2, "num_workers": 0, "mask_in": "step", "seed": 5}
    recipe = tmp_path / "mlm.yaml"
    recipe.write_text(yaml.safe_dump({"model": model, "objective": {"name": "mlm"}, "data": data}))
    cfg = load_run_config(recipe, ["run.max_steps=3", "run.device=cpu", "run.progress_bar=false",
                                   "run.tensorboard=false", f"run.output_dir={tmp_path}", "run.name=mlm",
                                   "checkpoint.save_at_end=false", "run.log_every=1"])
    trainer = Trainer(cfg)
    seen = []
    on_device = trainer.loader.on_device
    trainer.loader.on_device = lambda batch: seen.append(on_device(batch)) or seen[-1]
    try:
        state = trainer.fit()  # without the step's masking the MLM objective has no labels and fails
    finally:
        trainer.close()
    assert state.step == 3 and len(seen) == 3
    in_workers = list(build_loader(cfg.data.model_copy(update={"mask_in": "worker"}), objective="mlm"))[:3]
    for got, expected in zip(seen, in_workers):
        assert got.keys() == expected.keys() and "mlm_sample_ids" not in got
        for key in expected:
            assert torch.equal(got[key], expected[key]), key
        assert (got["labels"] != -100).any()  # masked: some tokens were selected
