"""The engine reading its shards over HTTP (a real server on 127.0.0.1): `ptft pretrain` is
killed with SIGKILL mid-epoch, `--resume auto` continues, and every loss equals the
uninterrupted run's on the local copy of the shards."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))

from data_helpers import doc_text, write_text_shards  # noqa: E402
from http_helpers import ShardServer  # noqa: E402
from launching import PY, base_env, read_losses, tail, wait_for_step  # noqa: E402

from ptft_engine.data.tokenizer import train_tokenizer  # noqa: E402

RECIPE = Path(__file__).parents[2] / "configs" / "clm_tiny.yaml"
STEPS = 24


def recipe(tmp_path: Path, shards: str, tok: str, vocab: int, cache: Path) -> Path:
    tree = yaml.safe_load(RECIPE.read_text())
    tree["model"] = {**yaml.safe_load((RECIPE.parent / tree["model"]).read_text()), "vocab_size": vocab}
    tree["data"] = {"shards": [shards], "tokenizer": tok, "seq_len": 32, "batch_size": 4, "num_workers": 2,
                    "cache_dir": str(cache), "fetch_timeout_s": 10}
    tree["run"].update(max_steps=STEPS, log_every=1, eval_every=0, progress_bar=False, tensorboard=False)
    tree["checkpoint"] = {"every": 8, "keep_last": 2}
    tree["deepspeed"] = {"zero_stage": 1}
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def pretrain(path: Path, out: Path, name: str, *extra: str) -> subprocess.Popen:
    log = open(out / f"{name}.log", "a")
    return subprocess.Popen([PY, "-m", "ptft_engine.cli", "pretrain", "--config", str(path), f"run.output_dir={out}",
                             f"run.name={name}", *extra], env=base_env(), stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_kill9_and_resume_through_http_repeats_the_local_run(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    shards = write_text_shards(www, 61)
    tok = train_tokenizer([doc_text(i) for i in range(60)], kind="bpe", vocab_size=128, min_frequency=1)
    tok.save(str(tmp_path / "tok.json"))
    args = (str(tmp_path / "tok.json"), tok.get_vocab_size(), tmp_path / "cache")
    out = tmp_path / "runs"
    out.mkdir()
    with ShardServer(str(www)) as srv:
        ref = pretrain(recipe(tmp_path, shards, *args), out, "local")
        remote = recipe(tmp_path, f"{srv.url}/shards/", *args)
        crashy = pretrain(remote, out, "http")
        try:
            wait_for_step(out / "http", 11, [crashy], timeout=240)  # past the step-8 checkpoint, mid-epoch
        finally:
            crashy.send_signal(signal.SIGKILL)
            crashy.wait()
        assert crashy.returncode == -signal.SIGKILL
        assert ref.wait(timeout=300) == 0, tail(out / "local.log")
        resumed = pretrain(remote, out, "http", "--resume", "auto")
        assert resumed.wait(timeout=300) == 0, tail(out / "http.log")
    assert "resumed from" in (out / "http.log").read_text()
    want, got = read_losses(out / "local"), read_losses(out / "http")
    assert sorted(want) == list(range(1, STEPS + 1))
    assert [got[s] for s in range(1, STEPS + 1)] == [want[s] for s in range(1, STEPS + 1)]
