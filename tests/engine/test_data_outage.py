"""A remote data source that goes away mid-run (real HTTP server on 127.0.0.1, real ranks on
gloo): the run stops before training on the batch it could not read, saves the last complete
step and exits 3 with one line naming the unreachable shard; with the server back,
`--resume auto` finishes, every sample of the epoch trained exactly once, no step on an empty
batch, and the shard index fetched once per start (not again at the epoch boundary)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from launching import HERE, spawn_ranks, tail, wait_all, wait_for_step
from test_elastic import rows_per_step

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from data_helpers import doc_text, write_text_shards  # noqa: E402
from http_helpers import ShardServer  # noqa: E402

pytestmark = pytest.mark.slow

RUNNER = HERE / "run_elastic.py"
RECIPE = Path(__file__).parents[2] / "configs" / "clm_tiny.yaml"
DOCS, STEPS, GLOBAL_DOCS = 60, 40, 2  # 30 steps an epoch: the run crosses into the next one


def recipe(root: Path, url: str) -> Path:
    from ptft_engine.data.tokenizer import train_tokenizer

    tok = train_tokenizer([doc_text(i) for i in range(DOCS)], kind="bpe", vocab_size=128, min_frequency=1)
    tok.save(str(root / "tok.json"))
    tree = yaml.safe_load(RECIPE.read_text())
    tree["model"] = {**yaml.safe_load((RECIPE.parent / tree["model"]).read_text()), "vocab_size": tok.get_vocab_size()}
    # a cache that holds no shard once it is closed: every shard read after the outage needs the server
    tree["data"] = {"shards": [url], "tokenizer": str(root / "tok.json"), "seq_len": 32, "batch_size": 2,
                    "packing": "batch", "num_workers": 2, "emit_sample_index": True, "shuffle": False,
                    "cache_dir": str(root / "cache"), "cache_max_gb": 1e-9, "prefetch_shards": 1,
                    "fetch_timeout_s": 2, "fetch_retries": 1}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize("world", [1, 2])
def test_outage_stops_with_a_checkpoint_and_resume_trains_every_sample_once(tmp_path, world):
    www = tmp_path / "www"
    www.mkdir()
    write_text_shards(www, DOCS)
    out = tmp_path / "runs"
    args = [f"run.output_dir={out}", "run.name=r", f"run.max_steps={STEPS}", "run.log_every=1", "run.eval_every=0",
            "run.progress_bar=false", "run.tensorboard=false", "run.dist_timeout_s=60", "checkpoint.every=4",
            "checkpoint.keep_last=2", "checkpoint.resume=auto", "deepspeed.zero_stage=1",
            f"data.docs_per_batch={GLOBAL_DOCS // world}", f"probe.samples={tmp_path / 'samples'}"]
    with ShardServer(str(www)) as srv:
        port, index_requests = srv.httpd.server_address[1], srv.requests
        path = recipe(tmp_path, f"{srv.url}/shards/")
        procs = spawn_ranks(world, [str(path), *args], out / "logs1", runner=RUNNER)
        wait_for_step(out / "r", 6, procs, timeout=120)
    # the server is gone (connections refused) mid-epoch
    codes = wait_all(procs, timeout=120)
    log = (out / "logs1" / "rank0.log").read_text()
    assert codes == [3] * world, (codes, tail(out / "logs1" / "rank0.log"))
    line = [ln for ln in log.splitlines() if ln.startswith("ptft pretrain: ")]
    assert len(line) == 1 and "data source unreachable: http://127.0.0.1:" in line[0], tail(out / "logs1" / "rank0.log")
    assert "--resume auto" in line[0] and "no update was made" in line[0]
    stopped = int(line[0].split("stopped before step ")[1].split(":")[0]) - 1
    assert 6 <= stopped < STEPS
    assert (out / "r" / "checkpoints" / f"step-{stopped:08d}").is_dir()  # the last complete step, saved
    logs = "".join(p.read_text() for p in (out / "logs1").glob("rank*.log"))
    assert "corrupt" not in logs and "its 7 samples are skipped" in logs  # (its ERROR level: test_data_remote)
    named = [ln.split(", its")[0] for ln in logs.splitlines() if ln.startswith("data source unreachable: shard")]
    assert len(named) == len(set(named)) > 0  # once per shard on the node, not per sample or per process
    steps = [json.loads(r)["step"] for r in (out / "r" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == stopped  # no record of a step past the stop: nothing trained on nothing

    with ShardServer(str(www), port=port) as srv:  # back, at the same URL
        procs = spawn_ranks(world, [str(path), *args], out / "logs2", runner=RUNNER)
        codes = wait_all(procs, timeout=180)
        assert codes == [0] * world, (codes, tail(out / "logs2" / "rank0.log"))
        assert srv.requests["index.json"] == world  # once per rank at start, not again at the epoch boundary
    assert index_requests["index.json"] == world
    resumed = (out / "logs2" / "rank0.log").read_text()
    assert f"resumed from {out / 'r' / 'checkpoints' / f'step-{stopped:08d}'}" in resumed

    assert_every_sample_once(tmp_path / "samples", out / "r")


def assert_every_sample_once(samples: Path, run_dir: Path) -> None:
    """Steps 1..STEPS each trained once on real data; each sample of epoch 0 in exactly one step."""
    rows = rows_per_step(samples)  # a step not trained before a stop is read again after the resume
    assert sorted(rows) == list(range(1, STEPS + 1))
    epoch0 = sorted(i for s in range(1, 31) for i in rows[s])
    assert epoch0 == list(range(DOCS))
    assert sorted(i for s in range(31, STEPS + 1) for i in rows[s]) == list(range((STEPS - 30) * GLOBAL_DOCS))
    train = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert all(r["data_tokens"] > 0 and r["loss"] > 0 and not r.get("data_skipped") for r in train)


def run_one(args: list[str], logs: Path) -> int:
    return wait_all(spawn_ranks(1, args, logs, runner=RUNNER), timeout=120)[0]


def test_strict_stop_on_a_corrupt_shard_saves_the_last_step_and_resumes(tmp_path):
    """data.strict=true and a shard whose bytes changed (sha256 mismatch): exit 3 before the step
    that reads it, with the step before saved; the shard put back, the resume trains every sample once."""
    write_text_shards(tmp_path, DOCS)
    shard = tmp_path / "shards" / "shard-000003.tar"  # docs 21..27: first read by step 11
    good = shard.read_bytes()
    shard.write_bytes(good[:1000] + bytes([good[1000] ^ 0xFF]) + good[1001:])
    out = tmp_path / "runs"
    args = [str(recipe(tmp_path, str(tmp_path / "shards"))), f"run.output_dir={out}", "run.name=r",
            f"run.max_steps={STEPS}", "run.log_every=1", "run.eval_every=0", "run.progress_bar=false",
            "run.tensorboard=false", "checkpoint.every=4", "checkpoint.resume=auto", "deepspeed.zero_stage=1",
            "data.strict=true", f"data.docs_per_batch={GLOBAL_DOCS}", f"probe.samples={tmp_path / 'samples'}"]
    assert run_one(args, out / "logs1") == 3, tail(out / "logs1/rank0.log")
    line = [ln for ln in (out / "logs1" / "rank0.log").read_text().splitlines() if ln.startswith("ptft pretrain: ")]
    assert len(line) == 1 and line[0].startswith("ptft pretrain: stopped before step 11: corrupt data in shard ")
    assert "shard-000003.tar" in line[0] and "checkpoint of step 10" in line[0]
    assert (out / "r" / "checkpoints" / "step-00000010").is_dir()
    shard.write_bytes(good)
    assert run_one(args, out / "logs2") == 0, tail(out / "logs2/rank0.log")
    assert_every_sample_once(tmp_path / "samples", out / "r")
