"""Elastic resume and async saves, with real processes on gloo and real text shards.

One run continues across four layouts: 2 ranks ZeRO-2 -> 1 rank ZeRO-2 -> 2 ranks ZeRO-3
-> 1 rank ZeRO-2. Its losses match an uninterrupted 1-rank run of the same global batch
within 1e-5, each rank of each segment reads the same rows per step as that run (every row
of the epoch once), the state a segment resumed equals the checkpoint it came from after
consolidation (bitwise), and metrics.jsonl says what changed. A kill -9 during an async
save leaves the previous checkpoint as `latest`, and the resume is bitwise exact. A resume
with another model config or tokenizer is one line, with nothing written.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest
import run_elastic
import torch
import yaml
from launching import HERE, read_losses, spawn_ranks, tail, wait_all

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from data_helpers import doc_text, write_text_shards  # noqa: E402

pytestmark = pytest.mark.slow

RUNNER = HERE / "run_elastic.py"
RECIPE = Path(__file__).parents[2] / "configs" / "clm_tiny.yaml"
STEPS, GLOBAL_BATCH = 12, 8
COMMON = [f"run.max_steps={STEPS}", "run.log_every=1", "run.eval_every=0", "run.progress_bar=false",
          "run.tensorboard=false", "run.dist_timeout_s=60", "train.lr=3e-3", "train.warmup_steps=2",
          "checkpoint.keep_last=10", "checkpoint.resume=auto"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    from ptft_engine.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("elastic")
    tok = train_tokenizer([doc_text(i) for i in range(60)], kind="bpe", vocab_size=128, min_frequency=1)
    tok.save(str(root / "tok.json"))
    tree = yaml.safe_load(RECIPE.read_text())
    tree["model"] = {**yaml.safe_load((RECIPE.parent / tree["model"]).read_text()), "vocab_size": tok.get_vocab_size()}
    tree["data"] = {"shards": [write_text_shards(root, 120)], "tokenizer": str(root / "tok.json"), "seq_len": 32,
                    "batch_size": 4, "num_workers": 0, "emit_sample_index": True}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def args_for(world: int, recipe: Path, out: Path, name: str, *extra: str) -> list[str]:
    batch = f"data.batch_size={GLOBAL_BATCH // world}"  # the same global batch on every world size
    return [str(recipe), *COMMON, batch, f"run.output_dir={out}", f"run.name={name}", *extra]


def launch(world: int, recipe: Path, out: Path, name: str, log: str, *extra: str) -> list:
    return spawn_ranks(world, args_for(world, recipe, out, name, *extra), out / log, runner=RUNNER)


def finish(procs, out: Path, log: str) -> None:
    codes = wait_all(procs, timeout=300)
    assert all(c == 0 for c in codes), (codes, tail(out / log / "rank0.log"))


def run(world: int, recipe: Path, out: Path, name: str, log: str, *extra: str) -> None:
    """Several ranks as processes; one rank in this process (spares a start-up)."""
    if world > 1:
        finish(launch(world, recipe, out, name, log, *extra), out, log)
    else:  # one thread, as the rank processes have (OMP_NUM_THREADS=1): bitwise comparable with them
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert run_elastic.main(args_for(1, recipe, out, name, *extra)) == 0
        finally:
            torch.set_num_threads(threads)


def rows_per_step(samples: Path) -> dict[int, list[int]]:
    """step -> the rows all ranks read in it (sorted); a later record of a step (a re-run after
    a resume) replaces the earlier one."""
    seen: dict[int, dict[int, list[int]]] = {}
    for f in sorted(samples.glob("rank*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            seen.setdefault(rec["step"], {})[rec["rank"]] = rec["index"]
    return {step: sorted(i for idx in ranks.values() for i in idx) for step, ranks in seen.items()}


def consolidated(ckpt: Path) -> dict[str, dict[str, torch.Tensor]]:
    from ptft_engine.export.zero import optimizer_tensors
    return {str(key): {n: t.clone() for n, t in optimizer_tensors(ckpt, key)}
            for key in (None, "exp_avg", "exp_avg_sq")}


def assert_same_state(a: Path, b: Path) -> None:
    sa, sb = consolidated(a), consolidated(b)
    for key in sa:
        assert sa[key].keys() == sb[key].keys(), key
        for name in sa[key]:
            assert torch.equal(sa[key][name], sb[key][name]), (a, b, key, name)


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory):
    """The uninterrupted run: 1 rank, ZeRO-2, 12 steps."""
    out = tmp_path_factory.mktemp("ref")
    run(1, recipe, out, "ref", "logs", "deepspeed.zero_stage=2", f"probe.samples={out / 'samples'}")
    return out


def test_elastic_resume_across_world_sizes_and_stages(recipe, reference, tmp_path):
    segments = [  # (world, stage, stop at step, changes the resume must report)
        (2, 2, 3, None),
        (1, 2, 6, ["world size 2 -> 1"]),
        (2, 3, 9, ["world size 1 -> 2", "ZeRO stage 2 -> 3"]),
        (1, 2, None, ["world size 2 -> 1", "ZeRO stage 3 -> 2"]),
    ]
    run_dir, ckpts = tmp_path / "r", tmp_path / "r" / "checkpoints"
    resumed_from = 0
    for i, (world, stage, stop, changes) in enumerate(segments):
        extra = [f"deepspeed.zero_stage={stage}", f"probe.samples={tmp_path / 'samples'}"]
        extra += [f"probe.stop_at={stop}"] if stop else []
        extra += [f"probe.resave_to={tmp_path / f'resaved{i}'}"] if i else []
        run(world, recipe, tmp_path, "r", f"logs{i}", *extra)
        if i:  # the state this segment started from == the checkpoint it resumed (consolidated)
            tag = f"step-{resumed_from:08d}"
            assert_same_state(ckpts / tag, tmp_path / f"resaved{i}" / tag)
        if world > 1 and i:
            assert f"(elastic: {', '.join(changes)})" in (tmp_path / f"logs{i}" / "rank0.log").read_text()
        resumed_from = stop or STEPS

    ref, got = read_losses(reference / "ref"), read_losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(ref[step], rel=1e-5), step
    assert got[STEPS] < got[1]  # it learns
    # data: each step read the uninterrupted run's rows, and no row twice across the switches
    rows, ref_rows = rows_per_step(tmp_path / "samples"), rows_per_step(reference / "samples")
    assert rows == ref_rows
    every = [i for step in range(1, STEPS + 1) for i in rows[step]]
    assert len(every) == STEPS * GLOBAL_BATCH and sorted(every) == list(range(STEPS * GLOBAL_BATCH))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    said = [(r["step"], r["changes"]) for r in records if r["split"] == "resume"]
    assert said == [(3, segments[1][3]), (6, segments[2][3]), (9, segments[3][3])]


def test_kill9_during_an_async_save_resumes_from_the_previous_one(recipe, reference, tmp_path):
    run_dir, ckpts = tmp_path / "k", tmp_path / "k" / "checkpoints"
    args = ["deepspeed.zero_stage=2", "checkpoint.every=2", "checkpoint.async_save=true"]
    procs = launch(1, recipe, tmp_path, "k", "logs1", *args, "probe.slow_write=0.5")
    deadline = time.monotonic() + 120
    while not (ckpts / "tmp-step-00000004").is_dir():  # step 4's snapshot taken, its files being written
        assert time.monotonic() < deadline and procs[0].poll() is None, tail(tmp_path / "logs1" / "rank0.log")
        time.sleep(0.02)
    procs[0].send_signal(signal.SIGKILL)
    wait_all(procs, timeout=30)
    assert (ckpts / "latest").read_text() == "step-00000002"
    assert not (ckpts / "tmp-step-00000004" / "meta.json").exists() and not (ckpts / "step-00000004").exists()

    run(1, recipe, tmp_path, "k", "logs2", *args)
    got, ref = read_losses(run_dir), read_losses(reference / "ref")
    assert [got[s] for s in range(1, STEPS + 1)] == [ref[s] for s in range(1, STEPS + 1)]  # bitwise
    assert not list(ckpts.glob("tmp-*"))


def test_a_resume_with_another_model_or_tokenizer_is_refused_and_writes_nothing(recipe, reference, tmp_path):
    from ptft_engine.config import load_run_config
    from ptft_engine.data.tokenizer import train_tokenizer
    from ptft_engine.engine import Trainer

    other_tok = tmp_path / "other.json"
    tok = train_tokenizer([doc_text(i) for i in range(60)], kind="bpe", vocab_size=300, min_frequency=1)  # merges
    tok.save(str(other_tok))
    before = {str(p): p.read_bytes() for p in sorted((reference / "ref").rglob("*")) if p.is_file()}
    base = [*COMMON, f"run.output_dir={reference}", "run.name=ref", "deepspeed.zero_stage=2"]
    mismatches = [("model.hidden_size=64", "model.hidden_size is 32 in the checkpoint but 64 in the config"),
                  (f"data.tokenizer={other_tok}", f"data.tokenizer {other_tok} differs from the tokenizer")]
    for override, message in mismatches:
        with pytest.raises(ValueError) as err:
            Trainer(load_run_config(recipe, [*base, override]))
        line = str(err.value)
        assert message in line and "\n" not in line, line
    after = {str(p): p.read_bytes() for p in sorted((reference / "ref").rglob("*")) if p.is_file()}
    assert after == before
