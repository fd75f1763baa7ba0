"""Audio shards and batches: resampling round trip, bad clips counted, crops, masks, the
stream's exact-once / equal-batches / exact-resume guarantees on audio."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly

from ptft_engine import cli
from ptft_engine.data import DataConfig, DataError, build_loader
from ptft_engine.data.audio import AudioBuilder, crop_start, normalize
from ptft_engine.data.errors import BadSamples
from ptft_engine.data.index import load_index, read_members
from ptft_engine.data.needs import DataNeeds
from ptft_engine.objectives.spec import ObjectiveConfigBase, ObjectiveSpec, register, unregister

AUDIO = "audio_probe"  # an objective registered for these tests: the stream only reads its DataNeeds
N_CLIPS = 23  # clip i: 800 + 40 i frames at 16 kHz, label i % 3 -> a clip's length names it


class _ProbeConfig(ObjectiveConfigBase):
    name: Literal["audio_probe"] = "audio_probe"


@pytest.fixture(scope="module", autouse=True)
def audio_objective():
    spec = register(ObjectiveSpec(name=AUDIO, config=_ProbeConfig, arch="encoder", data=DataNeeds(kind="audio"),
                                  synthetic_batch=lambda cfg, g: {}, unit="samples",
                                  flops_per_unit=lambda objective, seq_len: 0.0, build=lambda model, cfg: model))
    try:
        yield spec.name
    finally:
        unregister(AUDIO)


def _tone(i: int, n: int, rate: int) -> np.ndarray:
    t = np.arange(n) / rate
    return (0.4 * np.sin(2 * np.pi * (150 + 20 * i) * t) + 0.05 * np.cos(7 * t * (i + 1))).astype(np.float32)


def _length(i: int) -> int:
    return 800 + 40 * i


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    with open(root / "labels.jsonl", "w") as f:
        for i in range(N_CLIPS):
            sf.write(root / f"c{i:02d}.wav", _tone(i, _length(i), 16_000), 16_000, subtype="PCM_16")
            row = {"path": f"c{i:02d}.wav", "label": ["yes", "no", "up"][i % 3], "text": f"clip {i}"}
            f.write(json.dumps(row) + "\n")
    return root


@pytest.fixture(scope="module")
def audio_shards(clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ashards") / "s"
    assert cli.main(["shard", str(clip_dir), "--format", "audio", "--manifest", str(clip_dir / "labels.jsonl"),
                     "--output", str(out), "--workers", "1", "--no-progress", "--max-samples", "5"]) == 0
    return str(out)


def _pcm(clip_dir, i: int) -> np.ndarray:
    """Clip i as the shard holds it: the WAV's int16 frames (16 kHz in, 16 kHz out: no resampling)."""
    return sf.read(clip_dir / f"c{i:02d}.wav", dtype="int16")[0].astype(np.float32) / 32768


def _shard(inputs, out, *extra) -> int:
    return cli.main(["shard", *map(str, inputs), "--format", "audio", "--output", str(out), "--workers", "1",
                     "--no-progress", *extra])


def _members(shard_dir) -> list[dict]:
    index = load_index(os.path.join(shard_dir, "index.json"))
    out = []
    for s in index.shards:
        table = s.offset_table()
        with open(s.path, "rb") as fh:
            out += [read_members(fh, table, i) for i in range(s.samples)]
    return out


def test_shard_resamples_to_one_rate_and_indexes_durations(tmp_path, capsys):
    rate_in, n = 22_050, 5_000
    x = _tone(3, n, rate_in)
    sf.write(tmp_path / "a.flac", x, rate_in)  # FLAC, 16-bit
    sf.write(tmp_path / "b.wav", x[:1000], 16_000, subtype="FLOAT")
    assert _shard([tmp_path / "a.flac", tmp_path / "b.wav"], tmp_path / "out") == 0
    doc = json.loads((tmp_path / "out" / "index.json").read_text())
    assert doc["kind"] == "audio" and doc["sample_rate"] == 16_000 and doc["pcm_dtype"] == "<i2"
    assert "classes" not in doc  # no manifest: unlabelled
    frames = np.fromfile(tmp_path / "out" / doc["shards"][0]["lengths"], dtype="<u4").tolist()
    expect = -(-n * 320 // 441)  # resample_poly's output length: ceil(n * up / down)
    assert frames == [expect, 1000]
    assert doc["shards"][0]["seconds"] == doc["total_seconds"] == round((expect + 1000) / 16_000, 3)
    a, b = _members(tmp_path / "out")
    assert set(a) == {"__key__", "pcm"}
    got = np.frombuffer(a["pcm"], "<i2") / 32768
    ref = resample_poly(sf.read(tmp_path / "a.flac", dtype="float32")[0], 320, 441)
    assert np.abs(got - ref).max() <= 1 / 32768 + 1e-6  # int16 rounding is the only loss
    assert np.array_equal(np.frombuffer(b["pcm"], "<i2"), np.rint(x[:1000] * 32768).astype("<i2"))
    # --sample-rate picks another rate
    assert _shard([tmp_path / "a.flac"], tmp_path / "out8", "--sample-rate", "8000") == 0
    assert json.loads((tmp_path / "out8" / "index.json").read_text())["shards"][0]["seconds"] == round(
        -(-n * 160 // 441) / 8000, 3)


def test_manifest_labels_and_transcripts(audio_shards):
    doc = json.loads(Path(os.path.join(audio_shards, "index.json")).read_text())
    assert doc["classes"] == ["no", "up", "yes"] and doc["total_samples"] == N_CLIPS
    assert [s["samples"] for s in doc["shards"]] == [5, 5, 5, 5, 3]
    for i, m in enumerate(_members(audio_shards)):  # inputs are written in file-name order
        assert m["txt"].decode() == f"clip {i}"
        assert doc["classes"][int(m["cls"])] == ["yes", "no", "up"][i % 3]
        assert len(m["pcm"]) == 2 * _length(i)


def test_bad_clips_are_counted_and_named_and_the_rest_written(tmp_path, clip_dir, capsys, caplog):
    good = [clip_dir / "c00.wav", clip_dir / "c01.wav"]
    sf.write(tmp_path / "stereo.wav", np.zeros((500, 2), np.float32), 16_000)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16_000)
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x00not audio at all")
    bad = [tmp_path / "stereo.wav", tmp_path / "empty.wav", tmp_path / "garbage.wav"]
    assert _shard(good + bad, tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "wrote 2 samples" in out and "skipped 3 bad inputs" in out
    assert "stereo.wav: has 2 channels" in out and "empty.wav: empty audio" in out
    assert "garbage.wav: unreadable audio" in out
    assert _shard(good + bad, tmp_path / "strict", "--strict") == 1
    assert "stereo.wav" in capsys.readouterr().err
    # with a manifest, a clip it does not list is a bad input too
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": str(good[0]), "label": 1}) + "\n"
                        + json.dumps({"path": "missing.wav", "label": 2}) + "\n")
    assert _shard(good, tmp_path / "m", "--manifest", str(manifest)) == 0
    assert "c01.wav: not listed in the manifest" in capsys.readouterr().out
    assert "lists 1 clip(s) that do not exist" in caplog.text and "missing.wav" in caplog.text
    manifest.write_text('{"path": "a.wav"}\nnot json\n')
    assert _shard(good, tmp_path / "m2", "--manifest", str(manifest)) == 1
    assert "m.jsonl:2 is not valid JSON" in capsys.readouterr().err
    assert cli.main(["shard", str(good[0]), "--manifest", str(manifest), "--output", str(tmp_path / "t"),
                     "--no-progress"]) == 1
    assert "--manifest gives labels of audio clips" in capsys.readouterr().err


def _cfg(shards, **kw) -> DataConfig:
    base = dict(shards=[shards], kind="audio", batch_size=3, num_workers=0, shuffle_buffer=8, seed=5,
                emit_sample_index=True)
    return DataConfig(**{**base, **kw})


def _take(loader, n=None) -> list[dict]:
    out = []
    for b in loader:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return out


def _same(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_batches_pad_mask_normalise_and_label(audio_shards, clip_dir):
    loader = build_loader(_cfg(audio_shards), objective=AUDIO)
    assert loader.builder.sample_rate == 16_000
    batches = _take(loader)
    assert len(batches) == N_CLIPS // 3
    for b in batches:
        x, mask = b["input_values"], b["attention_mask"]
        assert x.dtype == torch.float32 and mask.dtype == torch.bool and b["labels"].dtype == torch.int64
        lengths = mask.sum(1)
        assert x.shape[1] == int(lengths.max())  # no crop: padded to the batch's longest clip
        assert all(mask[r, : lengths[r]].all() for r in range(3))  # real frames first, then padding
        assert (x[~mask] == 0).all()
        for r in range(3):
            i = (int(lengths[r]) - 800) // 40  # the clip's length names it
            real = x[r, : lengths[r]]
            assert abs(float(real.mean())) < 1e-4 and abs(float(real.std(unbiased=False)) - 1) < 1e-3
            assert int(b["labels"][r]) == ["no", "up", "yes"].index(["yes", "no", "up"][i % 3])
            np.testing.assert_allclose(real.numpy(), normalize(_pcm(clip_dir, i)), atol=1e-6)


def test_crops_are_fixed_length_deterministic_and_pure(audio_shards, clip_dir):
    crop = 1000  # clips 0..4 are shorter: padded; the rest are cropped
    cfg = _cfg(audio_shards, audio_crop_samples=crop, audio_normalize=False, shuffle=False)
    e0 = _take(build_loader(cfg, objective=AUDIO))
    _same(e0, _take(build_loader(cfg, objective=AUDIO)))
    for b in e0:
        assert b["input_values"].shape == (3, crop)
        for r, pos in enumerate(b["sample_index"].tolist()):  # unshuffled: position = clip index
            n = _length(pos)
            assert int(b["attention_mask"][r].sum()) == min(n, crop)
            start = crop_start(n, crop, cfg.seed, 0, pos)
            assert np.array_equal(b["input_values"][r, : min(n, crop)].numpy(),
                                  _pcm(clip_dir, pos)[start: start + crop])
    starts = {crop_start(_length(i), crop, cfg.seed, e, i) for i in range(5, N_CLIPS) for e in range(3)}
    assert len(starts) > 10  # windows move from clip to clip and epoch to epoch
    assert {crop_start(crop + 1, crop, seed, 0, 0) for seed in range(40)} == {0, 1}  # both ends reachable
    assert np.array_equal(normalize(np.zeros(50, np.float32)), np.zeros(50))  # silence stays finite
    e1 = _take(build_loader(cfg, objective=AUDIO, epoch=1))
    assert any(not torch.equal(a["input_values"], b["input_values"]) for a, b in zip(e0, e1))


def test_exact_once_across_2_ranks_x_2_workers_and_equal_batches(audio_shards):
    cfg = _cfg(audio_shards, num_workers=2, audio_crop_samples=900)
    per_rank = [[b["sample_index"].tolist() for b in build_loader(cfg, objective=AUDIO, rank=r, world_size=2)]
                for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == N_CLIPS // 6
    seen = sorted(p for rank in per_rank for batch in rank for p in batch)
    assert seen == list(range(N_CLIPS // 6 * 6))
    alone = [b["sample_index"].tolist() for b in build_loader(cfg.model_copy(update={"num_workers": 0}),
                                                              objective=AUDIO, rank=1, world_size=2)]
    assert alone == per_rank[1]  # the worker count does not change what a rank yields


def test_resume_is_exact_also_on_another_world_size(audio_shards):
    cfg = _cfg(audio_shards, audio_crop_samples=900, batch_size=2)
    full = _take(build_loader(cfg, objective=AUDIO))
    first = build_loader(cfg, objective=AUDIO)
    _same(_take(first, 3), full[:3])
    state = json.loads(json.dumps(first.state_dict()))
    resumed = build_loader(cfg.model_copy(update={"num_workers": 1}), objective=AUDIO)
    resumed.load_state_dict(state)
    _same(_take(resumed), full[3:])
    # two ranks from the same state cover the rest of the single-rank order, same crops per clip
    two = [build_loader(cfg, objective=AUDIO, rank=r, world_size=2) for r in range(2)]
    by_pos = {p: (b["input_values"][r], b["labels"][r]) for b in full for r, p in enumerate(b["sample_index"].tolist())}
    for ld in two:
        ld.load_state_dict(state)
        for b in ld:
            for r, p in enumerate(b["sample_index"].tolist()):
                assert p >= 6 and torch.equal(b["input_values"][r], by_pos[p][0]) and b["labels"][r] == by_pos[p][1]


def test_corrupt_clip_is_refilled_and_source_checks(tmp_path, audio_shards, clip_dir, text_shards):
    import webdataset as wds

    shard = tmp_path / "raw.tar"
    with wds.TarWriter(str(shard), encoder=False) as w:
        for i in range(4):
            pcm = b"\x01" if i == 2 else np.arange(100, dtype="<i2").tobytes()  # one odd-sized member
            w.write({"__key__": f"k{i}", "pcm": pcm})
    cfg = _cfg(str(shard), batch_size=4, shuffle=False)
    loader = build_loader(cfg, objective=AUDIO)
    (b,) = _take(loader)
    assert b["input_values"].shape == (4, 100) and "labels" not in b  # no classes: unlabelled
    assert loader.stats["skipped"] == 1 and loader.stats["repeated"] == 1
    with pytest.raises(Exception, match=r"shard '.*raw.tar', key 'k2'"):
        _take(build_loader(cfg.model_copy(update={"strict": True}), objective=AUDIO))
    broken = tmp_path / "broken.tar"
    with wds.TarWriter(str(broken), encoder=False) as w:
        for i in range(3):
            w.write({"__key__": f"b{i}", "pcm": b""})
    with pytest.raises(ValueError, match="every clip of a batch failed to decode.*b0.*b1.*b2"):
        _take(build_loader(_cfg(str(broken), shuffle=False), objective=AUDIO))
    # a labelled batch refills rows with their own labels
    pcm = lambda n: {"pcm": np.full(n, 1000 * n, "<i2").tobytes()}  # noqa: E731
    records = [(0, "s", "a", {**pcm(3), "cls": b"4"}), (1, "s", "b", {**pcm(5), "cls": b"1"}),
               (2, "s", "c", {"pcm": b"\x01", "cls": b"2"}), (3, "s", "d", {**pcm(4), "cls": b"7"})]
    builder = AudioBuilder(_cfg(str(shard), batch_size=5, audio_normalize=False), [])
    builder.labelled = True
    batch, stats, kept = builder.build(records, epoch=0, first_pos=0, bad=BadSamples(strict=False))
    assert kept == [0, 1, 3] and stats["repeated"] == 2 and batch["labels"].tolist() == [4, 1, 7, 4, 1]
    assert batch["attention_mask"].sum(1).tolist() == [3, 5, 4, 3, 5]
    # tars made elsewhere: --index-only knows them as audio; their rate is the config's
    assert cli.main(["shard", "--index-only", str(shard), "--output", str(tmp_path / "idx")]) == 0
    assert load_index(str(tmp_path / "idx" / "index.json")).kind == "audio"
    assert build_loader(cfg.model_copy(update={"audio_sample_rate": 8000}), objective=AUDIO).builder.sample_rate == 8000
    index = Path(tmp_path / "idx" / "index.json")
    index.write_text(index.read_text().replace('"kind"', '"pcm_dtype": "<f2", "kind"'))
    with pytest.raises(DataError, match="store PCM as '<f2'"):
        build_loader(_cfg(str(index)), objective=AUDIO)
    with pytest.raises(DataError, match="data.audio_sample_rate is 8000"):
        build_loader(_cfg(audio_shards, audio_sample_rate=8000), objective=AUDIO)
    assert _shard([clip_dir / "c05.wav"], tmp_path / "s8", "--sample-rate", "8000") == 0
    with pytest.raises(DataError, match="different sample rates"):
        build_loader(_cfg(audio_shards).model_copy(update={"shards": [audio_shards, str(tmp_path / "s8")]}),
                     objective=AUDIO)
    # an objective whose features assume a rate (HuBERT's 16 kHz MFCC targets) refuses shards at another
    with pytest.raises(DataError, match="s8/shard-000000.tar are at 8000 Hz, but the objective's features assume"):
        build_loader(_cfg(str(tmp_path / "s8")), objective="hubert")
    with pytest.raises(DataError, match=f"shards {text_shards}.* hold 'text' data, not audio"):
        build_loader(_cfg(text_shards), objective=AUDIO)
    manifest = tmp_path / "other.jsonl"
    manifest.write_text(json.dumps({"path": str(clip_dir / "c05.wav"), "label": "stop"}) + "\n")
    assert _shard([clip_dir / "c05.wav"], tmp_path / "other", "--manifest", str(manifest)) == 0
    with pytest.raises(DataError, match="different class lists"):
        build_loader(_cfg(audio_shards).model_copy(update={"shards": [audio_shards, str(tmp_path / "other")]}),
                     objective=AUDIO)
    with pytest.raises(DataError, match="needs data kind 'audio'"):
        build_loader(_cfg(audio_shards, kind="image"), objective=AUDIO)
