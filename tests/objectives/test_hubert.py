"""HuBERT: MFCC features aligned with the conv frames, k-means targets and their JSON file, the
masked / unmasked cross-entropy over clusters, and a toy pre-training run on rising tones."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from speech_toys import tones, train_on_tones

from ptft_engine import cli
from ptft_engine.config.schema import RunConfig
from ptft_engine.errors import ConfigError
from ptft_engine.labels import IGNORE_INDEX
from ptft_engine.models import build_model, load_model_config
from ptft_engine.objectives import build_objective, get_spec, hubert, wav2vec2
from ptft_engine.objectives import speech_targets as st
from ptft_engine.objectives.hubert import HubertObjective, HubertObjectiveConfig

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "models" / "wav2vec2-tiny.yaml"


@pytest.fixture(scope="module")
def km_path(tmp_path_factory) -> Path:
    """k-means targets (16 clusters) fitted on 24 tones that the training batch does not hold."""
    path = tmp_path_factory.mktemp("km") / "km.json"
    st.fit_kmeans([a.numpy() for a in tones(48)[24:]], 16, seed=0).save(path)
    return path


def _objective(km_path: Path | None, **kw) -> HubertObjective:
    torch.manual_seed(0)
    cfg = HubertObjectiveConfig(kmeans_path=None if km_path is None else str(km_path), final_dim=32, **kw)
    return HubertObjective(build_model(load_model_config(TINY)), cfg)


def test_feature_frames_are_the_conv_frames():
    tiny, base = load_model_config(TINY), load_model_config(REPO / "configs" / "models" / "wav2vec2-base.yaml")
    for n in list(range(0, 2000)) + list(range(15_000, 17_000, 7)):
        assert st.num_frames(n) == tiny.num_frames(n) == base.num_frames(n), n
    assert st.mfcc(torch.randn(2, 16_000)).shape == (2, 49, 39)
    assert st.mfcc(torch.randn(1, 399)).shape == (1, 0, 39)
    # frame t reads samples [320 t, 320 t + 400): sample 8000 lies in frames 24 and 25 only
    x = torch.randn(1, 16_000)
    y = x.clone()
    y[0, 8000] += 5.0
    changed = (st.mfcc(x)[0, :, :13] != st.mfcc(y)[0, :, :13]).any(-1).nonzero().flatten().tolist()
    assert changed == [24, 25]


def test_mfcc_parts_dct_filterbank_deltas_and_padding():
    from scipy.fft import dct

    k = np.arange(st.N_CEPS)
    lifter = 1 + st.LIFTER / 2 * np.sin(np.pi * k / st.LIFTER)
    ref = dct(np.eye(st.N_MELS), type=2, norm="ortho", axis=1)[:, : st.N_CEPS] * lifter
    np.testing.assert_allclose(st._dct_lifter().numpy(), ref, atol=1e-5)
    fb = st.mel_filterbank()  # (257, 23): a 1 kHz tone's power peaks in the band centred nearest 1 kHz
    assert fb.shape == (257, 23) and math.isclose(float(fb.max()), 1.0, abs_tol=0.05)
    centres = (fb.argmax(0).float() * 16_000 / 512).tolist()
    assert centres == sorted(centres)
    spectrum = torch.fft.rfft(torch.sin(2 * math.pi * 1000 * torch.arange(400) / 16_000) * torch.hamming_window(400),
                              n=512).abs().pow(2)
    assert int((spectrum @ fb).argmax()) == int(np.argmin([abs(c - 1000) for c in centres]))
    ramp = torch.arange(10.0)[None, :, None] * 3.0  # (1, 10, 1): slope 3
    d = st.deltas(ramp, torch.tensor([10]))[0, :, 0]
    assert torch.allclose(d[2:8], torch.full((6,), 3.0)) and math.isclose(float(d[0]), 1.5)  # edge repeated
    # a clip padded with zeros: its real frames' features are the unpadded clip's, deltas included
    clip = tones(1)[0, :6000]
    padded = torch.cat([clip, torch.zeros(3000)])[None]
    real = st.num_frames(6000)
    torch.testing.assert_close(st.mfcc(padded, torch.tensor([6000]))[0, :real], st.mfcc(clip[None])[0])


def test_kmeans_targets_json_round_trip_and_nearest_centroid(km_path):
    km = st.KMeansTargets.load(km_path)
    assert km.num_clusters == 16 and km.frames == 24 * st.num_frames(6400) and km.inertia > 0
    km.save(km_path.parent / "again.json")
    again = st.KMeansTargets.load(km_path.parent / "again.json")
    for a, b in ((km.mean, again.mean), (km.std, again.std), (km.centroids, again.centroids)):
        assert torch.equal(a, b)
    assert (again.frames, again.inertia) == (km.frames, km.inertia)
    audio = tones(4)
    mask = torch.ones_like(audio, dtype=torch.bool)
    mask[1, 3000:] = False
    ids = km.cluster_ids(audio * mask, mask)
    z = (st.mfcc(audio * mask, mask.sum(-1)) - km.mean) / km.std
    nearest = torch.cdist(z, km.centroids[None]).argmin(-1)  # brute force
    real = st.num_frames(3000)
    assert torch.equal(ids[0], nearest[0]) and torch.equal(ids[1, :real], nearest[1, :real])
    assert (ids[1, real:] == IGNORE_INDEX).all() and (ids[[0, 2, 3]] >= 0).all() and ids.max() < 16
    assert len(set(ids[ids >= 0].tolist())) >= 8  # the tones spread over the clusters


@pytest.mark.parametrize("content, problem", [
    (None, "not found (write one with `ptft speech-targets"),
    ("{not json", "not valid JSON"),
    ({"format": "something else"}, "not a ptft-kmeans-targets file"),
    ({"features": {**st.FEATURES, "hop": 160}}, "made from features"),
    ({"centroids": [[0.0] * 38] * 4}, "expected mean and std of 39 and centroids of K x 39"),
    ({"std": [0.0] * 39}, "non-finite numbers or a std <= 0"),
    ({"mean": [float("nan")] * 39}, "non-finite numbers"),
    ({"centroids": "abc"}, "mean, std and centroids must be lists of numbers"),
    ({"centroids": ...}, "lacks centroids"),  # ...: the key left out
])
def test_bad_kmeans_file_is_a_one_line_error_naming_it(tmp_path, content, problem):
    path = tmp_path / "km.json"
    good = {"format": st.FORMAT, "version": 1, "features": st.FEATURES, "mean": [0.0] * 39, "std": [1.0] * 39,
            "centroids": [[0.0] * 39, [1.0] * 39]}
    if isinstance(content, dict):
        doc = {k: v for k, v in {**good, **content}.items() if v is not ...}
        path.write_text(json.dumps(doc))
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        build_objective(load_model_config(TINY), {"name": "hubert", "kmeans_path": str(path)})
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"k-means targets file {path}: ") and problem in text, text


def test_loss_is_cross_entropy_of_cosine_logits_on_masked_and_weighted_unmasked_frames(km_path):
    obj = _objective(km_path, unmasked_weight=0.5).eval()
    audio = tones(3)
    am = torch.ones_like(audio, dtype=torch.bool)
    am[2, 4000:] = False
    audio = audio * am
    t = obj.model.config.num_frames(audio.shape[1])
    real = torch.arange(t)[None] < obj.model.frame_lengths(am.sum(-1))[:, None]
    mask = torch.zeros(3, t, dtype=torch.bool)
    mask[0, 3:13] = mask[1, 5:9] = mask[2, 0:6] = True
    ids = obj.targets.cluster_ids(audio, am)
    ids[0, 4] = IGNORE_INDEX  # a masked frame without a target is not scored
    with torch.no_grad():
        out = obj({"input_values": audio, "attention_mask": am, "mask_time_indices": mask, "cluster_ids": ids})
        proj = obj.final_proj(obj.model.encode(audio, am, mask_time_indices=mask).hidden)  # (B, T, 32)
        logits = F.cosine_similarity(proj[..., None, :], obj.label_embs[None, None], dim=-1) / 0.1  # (B, T, K)
    scored = ids != IGNORE_INDEX
    on, off = mask & real & scored, ~mask & real & scored
    masked = F.cross_entropy(logits[on], ids[on])
    unmasked = F.cross_entropy(logits[off], ids[off])
    torch.testing.assert_close(out["masked_loss"], masked, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out["unmasked_loss"], unmasked, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out["loss"], masked + 0.5 * unmasked, atol=1e-4, rtol=1e-5)
    assert int(out["num_masked"]) == int(on.sum()) == 19
    acc = (logits[on].argmax(-1) == ids[on]).float().mean()
    assert math.isclose(float(out["masked_accuracy"]), float(acc), abs_tol=1e-6)
    # the paper's default: unmasked frames are measured but not in the loss (no gradient from them)
    obj0 = _objective(km_path)
    assert obj0.cfg.unmasked_weight == 0.0
    out0 = obj0({"input_values": audio, "attention_mask": am, "mask_time_indices": mask, "cluster_ids": ids})
    torch.testing.assert_close(out0["loss"], out0["masked_loss"])
    assert out0["loss"].requires_grad and not out0["unmasked_loss"].requires_grad


def test_masks_are_the_wav2vec2_span_masks_at_hubert_base_settings(km_path, monkeypatch):
    assert hubert.frames_and_span_mask is wav2vec2.frames_and_span_mask  # one masking path, reused
    cfg = HubertObjectiveConfig()
    assert (cfg.mask_prob, cfg.mask_length, cfg.min_masks, cfg.final_dim, cfg.logit_temperature) == \
        (0.8, 10, 2, 256, 0.1)
    seen, original = [], wav2vec2.compute_span_mask

    def spy(lengths, num_frames, mask_prob, mask_length, min_masks=0, generator=None):
        mask = original(lengths, num_frames, mask_prob, mask_length, min_masks, generator)
        seen.append((lengths.tolist(), mask_prob, mask_length, min_masks, mask))
        return mask

    monkeypatch.setattr(wav2vec2, "compute_span_mask", spy)
    obj = _objective(km_path)
    audio = torch.randn(16, 500 * 320 + 80)
    am = torch.ones_like(audio, dtype=torch.bool)
    am[0, 100 * 320:] = False  # a padded row: 99 real frames
    with torch.no_grad():
        out = obj({"input_values": audio * am, "attention_mask": am})
    (lengths, p, length, min_masks, mask), = seen
    assert (lengths[:2], p, length, min_masks) == ([99, 500], 0.8, 10, 2)
    assert not mask[0, 99:].any() and int(out["num_masked"]) == int(mask.sum())
    # 0.08 span starts per frame, spans of 10 overlapping: about 1 - e^-0.8 = 55 % of the frames
    assert 0.5 < mask[1:].float().mean() < 0.62


def test_loss_decreases_on_toy_tones(km_path):
    before, after = train_on_tones(_objective(km_path, unmasked_weight=1.0), 40)
    # from about ln 16 = 2.77 (a guess among the 16 clusters)
    assert before["masked_loss"] > 2.5 and after["masked_loss"] < before["masked_loss"] - 0.5, (before, after)
    assert after["masked_accuracy"] > before["masked_accuracy"] + 0.1, (before, after)
    assert after["unmasked_accuracy"] > before["unmasked_accuracy"] + 0.1, (before, after)


def test_spec_synthetic_random_targets_and_kmeans_required_for_shards(km_path, tmp_path):
    from ptft_engine.config import load_run_config
    from ptft_engine.config.schema import SyntheticDataConfig

    spec = get_spec("hubert")
    assert (spec.arch, spec.data.kind, spec.data.tokenizer, spec.unit) == ("wav2vec2", "audio", False, "samples")
    batch = spec.synthetic_batch(SyntheticDataConfig(synthetic=True, batch_size=2, seq_len=24),
                                 torch.Generator().manual_seed(0))
    obj = build_objective(load_model_config(TINY), {"name": "hubert", "final_dim": 16})
    assert obj.targets is None and obj.label_embs.shape == (hubert.RANDOM_CLUSTERS, 16)
    out = obj(batch)  # random ids: about ln 100 = 4.6
    assert 3.5 < out["loss"].item() < 6.0
    assert spec.flops_per_unit(obj, 24) == obj.flops_per_sample(24 * 320 + 80) > 0
    RunConfig.model_validate({"objective": {"name": "hubert"}})  # synthetic data: random targets are fine
    recipe = tmp_path / "hubert.yaml"
    recipe.write_text(f"model: {TINY}\nobjective: {{name: hubert}}\ndata: {{shards: [somewhere], kind: audio}}\n")
    with pytest.raises(ConfigError) as info:
        load_run_config(recipe)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{recipe}: objective.kmeans_path: required to train on audio shards")
    assert load_run_config(recipe, [f"objective.kmeans_path={km_path}"]).objective.kmeans_path == str(km_path)
    other = {**load_model_config(TINY).model_dump(), "conv_stride": [5, 2, 2, 2, 2, 2, 1]}
    with pytest.raises(ValueError, match="a frame every 160 samples; the MFCC targets are 320 apart"):
        build_objective(other, {"name": "hubert"})


def test_speech_targets_command_fits_audio_shards(tmp_path, capsys):
    import soundfile as sf

    clips = tmp_path / "clips"
    clips.mkdir()
    for i, wave in enumerate(tones(6, seconds=1.0)):
        sf.write(clips / f"c{i}.wav", (0.3 * wave / wave.abs().max()).numpy(), 16_000, subtype="PCM_16")
    shards = tmp_path / "shards"
    assert cli.main(["shard", str(clips), "--format", "audio", "--output", str(shards), "--workers", "1",
                     "--no-progress"]) == 0
    out = tmp_path / "targets" / "km.json"
    assert cli.main(["speech-targets", str(shards), "--output", str(out), "--clusters", "5", "--seed", "1"]) == 0
    assert f"k-means of {6 * 49} MFCC frames into 5 clusters" in capsys.readouterr().out
    km = st.KMeansTargets.load(out)
    assert km.num_clusters == 5 and km.frames == 6 * 49
    # the fit saw each clip normalised as the stream normalises it: standardised features average 0
    from ptft_engine.data.audio import iter_clips, normalize

    feats = torch.cat([st.mfcc(torch.from_numpy(normalize(c))[None])[0] for c in iter_clips(str(shards), 16_000)])
    torch.testing.assert_close(feats.mean(0), km.mean, atol=1e-3, rtol=1e-4)
    capsys.readouterr()
    assert cli.main(["speech-targets", str(tmp_path / "nowhere"), "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nowhere" in err
    assert cli.main(["speech-targets", str(shards), "--output", str(out), "--clusters", "400"]) == 1
    assert "294 MFCC frames are too few for 400 clusters" in capsys.readouterr().err
