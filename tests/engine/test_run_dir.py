"""A run directory belongs to one run (in this process, one rank): a re-used name is refused
and nothing changes, --overwrite moves the old run aside, a lock keeps a second job out,
pruning follows write order, metrics hold each step once after a resume; start-time checks
refuse a bad config/data pair before anything is written."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from toy import ToyCausalLM

from ptft_engine.config import load_run_config
from ptft_engine.engine import Trainer, checkpoint
from ptft_engine.engine.checks import StartCheckError
from ptft_engine.engine.rundir import RunLock

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from data_helpers import doc_text, write_text_shards  # noqa: E402

BASE = ["data.synthetic=true", "data.batch_size=4", "data.seq_len=16", "run.log_every=1", "run.progress_bar=false",
        "run.tensorboard=false", "train.lr=1e-2"]
RECIPE = Path(__file__).parents[2] / "configs" / "clm_tiny.yaml"


def make(tmp_path, *overrides, overwrite=False, crash_at=None):
    cfg = load_run_config(None, [*BASE, f"run.output_dir={tmp_path}", "run.name=t", *overrides])
    trainer = Trainer(cfg, objective_factory=lambda: ToyCausalLM(vocab_size=cfg.data.vocab_size), overwrite=overwrite)
    if crash_at is not None:
        real_step = trainer._train_step

        def step():
            if trainer.state.step + 1 == crash_at:
                raise KeyboardInterrupt("simulated crash")
            return real_step()
        trainer._train_step = step
    return trainer


def run(trainer):
    try:
        return trainer.fit()
    finally:
        trainer.close()


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def steps(run_dir: Path, split="train") -> list[int]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in recs if r["split"] == split]


def test_reused_name_is_refused_unchanged_and_overwrite_moves_it_aside(tmp_path):
    run(make(tmp_path, "run.max_steps=3"))
    before = snapshot(tmp_path)
    with pytest.raises(StartCheckError, match=r"t already holds a run; continue it with --resume auto") as err:
        make(tmp_path, "run.max_steps=3", "train.lr=0.5")
    assert "\n" not in str(err.value)
    assert snapshot(tmp_path) == before  # config.yaml, metrics, checkpoints, lock: byte for byte

    with pytest.raises(StartCheckError, match="--overwrite starts anew and --resume continues the run"):
        make(tmp_path, "run.max_steps=3", "checkpoint.resume=auto", overwrite=True)
    assert snapshot(tmp_path) == before
    run(make(tmp_path, "run.max_steps=2", overwrite=True))
    old = [p for p in tmp_path.iterdir() if p.name.startswith("t.old-")]
    assert len(old) == 1 and snapshot(old[0]) == {k[2:]: v for k, v in before.items()}  # moved, not deleted
    assert steps(tmp_path / "t") == [1, 2]


def test_a_lock_keeps_a_second_live_job_out(tmp_path):
    run(make(tmp_path, "run.max_steps=2"))
    held = RunLock(tmp_path / "t").acquire()  # another job (an open file description of its own)
    try:
        before = snapshot(tmp_path)
        with pytest.raises(StartCheckError, match=r"in use by a live job \(host=\S+ pid=\d+"):
            make(tmp_path, "run.max_steps=4", "checkpoint.resume=auto")
        assert snapshot(tmp_path) == before
    finally:
        held.release()
    assert run(make(tmp_path, "run.max_steps=4", "checkpoint.resume=auto")).step == 4  # free again


def test_pruning_and_latest_follow_write_order_not_step_numbers(tmp_path):
    run(make(tmp_path, "run.max_steps=8", "checkpoint.every=2", "checkpoint.keep_last=3"))
    ckpts = tmp_path / "t" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000004", "step-00000006", "step-00000008"]
    # branch off at step 4: the new saves (5, 6) are newer than the abandoned branch's step 8
    state = run(make(tmp_path, "run.max_steps=6", "checkpoint.every=1", "checkpoint.keep_last=3",
                     f"checkpoint.resume={ckpts / 'step-00000004'}"))
    assert state.step == 6
    assert [p.name for p in checkpoint.complete_checkpoints(ckpts)] == ["step-00000008", "step-00000005",
                                                                        "step-00000006"]
    assert checkpoint.find_latest(ckpts).name == "step-00000006" == (ckpts / "latest").read_text()
    assert run(make(tmp_path, "run.max_steps=7", "checkpoint.resume=auto")).step == 7  # continues 6, not 8


def test_metrics_hold_each_step_once_after_a_resume(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(make(tmp_path, "run.max_steps=8", "checkpoint.every=3", crash_at=8))  # saved 3, 6; logged 1..7
    state = run(make(tmp_path, "run.max_steps=8", "checkpoint.every=3", "checkpoint.resume=auto"))
    assert state.step == 8
    assert steps(tmp_path / "t") == list(range(1, 9))
    assert steps(tmp_path / "t", "summary") == [8]
    superseded = (tmp_path / "t" / "metrics.superseded.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in superseded] == [7]  # kept aside, not lost


# ------------------------------------------------------------------ start-time checks (real shards)

@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    from ptft_engine.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("text")
    tok = train_tokenizer([doc_text(i) for i in range(40)], kind="bpe", vocab_size=128, min_frequency=1)
    tok.save(str(root / "tok.json"))
    return write_text_shards(root, 40), write_text_shards(root, 3, name="small_eval"), str(root / "tok.json"), \
        tok.get_vocab_size()


def real_cfg(tmp_path, text_data, *overrides):
    import yaml

    shards, small_eval, tok, vocab = text_data
    tree = yaml.safe_load(RECIPE.read_text())
    tree["model"] = {**yaml.safe_load((RECIPE.parent / tree["model"]).read_text()), "vocab_size": vocab}
    tree["data"] = {"shards": [shards], "eval_shards": [small_eval], "tokenizer": tok, "seq_len": 32,
                    "batch_size": 2, "packing": "batch", "docs_per_batch": 4, "num_workers": 0}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tree))
    return load_run_config(recipe, [f"run.output_dir={tmp_path / 'runs'}", "run.max_steps=2", "run.progress_bar=false",
                                    "run.tensorboard=false", *overrides])


@pytest.mark.parametrize("overrides, message", [
    (["model.vocab_size=16"], r"tokenizer \S+tok.json has \d+ tokens but model vocab_size is 16"),
    (["data.seq_len=128"], r"data.seq_len 128 > model max_position_embeddings 64"),
    (["run.eval_every=1"], r"eval set \(data.eval_shards\): 3 samples cannot fill one step of 1 ranks x 4"),
])
def test_start_checks_refuse_before_anything_is_written(tmp_path, text_data, overrides, message):
    cfg = real_cfg(tmp_path, text_data, *overrides)
    with pytest.raises((StartCheckError, ValueError), match=message) as err:
        Trainer(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()  # no config.yaml, no run directory


def test_a_tokenizer_without_the_objectives_special_tokens_is_refused_at_start(tmp_path, text_data):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([doc_text(i) for i in range(40)],
                            trainer=trainers.BpeTrainer(vocab_size=64, special_tokens=["[UNK]", "[PAD]"]))
    tok.save(str(tmp_path / "plain.json"))
    with pytest.raises(StartCheckError, match=r"plain.json' has no cls token") as err:
        Trainer(real_cfg(tmp_path, text_data, f"data.tokenizer={tmp_path / 'plain.json'}"))
    assert "\n" not in str(err.value) and not (tmp_path / "runs").exists()


def test_start_checks_pass_on_a_good_pair(tmp_path, text_data):
    trainer = Trainer(real_cfg(tmp_path, text_data, "run.eval_every=0"))
    assert run(trainer).step == 2


def test_a_forked_child_does_not_keep_the_run_locked(tmp_path):
    # DataLoader workers are forked from the rank: one that outlives a kill -9'd rank must not hold its lock
    held = RunLock(tmp_path / "t").acquire()
    to_child, from_child = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: running (fork hooks done); wait until the parent's lock is gone, live on a moment
        os.write(from_child[1], b"r")
        os.read(to_child[0], 1)
        time.sleep(0.5)
        os._exit(0)
    try:
        os.read(from_child[0], 1)
        held._fh.close()  # what the parent's death does: its descriptor closes, no explicit unlock
        os.write(to_child[1], b"x")
        RunLock(tmp_path / "t").acquire().release()  # free while the child still lives
    finally:
        os.waitpid(pid, 0)


def test_a_start_that_fails_after_the_lock_leaves_no_run_directory(tmp_path):
    """The objective is built after the run directory is locked: a bad objective (here: its
    factory raises, as a missing k-means file does) leaves no half-made run behind, and a
    failure in an existing run's directory changes nothing there."""
    cfg = load_run_config(None, [*BASE, f"run.output_dir={tmp_path}", "run.name=t", "run.max_steps=2"])

    def broken():
        raise ValueError("objective.kmeans_path: not found")
    with pytest.raises(ValueError, match="kmeans_path"):
        Trainer(cfg, objective_factory=broken)
    assert not (tmp_path / "t").exists()

    run(make(tmp_path, "run.max_steps=2"))
    before = {k: v for k, v in snapshot(tmp_path / "t").items() if k != ".lock"}  # holds the last pid
    resumed = load_run_config(None, [*BASE, f"run.output_dir={tmp_path}", "run.name=t", "run.max_steps=4",
                                     "checkpoint.resume=auto"])
    with pytest.raises(ValueError, match="kmeans_path"):
        Trainer(resumed, objective_factory=broken)
    assert {k: v for k, v in snapshot(tmp_path / "t").items() if k != ".lock"} == before
