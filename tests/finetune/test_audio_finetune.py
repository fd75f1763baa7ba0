"""Audio classification from a wav2vec 2.0 export: each recipe trains what it should, the
saved model is transformers' own and gives the logits of the model that was trained."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ptft_engine.export import export_model
from ptft_engine.finetune.audio import (
    apply_audio_strategy,
    audio_batch,
    evaluate_audio,
    finetune_audio,
    load_audio_classifier,
)
from ptft_engine.models import build_model, load_model_config

transformers = pytest.importorskip("transformers")
TINY = Path(__file__).resolve().parents[2] / "configs" / "models" / "wav2vec2-tiny.yaml"


def _clips(n: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """Low (150-300 Hz) or high (1-2 kHz) tones of 0.3-0.5 s with noise: label 0 / 1."""
    rng = np.random.default_rng(seed)
    clips, labels = [], []
    for i in range(n):
        label = i % 2
        f = rng.uniform(150, 300) if label == 0 else rng.uniform(1000, 2000)
        t = np.arange(int(rng.uniform(0.3, 0.5) * 16000)) / 16000
        clips.append((np.sin(2 * math.pi * f * t + rng.uniform(0, 6)) + 0.1 * rng.standard_normal(t.shape))
                     .astype(np.float32))
        labels.append(label)
    return clips, labels


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("w2v_export")
    export_model(build_model(load_model_config(TINY)), out)
    return out


def _load(export_dir, **kw):
    return load_audio_classifier(export_dir, ["low", "high"], mask_time_prob=0.0, **kw)


def test_full_finetuning_learns_and_the_saved_model_serves_with_transformers(export_dir, tmp_path):
    train, train_y = _clips(32, 0)
    val, val_y = _clips(16, 1)
    model, extractor = _load(export_dir)
    apply_audio_strategy(model, "full")
    result = finetune_audio(model, extractor, train, train_y, val, val_y, lr=3e-3, batch_size=8, epochs=2,
                            out_dir=tmp_path)
    assert result["best"]["accuracy"] >= 0.9, result["history"]["val"]
    assert result["history"]["train"][-1]["loss"] < result["history"]["train"][0]["loss"]
    served = transformers.AutoModelForAudioClassification.from_pretrained(tmp_path / "best").eval()
    assert served.config.id2label == {0: "low", 1: "high"}
    fe = transformers.AutoFeatureExtractor.from_pretrained(tmp_path / "best")
    again = evaluate_audio(served, fe, val, val_y)
    assert again["accuracy"] == result["best"]["accuracy"]


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _train_steps(model, extractor, steps: int = 3) -> None:
    clips, labels = _clips(8, 2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(**audio_batch(extractor, clips, labels)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("kind,frozen,trained", [
    ("freeze_feature_encoder", ("wav2vec2.feature_extractor.",), ("wav2vec2.encoder.", "classifier.")),
    ("linear_probe", ("wav2vec2.",), ("projector.", "classifier.")),
    ("lora", ("wav2vec2.feature_extractor.", "wav2vec2.encoder.layers.0.attention.q_proj.weight"),
     ("wav2vec2.encoder.layers.0.attention.q_proj.lora_", "classifier.")),
])
def test_strategies_train_only_their_parameters(export_dir, kind, frozen, trained):
    model, extractor = _load(export_dir)
    counts = apply_audio_strategy(model, kind)
    assert 0 < counts["trainable_params"] < counts["total_params"]
    before = _snapshot(model)
    _train_steps(model, extractor)
    after = _snapshot(model)
    for name in after:
        if name not in before:
            continue
        changed = not torch.equal(before[name], after[name])
        if name.startswith(frozen):
            assert not changed, f"{kind}: frozen {name} changed"
    for prefix in trained:
        assert any(not torch.equal(before[n], after[n]) for n in after if n.startswith(prefix)), \
            f"{kind}: nothing under {prefix} trained"


def test_lora_is_merged_into_the_saved_model(export_dir, tmp_path):
    from ptft_engine.finetune.audio import save_audio_classifier

    model, extractor = _load(export_dir)
    apply_audio_strategy(model, "lora", lora_targets=("attn", "mlp"))
    _train_steps(model, extractor)
    save_audio_classifier(model, tmp_path / "saved")
    served = transformers.AutoModelForAudioClassification.from_pretrained(tmp_path / "saved").eval()
    model.eval()
    clips, labels = _clips(4, 3)
    batch = audio_batch(extractor, clips)
    with torch.no_grad():
        torch.testing.assert_close(served(**batch).logits, model(**batch).logits, atol=1e-5, rtol=0)
    # the adapters changed the encoder: the merged q_proj is not the pre-trained one
    base, _ = _load(export_dir)
    q = "wav2vec2.encoder.layers.0.attention.q_proj.weight"
    assert not torch.equal(dict(served.named_parameters())[q], dict(base.named_parameters())[q])


@pytest.fixture(scope="module")
def saved(export_dir, tmp_path_factory):
    """A LoRA-fine-tuned model saved as `ptft finetune` saves best/ (and the live model)."""
    from ptft_engine.finetune.audio import save_audio_classifier

    model, extractor = _load(export_dir, classifier_proj_size=24)  # not transformers' default: saved too
    apply_audio_strategy(model, "lora")
    _train_steps(model, extractor)
    for p in model.classifier.parameters():  # a trained-looking head, not the near-zero init
        torch.nn.init.normal_(p, std=0.5)
    out = tmp_path_factory.mktemp("audio_saved") / "best"
    save_audio_classifier(model, out, metrics={"step": 3, "accuracy": 0.75}, strategy="lora")
    return out, model.eval(), extractor


def _padded_batch():
    clips, _ = _clips(3, 6)  # 0.3-0.5 s: padded to the longest, with a mask of the real samples
    values = torch.zeros(3, max(len(c) for c in clips))
    mask = torch.zeros(values.shape, dtype=torch.long)
    for i, c in enumerate(clips):
        values[i, :len(c)], mask[i, :len(c)] = torch.from_numpy(c), 1
    return {"input_values": values, "attention_mask": mask}


def test_saved_audio_model_is_a_task_model_like_the_others(saved, caplog):
    """best/ has what every task's best/ has; load_task_model (no warning: the manifest is
    checked) gives the logits transformers gives, with and without padding."""
    import json
    import logging

    from ptft_engine.finetune import load_task_model

    out, live, _ = saved
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "task.json", "metrics.json",
            "manifest.json"} <= {p.name for p in out.iterdir()}
    task = json.loads((out / "task.json").read_text())
    assert task["kind"] == "audio_classification" and task["labels"] == ["low", "high"]
    assert task["transformers_class"] == "Wav2Vec2ForSequenceClassification" and task["strategy"] == "lora"
    assert json.loads((out / "metrics.json").read_text()) == {"step": 3, "accuracy": 0.75}
    assert "metrics.json" in json.loads((out / "manifest.json").read_text())["files"]
    with caplog.at_level(logging.WARNING):
        model, info = load_task_model(out)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert info["labels"] == ["low", "high"] and model.projector.out_features == 24
    served = transformers.AutoModelForAudioClassification.from_pretrained(out).eval()
    batch = _padded_batch()
    with torch.no_grad():
        for inputs in (batch, {"input_values": batch["input_values"][:1, :4800]}):
            theirs = served(**inputs).logits
            torch.testing.assert_close(model(inputs), theirs, atol=1e-5, rtol=0)
            torch.testing.assert_close(live(**inputs).logits, theirs, atol=1e-5, rtol=0)
    assert theirs.abs().max() > 0.1  # a head that matters


def test_reexport_keeps_the_audio_head(saved, tmp_path, capsys):
    """`ptft export best/ OUT --dtype bf16` keeps Wav2Vec2ForSequenceClassification, task.json
    and metrics.json, as for the text tasks."""
    import json

    from ptft_engine import cli
    from ptft_engine.finetune import load_task_model

    out, _, _ = saved
    assert cli.main(["export", str(out), str(tmp_path / "bf16"), "--dtype", "bf16"]) == 0
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2ForSequenceClassification"]
    assert config["id2label"] == {"0": "low", "1": "high"} and config["torch_dtype"] == "bfloat16"
    assert config["classifier_proj_size"] == 24
    assert json.loads((tmp_path / "bf16" / "metrics.json").read_text())["accuracy"] == 0.75
    assert json.loads((tmp_path / "bf16" / "task.json").read_text())["labels"] == ["low", "high"]
    served = transformers.AutoModelForAudioClassification.from_pretrained(tmp_path / "bf16", dtype=torch.float32)
    first, _ = load_task_model(out)
    torch.testing.assert_close(served.classifier.weight, first.head.weight.bfloat16().float())
    batch = _padded_batch()
    with torch.no_grad():
        assert torch.equal(served.eval()(**batch).logits.argmax(-1), first(batch).argmax(-1))
    # a task class without task.json (a best/ saved before task.json existed): refused, not cut to the backbone
    (out.parent / "old").mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        (out.parent / "old" / name).write_bytes((out / name).read_bytes())
    capsys.readouterr()
    assert cli.main(["export", str(out.parent / "old"), str(tmp_path / "old")]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "names Wav2Vec2ForSequenceClassification but there is no task.json" in err


def test_unknown_strategy_is_refused(export_dir):
    model, _ = _load(export_dir)
    with pytest.raises(ValueError, match="strategy 'bitfit'"):
        apply_audio_strategy(model, "bitfit")


def test_config_checks_for_audio_classification():
    from ptft_engine.finetune import parse_finetune_config

    base = {"model": {"pretrained": "x"}, "task": {"kind": "audio_classification"},
            "data": {"format": "shards", "train": "x"}}
    assert parse_finetune_config(base).metric == "accuracy"
    with pytest.raises(ValueError, match="data.format: shards"):
        parse_finetune_config({**base, "data": {"format": "jsonl", "train": "x"}})
    with pytest.raises(ValueError, match="strategy.kind partial"):
        parse_finetune_config({**base, "strategy": {"kind": "partial"}})
    with pytest.raises(ValueError, match="freeze_feature_encoder needs task.kind audio_classification"):
        parse_finetune_config({**base, "task": {"kind": "image_classification"},
                               "strategy": {"kind": "freeze_feature_encoder"}})


def test_ptft_finetune_config_runs_audio_classification(export_dir, tmp_path, monkeypatch):
    """The config path end to end, records given in memory in place of the audio shards."""
    import json

    import ptft_engine.finetune.data as data
    from ptft_engine.finetune import finetune, parse_finetune_config

    clips, labels = _clips(24, 4)
    records = [{"audio": c, "label": ["low", "high"][y], "sample_rate": 16000} for c, y in zip(clips, labels)]
    monkeypatch.setattr(data, "read_records", lambda path, fmt, *a: records if path == "train" else [])
    cfg = parse_finetune_config({
        "model": {"pretrained": str(export_dir)}, "task": {"kind": "audio_classification"},
        "data": {"format": "shards", "train": "train", "val_fraction": 0.25},
        "strategy": {"kind": "freeze_feature_encoder"},
        "optim": {"lr": 3e-3, "batch_size": 6, "epochs": 1}, "output_dir": str(tmp_path), "device": "cpu"})
    result = finetune(cfg)
    assert result["labels"] == ["high", "low"] and result["steps"] == 3
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["best"]["accuracy"] == result["best"]["accuracy"]
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "best" / "config.json").is_file()
    records[0]["sample_rate"] = 8000
    with pytest.raises(ValueError, match="8000 Hz"):
        finetune(cfg)


def test_ptft_finetune_reads_labelled_audio_shards(export_dir, tmp_path):
    """`ptft shard --format audio --manifest` output -> `ptft finetune` (audio_classification)."""
    import json

    sf = pytest.importorskip("soundfile")
    from ptft_engine import cli

    clips, labels = _clips(24, 5)
    with open(tmp_path / "labels.jsonl", "w") as f:
        for i, (clip, y) in enumerate(zip(clips, labels)):
            sf.write(tmp_path / f"c{i:02d}.wav", clip * 0.5, 16000, subtype="PCM_16")
            f.write(json.dumps({"path": f"c{i:02d}.wav", "label": ["low", "high"][y]}) + "\n")
    shards = tmp_path / "shards"
    assert cli.main(["shard", str(tmp_path), "--format", "audio", "--manifest", str(tmp_path / "labels.jsonl"),
                     "--output", str(shards), "--workers", "1", "--no-progress", "--max-samples", "10"]) == 0
    from ptft_engine.finetune.data import read_records

    records = read_records(str(shards), "shards")
    assert len(records) == 24 and {r["label"] for r in records} == {"low", "high"}
    assert all(r["sample_rate"] == 16000 and r["audio"].dtype == np.float32 for r in records)
    assert abs(len(records[0]["audio"]) - len(clips[0])) <= 1
    out = tmp_path / "ft"
    assert cli.main(["finetune", "--config", _write_config(tmp_path, export_dir, shards, out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["labels"] == ["high", "low"] and report["steps"] == 6
    served = transformers.AutoModelForAudioClassification.from_pretrained(out / "best")
    assert set(served.config.id2label.values()) == {"high", "low"}


def _write_config(root, export_dir, shards, out) -> str:
    import yaml

    path = root / "audio.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"pretrained": str(export_dir)}, "task": {"kind": "audio_classification"},
        "data": {"format": "shards", "train": str(shards), "val_fraction": 0.25},
        "strategy": {"kind": "freeze_feature_encoder"}, "progress_bar": False,
        "optim": {"lr": 3e-3, "batch_size": 6, "epochs": 2}, "output_dir": str(out), "device": "cpu"}))
    return str(path)


def test_a_missing_or_wrong_model_is_one_line_at_start(export_dir, tmp_path, monkeypatch, capsys):
    """model.pretrained that is not a directory: the text tasks' one line, before any data is
    read and without the network; a model that is not wav2vec 2.0: one line naming it."""
    import ptft_engine.finetune.data as data
    from ptft_engine import cli
    from ptft_engine.models import EncoderConfig

    def no_data(*a):
        raise AssertionError("data read before the model was checked")

    monkeypatch.setattr(data, "read_records", no_data)
    path = _write_config(tmp_path, tmp_path / "nope", tmp_path / "shards", tmp_path / "ft")
    assert cli.main(["finetune", "--config", path]) != 0
    assert capsys.readouterr().err.strip() == f"ptft finetune: error: {tmp_path / 'nope'}: not a directory"
    export_model(build_model(EncoderConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=32)), tmp_path / "bert")
    assert cli.main(["finetune", "--config", path, f"model.pretrained={tmp_path / 'bert'}"]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "needs a wav2vec 2.0 / HuBERT model, got a encoder model" in err
