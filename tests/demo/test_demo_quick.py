"""`ptft demo --quick` end to end (one run per module, ~2 minutes on 2 CPU cores), then
checks of what it left under --out: shards + index, checkpoints of a 2-rank run, exports
that load, fine-tuning metrics, the comparison, and report images that are real PNGs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.slow  # the whole workflow, in subprocesses


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "ptft_engine.cli", "demo", "--quick", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=420, cwd=out.parent)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, res.stdout


def test_every_stage_reports_progress(demo):
    _, stdout = demo
    for n in range(1, 9):
        assert f"[{n}/8]" in stdout
    assert "$ launch/local.sh 2 --config" in stdout  # pre-training goes through the launcher script
    assert "[simclr] pretrain:" in stdout and "%|" in stdout  # rank 0's progress bar
    assert "| pre-trained / linear probe |" in stdout  # the comparison table at the end
    assert "| bag-of-words logistic regression |" in stdout and "| scratch encoder / full |" in stdout  # text table
    assert "[text]" in stdout and "pre-training corpus:" in stdout and "tokens" in stdout
    assert "[hubert] pretrain:" in stdout and "| pre-trained / frozen feature encoder |" in stdout  # speech table


def test_shards_and_index(demo):
    out, _ = demo
    n_train = sum(1 for _ in (out / "bundled/digits/train").rglob("*.png"))
    index = json.loads((out / "shards/digits/train/index.json").read_text())
    assert index["total_samples"] == n_train == sum(s["samples"] for s in index["shards"])
    assert all(len(s["sha256"]) == 64 and (out / "shards/digits/train" / s["path"]).is_file() for s in index["shards"])
    assert len(index["shards"]) >= 2  # small shards: the stream really spans several
    assert list((out / "shards/text/corpus").glob("*.tar")) and list((out / "shards/text/corpus_val").glob("*.tar"))
    assert (out / "tokenizer/tokenizer.json").is_file()


def test_two_rank_checkpoints_and_metrics(demo):
    out, _ = demo
    for run in ("simclr_digits", "mlm_docstrings", "clm_docstrings"):
        ckpts = out / "runs" / run / "checkpoints"
        steps = sorted(p for p in ckpts.glob("step-*") if p.is_dir())
        assert steps, f"no checkpoint in {ckpts}"
        meta = json.loads((steps[-1] / "meta.json").read_text())
        assert meta["world_size"] == 2 and meta["zero_stage"] == 2, meta
        rows = [json.loads(line) for line in (out / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in rows if r.get("split") == "train"]
        assert losses and all(x == x and x < 20 for x in losses)  # finite, sensible
    simclr = [json.loads(line) for line in (out / "runs/simclr_digits/metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in simclr if r.get("split") == "train"]
    assert min(train[-5:]) < train[0]  # contrastive loss came down
    for run in ("mlm_docstrings", "clm_docstrings"):  # language models: validation loss measured and came down
        rows = [json.loads(line) for line in (out / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        val = [r["loss"] for r in rows if r.get("split") == "eval"]
        assert len(val) >= 2 and val[-1] < val[0], (run, val)


def test_exports_load_with_the_engine_and_safetensors(demo):
    from safetensors import safe_open

    from ptft_engine.export import load_export

    out, _ = demo
    vit = load_export(out / "export/simclr-vit").model
    with safe_open(str(out / "export/simclr-vit/model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert keys and all(f.get_tensor(k).isfinite().all() for k in keys)
    cfg = vit.config
    with torch.no_grad():
        features = vit(torch.randn(2, cfg.num_channels, cfg.image_size, cfg.image_size))  # (B, D)
    assert features.shape == (2, cfg.hidden_size) and features.isfinite().all()
    for name in ("mlm-bert", "clm-gpt2"):
        lm = load_export(out / "export" / name)
        assert lm.layout is not None and (out / "export" / name / "tokenizer.json").is_file()


def test_finetune_metrics_are_sensible(demo):
    out, _ = demo
    comparison = json.loads((out / "comparison.json").read_text())
    rows = comparison["rows"]
    assert {r["labels_fraction"] for r in rows} == {0.01, 0.1, 1.0}
    assert {r["key"] for r in rows} == {"scratch", "probe"}
    for r in rows:
        assert r["test_accuracy"] == pytest.approx(sum(r["per_seed"]) / len(r["per_seed"]))
        assert all(0.0 <= a <= 1.0 for a in r["per_seed"])
        report = json.loads((Path(r["dirs"][0]) / "report.json").read_text())
        assert report["metric"] == "accuracy" and report["history"]["val"]
        assert (Path(r["dirs"][0]) / "best").is_dir()
    full = [r["test_accuracy"] for r in rows if r["labels_fraction"] == 1.0]
    assert max(full) > 0.3  # ten classes: chance is 0.1
    assert next(r for r in rows if r["key"] == "probe")["trainable_params"] < \
        next(r for r in rows if r["key"] == "scratch")["trainable_params"]  # the probe trains the head only
    assert "| scratch / full |" in (out / "comparison.md").read_text()
    timings = json.loads((out / "timings.json").read_text())
    assert timings["stages_s"] and timings["total_s"] >= max(timings["stages_s"].values())  # stages lie within the run


def test_text_comparison(demo):
    out, _ = demo
    text = json.loads((out / "text_comparison.json").read_text())
    keys = {r["key"] for r in text["rows"]}
    assert keys == {"bow", "scratch", "small_lr", "clm_small_lr"}, keys
    assert {r["labels_fraction"] for r in text["rows"]} == {0.01, 0.1, 1.0}
    assert text["corpus_tokens"] > 100_000 and text["task"]["test"] == 8 * 150
    bow = next(r for r in text["rows"] if r["key"] == "bow" and r["labels_fraction"] == 1.0)
    assert bow["test_accuracy"] > 0.5  # eight packages: chance is 1/8
    assert "Goal (MLM beats scratch" in (out / "text_comparison.md").read_text()


def test_report_images_are_real_pngs(demo):
    out, _ = demo
    pngs = sorted((out / "report").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"comparison.png", "text_comparison.png", "pretrain_simclr_digits.png", "pretrain_mlm_docstrings.png",
            "pretrain_clm_docstrings.png", "speech_comparison.png", "pretrain_hubert_speech.png"} <= names, names
    assert any(n.startswith("finetune_") for n in names)
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, p
    html = (out / "report/report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs)
    report_md = (out / "report/report.md").read_text()
    assert "comparison.png" in report_md and "text_comparison.png" in report_md
    assert "| bag-of-words logistic regression |" in report_md  # the text table beside the digits one
    assert "Speech: HuBERT pre-trained vs from scratch" in report_md  # and the speech table


def test_report_command_redraws(demo, tmp_path):
    out, _ = demo
    res = subprocess.run([sys.executable, "-m", "ptft_engine.cli", "report", str(out / "runs/mlm_docstrings"),
                          "--out", str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "pretrain_mlm_docstrings.png").read_bytes()[:8] == PNG_MAGIC
    assert "tokens/s" in (tmp_path / "report.md").read_text()
