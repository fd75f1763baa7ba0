"""The engine on real WebDataset shards (the data package's loader): training crosses an
epoch boundary, and a crash + resume from a checkpoint in the next epoch repeats the
uninterrupted run's losses bitwise."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))

from data_helpers import doc_text, write_text_shards  # noqa: E402

from ptft_engine.config import load_run_config  # noqa: E402
from ptft_engine.data.tokenizer import train_tokenizer  # noqa: E402
from ptft_engine.engine import Trainer  # noqa: E402

pytestmark = pytest.mark.slow  # training runs over real shards through DeepSpeed

RECIPE = Path(__file__).parents[2] / "configs" / "clm_tiny.yaml"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    tok = train_tokenizer([doc_text(i) for i in range(60)], kind="bpe", vocab_size=128, min_frequency=1)
    tok.save(str(root / "tok.json"))
    return write_text_shards(root, 61), str(root / "tok.json"), tok.get_vocab_size()


def cfg_for(tmp_path, shards, name):
    shard_dir, tok, vocab = shards
    # the recipe's synthetic data section is replaced by real shards (an override can't drop keys)
    recipe = tmp_path / f"{name}.yaml"
    import yaml
    tree = yaml.safe_load(RECIPE.read_text())
    tree["model"] = {**yaml.safe_load((RECIPE.parent / tree["model"]).read_text()), "vocab_size": vocab}
    tree["data"] = {"shards": [shard_dir], "tokenizer": tok, "seq_len": 32, "batch_size": 4, "num_workers": 0,
                    "samples_per_epoch": 15}  # a short epoch: the run crosses its end
    recipe.write_text(yaml.safe_dump(tree))
    return load_run_config(recipe, [f"run.output_dir={tmp_path}", f"run.name={name}", "run.max_steps=20",
                                    "run.log_every=1", "run.eval_every=0", "run.progress_bar=false",
                                    "run.tensorboard=false", "checkpoint.every=8", "checkpoint.resume=auto",
                                    "deepspeed.zero_stage=1", "train.lr=3e-3"])


def train(cfg, crash_at=None):
    trainer = Trainer(cfg)
    if crash_at is not None:
        real_step = trainer._train_step

        def step():
            if trainer.state.step + 1 == crash_at:
                raise KeyboardInterrupt("simulated crash")
            return real_step()
        trainer._train_step = step
    try:
        return trainer.fit(), trainer
    finally:
        trainer.close()


def losses(run_dir):
    recs = [r for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if (r := json.loads(line))["split"] == "train"]  # not the end-of-run summary
    return {r["step"]: r["loss"] for r in recs}, recs


def test_real_shards_cross_epochs_and_resume_exactly(tmp_path, shards):
    state, trainer = train(cfg_for(tmp_path, shards, "ref"))
    ref, recs = losses(tmp_path / "ref")
    assert state.step == 20 and state.epoch >= 1 and recs[-1]["epoch"] >= 1  # crossed an epoch
    assert len(trainer.loader) < 20

    cfg = cfg_for(tmp_path, shards, "crashy")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, crash_at=18)
    state, trainer = train(cfg)  # resumes from step 16, in the second epoch
    got, _ = losses(tmp_path / "crashy")
    assert state.step == 20
    assert [got[s] for s in range(1, 21)] == [ref[s] for s in range(1, 21)]


def test_audio_shards_resume_exactly_with_the_objectives_random_masks(tmp_path):
    """wav2vec 2.0 draws its span masks and distractors from torch's global RNG in the step, so
    nothing between a resume's RNG restore and its first step may draw from it (a DataLoader
    iterator draws its base seed there unless it has a generator of its own). One intra-op thread:
    with two, the weight gradient of the first conv LayerNorm (torch's CPU kernel) now and then
    differed in the last bit between two identical runs in one process (about one run in four)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _audio_resume_is_exact(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _audio_resume_is_exact(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "export"))
    from test_wav2vec2_export import _write_audio_shards

    shards = _write_audio_shards(tmp_path)
    recipe = Path(__file__).parents[2] / "configs" / "wav2vec2_tiny.yaml"

    def cfg(name):
        return load_run_config(recipe, [
            f"data={{shards: [{shards}], kind: audio, batch_size: 4, audio_crop_samples: 9600, num_workers: 0}}",
            f"run.output_dir={tmp_path}", f"run.name={name}", "run.max_steps=12", "run.log_every=1",
            "run.eval_every=0", "run.progress_bar=false", "run.tensorboard=false", "run.device=cpu",
            "checkpoint.every=5", "checkpoint.resume=auto"])

    train(cfg("ref"))
    ref, _ = losses(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        train(cfg("crashy"), crash_at=9)
    state, _ = train(cfg("crashy"))  # resumes from step 5, in the second epoch (6 batches an epoch)
    got, _ = losses(tmp_path / "crashy")
    assert state.step == 12
    assert [got[s] for s in range(1, 13)] == [ref[s] for s in range(1, 13)]
