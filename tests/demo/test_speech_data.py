"""Offline speech: eSpeak NG synthesis through ctypes, the spoken-digit task's labels and
held-out voices, the unlabelled sentences."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ptft_engine.data.index import load_index, read_members
from ptft_engine.demo import speech_data
from ptft_engine.demo.espeak import SAMPLE_RATE, EspeakError, speak


def _samples(shard_dir: str) -> list[dict]:
    index = load_index(os.path.join(shard_dir, "index.json"))
    out = []
    for s in index.shards:
        with open(s.path, "rb") as fh:
            out += [read_members(fh, s.offset_table(), i) for i in range(s.samples)]
    return out


def test_espeak_speaks_with_voices_speeds_and_pitches():
    a = speak("seven", voice="en-us+m1", rate=175, pitch=50)
    assert a.dtype == np.int16 and 0.2 < len(a) / SAMPLE_RATE < 2.0  # one word: a fraction of a second
    assert np.abs(a.astype(np.int32)).max() > 3000  # speech, not silence
    slow = speak("seven", voice="en-us+m1", rate=90, pitch=50)
    assert len(slow) > 1.4 * len(a)  # half the speed: clearly longer
    sentence = speak("The quick brown fox jumps over the lazy dog.", voice="en+f3")
    assert len(sentence) > 3 * len(a)

    def pitch_hz(x):  # first autocorrelation peak (>= 0.8 of the best) between 60 and 400 Hz, mid-vowel
        x = x.astype(np.float64)
        loudest = int(np.argmax(np.convolve(x * x, np.ones(512), "same")))
        x = x[max(0, loudest - 1024): loudest + 1024]
        r = np.correlate(x - x.mean(), x - x.mean(), "full")[len(x) - 1:]
        seg = r[SAMPLE_RATE // 400: SAMPLE_RATE // 60]
        return SAMPLE_RATE / (SAMPLE_RATE // 400 + int(np.argmax(seg > 0.8 * seg.max())))

    low, high = (pitch_hz(speak("aaah", voice="en+f3", pitch=p)) for p in (20, 90))
    assert 120 < low < 220 and high > 1.5 * low  # measured: about 162 and 302 Hz
    with pytest.raises(EspeakError, match="no voice 'xx-nope'"):
        speak("hi", voice="xx-nope")


def test_spoken_digits_hold_out_voices_and_label_right(tmp_path):
    out = speech_data.write_spoken_digits(tmp_path, renditions=1, n_train_voices=2, workers=1)
    train_voices, test_voices = out["voices"]["train"], out["voices"]["test"]
    assert len(train_voices) == 2 and len(test_voices) == 4
    speakers = lambda vs: {v.split("+")[1] for v in vs}  # noqa: E731
    assert not set(train_voices) & set(test_voices) and not speakers(train_voices) & speakers(test_voices)
    assert out["train"]["clips"] == 2 * 10 and out["test"]["clips"] == 4 * 10
    for split, voices in (("train", train_voices), ("test", test_voices)):
        manifest_path = tmp_path / "wav" / f"digits_{split}" / "manifest.jsonl"
        manifest = [json.loads(line) for line in manifest_path.read_text().splitlines()]
        assert {m["voice"] for m in manifest} == set(voices)
        doc = json.loads(Path(os.path.join(out[split]["shards"], "index.json")).read_text())
        assert doc["classes"] == [str(d) for d in range(10)] and doc["sample_rate"] == 16_000
        samples = _samples(out[split]["shards"])
        words = [s["txt"].decode() for s in samples]
        assert sorted(words) == sorted(speech_data.DIGITS * len(voices))
        for s in samples:
            assert speech_data.DIGITS[int(s["cls"])] == s["txt"].decode()  # label = the digit spoken
            assert 0.2 < len(s["pcm"]) / 2 / 16_000 < 2.0


def test_pretrain_sentences_are_unlabelled_speech(tmp_path):
    texts = speech_data.sentences(5, seed=1)
    assert len(set(texts)) == 5 and texts == speech_data.sentences(5, seed=1)
    assert all(t[-1] in ".!?" and 20 <= len(t) <= 160 for t in texts)
    out = speech_data.write_pretrain_speech(tmp_path, 6, seed=1, workers=1)
    assert out["clips"] == 6 and out["seconds"] > 6  # sentences last seconds each
    doc = json.loads(Path(os.path.join(out["shards"], "index.json")).read_text())
    assert "classes" not in doc and doc["kind"] == "audio"
    assert all(set(s) == {"__key__", "pcm"} for s in _samples(out["shards"]))
    with pytest.raises(ValueError, match="size 'huge'"):
        speech_data.write_speech_data(tmp_path, size="huge")
