"""Remote shard sources through a real HTTP server on 127.0.0.1 and `pipe:` commands: the
same batches as the local copy (2 ranks x 2 workers, also resumed mid-epoch), faults
retried then skipped and counted (strict: one line naming the URL), never a hang, the
cache bound, two processes filling one cache, and `ptft shard --index-only`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from data_helpers import doc_text, write_text_shards
from http_helpers import ShardServer

from ptft_engine.data import CorruptSampleError, DataConfig, DataError, build_loader
from ptft_engine.data.errors import SourceUnreachable
from ptft_engine.data.index import load_index

N_SHARDS = 9  # 61 docs in shards of 7


@pytest.fixture
def corpus(tmp_path):
    """61 docs in 9 shards of 7 (the last 5) under tmp/www/shards."""
    (tmp_path / "www").mkdir()
    return write_text_shards(tmp_path / "www", 61)


def _cfg(spec, tok, cache, **kw):
    # packing: batch, so positions are documents (the packing plan over HTTP: test_plan_rows_over_http)
    return DataConfig(**{**dict(shards=[spec], tokenizer=tok, seq_len=32, batch_size=2, docs_per_batch=3,
                                packing="batch", num_workers=0, emit_sample_index=True, cache_dir=str(cache),
                                fetch_timeout_s=5, fetch_retries=2), **kw})


def _batches(loader, n=None):
    out = []
    for b in loader:
        out.append({k: v.clone() for k, v in b.items() if isinstance(v, torch.Tensor)})
        if n is not None and len(out) == n:
            break
    return out


def _same(a, b):
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_http_batches_equal_local_on_2_ranks_x_2_workers_and_resume(corpus, tok_path, tmp_path):
    cache = tmp_path / "cache"
    with ShardServer(str(tmp_path / "www")) as srv:
        url = f"{srv.url}/shards/"
        for rank in range(2):
            local = build_loader(_cfg(corpus, tok_path, cache, num_workers=2), objective="mlm", rank=rank, world_size=2)
            remote = build_loader(_cfg(url, tok_path, cache, num_workers=2), objective="mlm", rank=rank, world_size=2)
            ref = _batches(local)
            _same(ref, _batches(remote))
            # resume mid-epoch through HTTP: the rest of the epoch is the same too
            first = build_loader(_cfg(url, tok_path, cache, num_workers=2), objective="mlm", rank=rank, world_size=2)
            head = _batches(first, n=3)
            resumed = build_loader(_cfg(url, tok_path, cache, num_workers=2), objective="mlm", rank=rank, world_size=2)
            resumed.load_state_dict(first.state_dict())
            _same(ref, head + _batches(resumed))
        # each shard and sidecar came over the wire once for the node (ranks and workers share the cache)
        assert all(srv.requests[f"shard-{i:06d}.{ext}"] == 1 for i in range(N_SHARDS) for ext in ("tar", "idx"))
        assert remote.stats["cache_hits"] > 0 and remote.stats["corrupt_shards"] == 0


def test_plan_rows_over_http_equal_local_with_raw_and_pretokenised_shards(corpus, tok_path, tmp_path):
    """The packing plan (the default) through HTTP: token lengths by one pass through the cache
    for raw text, from the fetched .lens sidecars for pre-tokenised shards; the same rows as local."""
    from ptft_engine.data import sources
    from ptft_engine.data.shards import write_shards

    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": doc_text(i)}) + "\n" for i in range(61)))
    write_shards([str(src)], str(tmp_path / "www" / "pre"), sources.Options(format="jsonl", tokenizer=tok_path),
                 shard_samples=7, workers=1, progress=False)
    plan = dict(packing="plan", docs_per_batch="auto", num_workers=2)
    with ShardServer(str(tmp_path / "www")) as srv:
        for name, local in (("shards", corpus), ("pre", str(tmp_path / "www" / "pre"))):
            ref = _batches(build_loader(_cfg(local, tok_path, tmp_path / "c0", **plan), objective="mlm", rank=1,
                                        world_size=2))
            remote = build_loader(_cfg(f"{srv.url}/{name}/", tok_path, tmp_path / f"c-{name}", **plan),
                                  objective="mlm", rank=1, world_size=2)
            _same(ref, _batches(remote))
        assert all(srv.requests[f"shard-{i:06d}.lens"] == 1 for i in range(N_SHARDS))  # pre/ only
        assert remote.builder.id_shards  # the pre-tokenised ids were read, not the text tokenised


def test_brace_range_and_pipe_sources(corpus, tok_path, tmp_path):
    ref = _batches(build_loader(_cfg(corpus, tok_path, tmp_path / "c0"), objective="clm"))
    with ShardServer(str(tmp_path / "www")) as srv:
        braces = f"{srv.url}/shards/shard-{{000000..000008}}.tar"
        loader = build_loader(_cfg(braces, tok_path, tmp_path / "c1"), objective="clm")
        assert set(srv.requests) == {"index.json"}  # at start: the index only, nothing per shard
        _same(ref, _batches(loader))
        assert loader.stats["downloads"] == N_SHARDS and loader.stats["download_bytes"] > 0
        # a sub-range names only some shards
        part = build_loader(_cfg(f"{srv.url}/shards/shard-{{000000..000002}}.tar", tok_path, tmp_path / "c1",
                                 docs_per_batch=1, batch_size=1, shuffle=False), objective="clm")
        assert len(_batches(part)) == 21
    pipe = build_loader(_cfg(f"pipe:cat {corpus}/shard-{{000000..000008}}.tar", tok_path, tmp_path / "c2"),
                        objective="clm")
    _same(ref, _batches(pipe))
    assert pipe.stats["downloads"] == N_SHARDS


def test_faults_are_retried_then_skipped_and_counted(corpus, tok_path, tmp_path, caplog):
    ref = _batches(build_loader(_cfg(corpus, tok_path, tmp_path / "c0", shuffle=False), objective="clm"))
    with ShardServer(str(tmp_path / "www"), stall_s=30) as srv:
        url = f"{srv.url}/shards/?sig=SECRET"  # a query token: never in a message
        srv.faults = {"shard-000001.tar": ["500", "cut"],  # two failures, then fine: retried, nothing lost
                      "shard-000003.tar": ["stall"],  # half a body then silence: the timeout ends it
                      "shard-000005.tar": ["flip", "flip", "flip"]}  # every attempt corrupt: skipped
        start = time.monotonic()
        loader = build_loader(_cfg(url, tok_path, tmp_path / "c1", shuffle=False, fetch_timeout_s=1,
                                   num_workers=2), objective="clm")
        got = _batches(loader)
        assert time.monotonic() - start < 25  # bounded: no hang on the stalled transfer
        assert srv.requests["shard-000001.tar"] == 3 and srv.requests["shard-000003.tar"] == 2
        assert srv.requests["shard-000005.tar"] == 3  # fetch_retries=2: three attempts, then given up
        assert loader.stats["retries"] == 2 + 1 + 2 and loader.stats["corrupt_shards"] == 1
        assert loader.stats["skipped"] == 7 and loader.stats["samples"] == 61 - 7 - 1  # the epoch's cut tail: 1
        kept = {p for b in got for p in b["sample_index"].tolist()}
        assert kept == {p for b in ref for p in b["sample_index"].tolist()} - set(range(35, 42))
        assert "SECRET" not in caplog.text

        # strict: one line naming the shard's URL (without its token); a 5xx is an unreachable source
        srv.faults = {"shard-000000.tar": ["500"] * 3}
        with pytest.raises(SourceUnreachable) as err:
            _batches(build_loader(_cfg(url, tok_path, tmp_path / "c2", shuffle=False, strict=True), objective="clm"))
        msg = str(err.value)
        assert "\n" not in msg and f"{srv.url}/shards/shard-000000.tar" in msg and "SECRET" not in msg
        assert msg.startswith("data source unreachable:") and "gave up after 3 attempts" in msg
        # corrupt (every attempt flipped) stays corrupt in strict mode
        srv.faults = {"shard-000000.tar": ["flip"] * 3}
        with pytest.raises(CorruptSampleError, match="corrupt data in shard .*shard-000000.tar"):
            _batches(build_loader(_cfg(url, tok_path, tmp_path / "c3", shuffle=False, strict=True), objective="clm"))


def test_a_source_gone_after_start_is_unreachable_once_per_shard_not_corrupt(corpus, tok_path, tmp_path, caplog):
    """The server goes away after the index was read: each shard not yet cached is one ERROR
    line naming its URL and sample count, the batch is flagged for the trainer, nothing says corrupt."""
    with ShardServer(str(tmp_path / "www")) as srv:
        url = f"{srv.url}/shards/"
        loader = build_loader(_cfg(url, tok_path, tmp_path / "c", shuffle=False, fetch_retries=1), objective="clm")
    with caplog.at_level("WARNING", logger="ptft_engine.data"):
        flags = []
        for _ in loader:
            flags.append(loader.problem)
    assert "corrupt" not in caplog.text
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == N_SHARDS and len(caplog.records) == N_SHARDS  # once per shard, nothing per sample
    assert "shard http://127.0.0.1:" in errors[0].getMessage() and "its 7 samples are skipped" in errors[0].getMessage()
    assert "Failed to connect" in errors[0].getMessage() or "Couldn't connect" in errors[0].getMessage()
    assert all(f is not None and f[0] == "unreachable" and "data source unreachable: http" in f[1] for f in flags)
    assert loader.stats["unreachable"] == loader.stats["skipped"] == 60  # the epoch's cut tail: 1 not read
    assert loader.stats["unreachable_shards"] == N_SHARDS and loader.stats.get("corrupt_shards", 0) == 0
    # an index behind an unreachable server: said so, without the advice to make one (it may well exist)
    with pytest.raises(DataError, match="cannot read the shard index .*the source is unreachable") as err:
        build_loader(_cfg(url, tok_path, tmp_path / "c", fetch_retries=0), objective="clm")
    assert "--index-only" not in str(err.value)


def test_credentials_in_a_url_are_refused_and_missing_index_says_how_to_make_it(corpus, tok_path, tmp_path):
    from ptft_engine.config.loader import validate

    with pytest.raises(ValueError, match="shards: .*credentials in the URL") as err:  # as the config loader says it
        validate(DataConfig, {"shards": ["http://user:hunter2@127.0.0.1:1/shards/"]}, "data")
    assert "hunter2" not in str(err.value) and "\n" not in str(err.value)
    os.remove(os.path.join(corpus, "index.json"))
    with ShardServer(str(tmp_path / "www")) as srv:
        spec = f"{srv.url}/shards/shard-{{000000..000008}}.tar"
        with pytest.raises(DataError, match=r"cannot read the shard index .*index.json .*ptft shard --index-only"):
            build_loader(_cfg(spec, tok_path, tmp_path / "c", fetch_retries=0), objective="clm")
        assert srv.requests["index.json"] == 1 and srv.requests["shard-000000.tar"] == 0  # nothing per shard


def test_index_only_for_remote_and_local_tars(corpus, tok_path, tmp_path):
    from ptft_engine.cli import main

    written = load_index(os.path.join(corpus, "index.json"))
    ref = _batches(build_loader(_cfg(corpus, tok_path, tmp_path / "c0"), objective="clm"))
    for name in os.listdir(corpus):
        if not name.endswith(".tar"):
            os.remove(os.path.join(corpus, name))
    with ShardServer(str(tmp_path / "www")) as srv:
        out = tmp_path / "made"
        assert main(["shard", "--index-only", f"{srv.url}/shards/shard-{{000000..000008}}.tar",
                     "--output", str(out)]) == 0
        made = json.loads((out / "index.json").read_text())
        assert [(s["path"], s["samples"], s["sha256"], s["bytes"]) for s in made["shards"]] == \
               [(os.path.basename(s.path), s.samples, s.sha256, s.bytes) for s in written.shards]
        assert made["kind"] == "text"
        for name in os.listdir(out):
            shutil.copy(out / name, corpus)  # "put DIR's files beside the shards"
        _same(ref, _batches(build_loader(_cfg(f"{srv.url}/shards/", tok_path, tmp_path / "c1"), objective="clm")))
    os.remove(os.path.join(corpus, "index.json"))
    assert main(["shard", "--index-only", f"{corpus}/shard-{{000000..000008}}.tar"]) == 0  # local: beside the tars
    assert json.loads(open(os.path.join(corpus, "index.json")).read())["total_samples"] == 61
    _same(ref, _batches(build_loader(_cfg(corpus, tok_path, tmp_path / "c2"), objective="clm")))


def test_cache_stays_within_its_bound_by_evicting_lru(corpus, tok_path, tmp_path):
    sizes = [s.bytes + 8 * (s.samples + 1) for s in load_index(os.path.join(corpus, "index.json")).shards]
    bound = sum(sorted(sizes)[-3:])  # room for 3 of the 9 shards
    ref = _batches(build_loader(_cfg(corpus, tok_path, tmp_path / "c0", shuffle=False), objective="clm"))
    with ShardServer(str(tmp_path / "www")) as srv:
        cache = tmp_path / "small"
        loader = build_loader(_cfg(f"{srv.url}/shards/", tok_path, cache, shuffle=False, prefetch_shards=1,
                                   cache_max_gb=bound / 1e9), objective="clm")
        _same(ref, _batches(loader))
        held = sum(os.path.getsize(cache / "shards" / n) for n in os.listdir(cache / "shards")
                   if n.endswith((".tar", ".idx")))
        assert held <= bound and loader.stats["evictions"] >= N_SHARDS - 3
        assert loader.stats["downloads"] == N_SHARDS


_FILL = """
import json, sys
from ptft_engine.data import DataConfig, build_loader
cfg = DataConfig(shards=[sys.argv[1]], tokenizer=sys.argv[2], seq_len=32, batch_size=2, docs_per_batch=3,
                 packing="batch", num_workers=0, emit_sample_index=True, cache_dir=sys.argv[3], prefetch_shards=4)
loader = build_loader(cfg, objective="clm")
pos = [p for b in loader for p in b["sample_index"].tolist()]
print(json.dumps({"pos": pos, "downloads": loader.stats["downloads"], "hits": loader.stats["cache_hits"]}))
"""


@pytest.mark.slow
def test_two_processes_fill_one_cache_at_once(corpus, tok_path, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))), os.environ.get("PYTHONPATH", "")]))
    with ShardServer(str(tmp_path / "www")) as srv:
        args = [sys.executable, "-c", _FILL, f"{srv.url}/shards/", tok_path, str(tmp_path / "shared")]
        procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
        a, b = (json.loads(o.strip().splitlines()[-1]) for o, _ in outs)
        assert a["pos"] == b["pos"] and len(a["pos"]) == 60
        assert a["downloads"] + b["downloads"] == N_SHARDS  # each shard fetched by exactly one of them
        assert all(srv.requests[f"shard-{i:06d}.tar"] == 1 for i in range(N_SHARDS))
        assert not [n for n in os.listdir(tmp_path / "shared" / "shards") if n.endswith(".part")]


def test_s3_and_gs_urls_go_through_their_tools(corpus, tok_path, tmp_path, monkeypatch):
    """Stand-ins for the aws CLI and gsutil (they map s3://bucket/P and gs://bucket/P to a
    local folder) check the commands the cache runs for those schemes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    www = tmp_path / "www"
    (bin_dir / "aws").write_text(f'#!/bin/sh\n[ "$1 $2 $3 $5" = "s3 cp --only-show-errors -" ] || exit 2\n'
                                 f'exec cat "{www}/${{4#s3://bucket/}}"\n')
    (bin_dir / "gsutil").write_text(f'#!/bin/sh\n[ "$1 $2" = "-q cat" ] || exit 2\nexec cat "{www}/${{3#gs://bucket/}}"\n')
    for tool in ("aws", "gsutil"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    ref = _batches(build_loader(_cfg(corpus, tok_path, tmp_path / "c0"), objective="clm"))
    for n, spec in enumerate(["s3://bucket/shards/", "gs://bucket/shards/shard-{000000..000008}.tar"]):
        loader = build_loader(_cfg(spec, tok_path, tmp_path / f"c{n + 1}"), objective="clm")
        _same(ref, _batches(loader))
        assert loader.stats["downloads"] == N_SHARDS


def test_finetune_shard_input_over_http(image_folder, tmp_path, monkeypatch):
    from ptft_engine.data import sources
    from ptft_engine.data.shards import write_shards
    from ptft_engine.finetune.data import read_records

    write_shards([image_folder], str(tmp_path / "www" / "imgs"), sources.Options(format="images"), shard_samples=4,
                 workers=1, progress=False)
    monkeypatch.setenv("PTFT_CACHE_DIR", str(tmp_path / "cache"))
    local = read_records(str(tmp_path / "www" / "imgs"), "shards")
    with ShardServer(str(tmp_path / "www")) as srv:
        remote = read_records(f"{srv.url}/imgs/", "shards")
        assert srv.requests["shard-000000.tar"] == 1
    assert [r["label"] for r in remote] == [r["label"] for r in local] and len(local) == 12
    assert all(a["image"].open().read() == b["image"].open().read() for a, b in zip(remote, local))
    assert all(r["image"].shard.startswith(str(tmp_path / "cache")) for r in remote)


def test_column_index_over_http(corpus, tok_path, tmp_path):
    """A big index keeps its shards in a column sidecar: it is fetched once into the cache folder."""
    ref = _batches(build_loader(_cfg(corpus, tok_path, tmp_path / "c0"), objective="clm"))
    load_index(os.path.join(corpus, "index.json")).save(os.path.join(corpus, "index.json"), columns=True)
    assert "columns" in json.loads(open(os.path.join(corpus, "index.json")).read())
    with ShardServer(str(tmp_path / "www")) as srv:
        loader = build_loader(_cfg(f"{srv.url}/shards/", tok_path, tmp_path / "c1"), objective="clm")
        _same(ref, _batches(loader))
        assert srv.requests["index.columns.safetensors"] == 1 and loader.stats["downloads"] == N_SHARDS
