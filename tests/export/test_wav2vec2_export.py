"""wav2vec 2.0 export: transformers' Wav2Vec2Model loads it with equal hidden states, and the
engine loads transformers' wav2vec2 directories (both weight-norm namings)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ptft_engine.export import export_model, load_pretrained
from ptft_engine.models import build_model

transformers = pytest.importorskip("transformers")

SMALL = dict(arch="wav2vec2", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             conv_dim=[16, 16, 16], conv_kernel=[10, 3, 3], conv_stride=[5, 2, 2], num_conv_pos_embeddings=16,
             num_conv_pos_embedding_groups=4)
# (feat_extract_norm, do_stable_layer_norm): wav2vec2-base's form and wav2vec2-large's
FORMS = [("group", False), ("layer", True)]


def _audio():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4000, generator=g)
    mask = torch.ones(3, 4000, dtype=torch.bool)
    mask[1, 3000:] = False
    mask[2, 1234:] = False
    return x * mask, mask


def _model(norm: str, stable: bool):
    model = build_model({**SMALL, "feat_extract_norm": norm, "do_stable_layer_norm": stable}).eval()
    with torch.no_grad():  # g != |v|: the weight normalisation must be applied as transformers does
        model.pos_conv.weight_g.mul_(1.0 + torch.rand_like(model.pos_conv.weight_g))
        model.pos_conv.bias.normal_()
    return model


@pytest.mark.parametrize("norm,stable", FORMS)
def test_transformers_loads_the_export_with_equal_hidden_states(tmp_path, norm, stable):
    model = _model(norm, stable)
    export_model(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2Model"] and config["model_type"] == "wav2vec2"
    hf, info = transformers.Wav2Vec2Model.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    x, mask = _audio()
    with torch.no_grad():
        ours = model(x, mask)
        theirs = hf(x, attention_mask=mask.long()).last_hidden_state
        assert ours.shape == theirs.shape == (3, model.config.num_frames(4000), 32)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(x), hf(x).last_hidden_state, atol=1e-5, rtol=0)
        # the learned mask embedding is the one transformers substitutes
        spans = torch.zeros(3, ours.shape[1], dtype=torch.bool)
        spans[:, 5:15] = True
        ours_m = model.encode(x, mask, mask_time_indices=spans).hidden
        theirs_m = hf(x, attention_mask=mask.long(), mask_time_indices=spans).last_hidden_state
        torch.testing.assert_close(ours_m, theirs_m, atol=1e-5, rtol=0)
    extractor = transformers.AutoFeatureExtractor.from_pretrained(tmp_path)
    assert extractor.sampling_rate == 16000 and extractor.do_normalize
    assert extractor.return_attention_mask == (norm == "layer")


def test_engine_reload_of_its_export_is_exact(tmp_path):
    model = _model("group", False)
    export_model(model, tmp_path)
    again = load_pretrained(tmp_path)
    x, mask = _audio()
    with torch.no_grad():
        assert torch.equal(model(x, mask), again(x, mask))


@pytest.mark.parametrize("old_names", [False, True])
def test_engine_loads_a_transformers_pretraining_checkpoint(tmp_path, old_names):
    """A Wav2Vec2ForPreTraining directory (quantiser and projections skipped); with old_names
    the positional conv's g / v are stored as weight_g / weight_v (facebook/wav2vec2-base)."""
    cfg = transformers.Wav2Vec2Config(**{k: v for k, v in SMALL.items() if k != "arch"},
                                      num_feat_extract_layers=3, codevector_dim=16, proj_codevector_dim=16,
                                      num_codevectors_per_group=8, layerdrop=0.0)
    torch.manual_seed(1)
    hf = transformers.Wav2Vec2ForPreTraining(cfg).eval()
    hf.save_pretrained(tmp_path)
    if old_names:
        path = tmp_path / "model.safetensors"
        state = load_file(str(path))
        renamed = {k.replace("parametrizations.weight.original0", "weight_g")
                    .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
        assert any(k.endswith("weight_g") for k in renamed)
        save_file(renamed, str(path), metadata={"format": "pt"})
    model = load_pretrained(tmp_path)
    x, mask = _audio()
    with torch.no_grad():
        ours = model(x)
        theirs = hf.wav2vec2(x).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_a_checkpoint_that_does_not_fit_the_config_is_refused(tmp_path):
    export_model(_model("group", False), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["conv_dim"] = [16, 16, 32]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="config"):
        load_pretrained(tmp_path, verify_checksums=False)


def _write_audio_shards(root):
    """24 clips of 0.6-1 s (rising tones) as `ptft shard --format audio` output."""
    import math

    import numpy as np

    sf = pytest.importorskip("soundfile")
    from ptft_engine import cli

    rng = np.random.default_rng(0)
    (root / "clips").mkdir()
    for i in range(24):
        t = np.arange(int(rng.uniform(0.6, 1.0) * 16000)) / 16000
        f0, rate = 150 * 2 ** (2 * rng.random()), 1 + 2 * rng.random()
        wave = 0.5 * np.sin(2 * math.pi * f0 * (2 ** (rate * t) - 1) / (rate * math.log(2)))
        sf.write(root / "clips" / f"c{i:02d}.wav", wave.astype(np.float32), 16000, subtype="PCM_16")
    assert cli.main(["shard", str(root / "clips"), "--format", "audio", "--output", str(root / "shards"),
                     "--workers", "1", "--no-progress"]) == 0
    return root / "shards"


@pytest.mark.slow  # a training run through DeepSpeed
def test_pretraining_on_audio_shards_then_ptft_export_loads_in_transformers(tmp_path):
    from pathlib import Path

    from ptft_engine import cli
    from ptft_engine.config import load_run_config
    from ptft_engine.engine import Trainer

    shards = _write_audio_shards(tmp_path)
    recipe = Path(__file__).resolve().parents[2] / "configs" / "wav2vec2_tiny.yaml"
    cfg = load_run_config(recipe, [
        f"data={{shards: [{shards}], kind: audio, batch_size: 4, audio_crop_samples: 9600, num_workers: 0}}",
        "run.max_steps=3", "run.log_every=1", "run.eval_every=0", "run.progress_bar=false", "run.tensorboard=false",
        "run.device=cpu", f"run.output_dir={tmp_path}", "checkpoint.every=0"])
    trainer = Trainer(cfg)
    try:
        trainer.fit()
        live = trainer.objective.model
    finally:
        trainer.close()
    records = [json.loads(line) for line in (tmp_path / "wav2vec2_tiny" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["split"] == "summary" and records[-1]["data_samples"] == 12
    out = tmp_path / "export"
    assert cli.main(["export", str(tmp_path / "wav2vec2_tiny"), str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Wav2Vec2Model"]
    hf = transformers.Wav2Vec2Model.from_pretrained(out).eval()
    x, mask = _audio()
    with torch.no_grad():
        live.eval()
        torch.testing.assert_close(hf(x, attention_mask=mask.long()).last_hidden_state, live(x, mask),
                                   atol=1e-5, rtol=0)
