"""Offline speech for the demo, synthesised with eSpeak NG (demo/espeak.py) and sharded with
`ptft shard --format audio` at 16 kHz.

(a) pretrain: unlabelled sentences from Python's own help texts (pydoc_data.topics), each
    read by a voice, speed and pitch drawn from a seeded generator.
(b) spoken digits "zero".."nine", labelled 0..9, several renditions (speed, pitch) per
    voice; the test voices never speak in train (their variants and accents are held out).

eSpeak's output differs by a few frames from call to call (its synthesiser keeps state),
so the audio is not bit-reproducible; the texts, voices, labels and split are.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000  # what the shards hold (wav2vec 2.0's rate)
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# eSpeak NG voice = English accent + variant; variants are distinct speakers (m = male, f = female)
ACCENTS = ["en-us", "en", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-rp"]
TRAIN_VARIANTS = ["m1", "m2", "m3", "m4", "m6", "f1", "f2", "f3"]
TEST_VARIANTS = ["m5", "m7", "f4", "f5"]
SIZES = {  # sentences, digit renditions per (voice, digit), train voices used
    "quick": {"sentences": 40, "renditions": 1, "train_voices": 4},
    "full": {"sentences": 400, "renditions": 3, "train_voices": 8},
}


def voices(variants: list[str], offset: int) -> list[str]:
    """One voice per variant, each with its own accent (cycled), e.g. en-us+m1."""
    return [f"{ACCENTS[(i + offset) % len(ACCENTS)]}+{v}" for i, v in enumerate(variants)]


def split_voices(n_train: int) -> dict[str, list[str]]:
    # test voices take the accents after the train ones, so where possible accent and speaker are new
    return {"train": voices(TRAIN_VARIANTS[:n_train], 0), "test": voices(TEST_VARIANTS, n_train)}


def sentences(n: int, seed: int) -> list[str]:
    """`n` plain-English sentences (20..160 characters, letters and punctuation only) from
    Python's help texts, drawn by `seed`."""
    from pydoc_data.topics import topics

    found = set()
    for text in topics.values():
        for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            if 20 <= len(s) <= 160 and re.fullmatch(r"[A-Za-z ,;'()-]+[.!?]", s):
                found.add(s)
    pool = sorted(found)
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]


def _write(path: Path, audio: np.ndarray) -> None:
    import soundfile as sf

    from ptft_engine.demo.espeak import SAMPLE_RATE as ESPEAK_RATE

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, ESPEAK_RATE, subtype="PCM_16")


def _shard(wav_dir: Path, out: Path, manifest: Path | None, workers: int) -> dict:
    from ptft_engine.data import sources
    from ptft_engine.data.shards import write_shards

    opts = sources.Options(format="audio", manifest=str(manifest) if manifest else None, sample_rate=SAMPLE_RATE)
    summary = write_shards([str(wav_dir)], str(out), opts, shard_bytes=32 << 20, workers=workers,
                           overwrite=True, progress=False, strict=True)
    index = json.loads(Path(summary.index_path).read_text())
    return {"shards": str(out), "clips": summary.samples, "seconds": index["total_seconds"]}


def write_pretrain_speech(root: Path, n: int, seed: int = 0, workers: int = 2) -> dict:
    """Unlabelled sentences read by all voices (train and test: no labels to leak)."""
    from ptft_engine.demo.espeak import speak

    rng = np.random.default_rng(seed)
    pool = split_voices(len(TRAIN_VARIANTS))
    all_voices = pool["train"] + pool["test"]
    for i, text in enumerate(sentences(n, seed)):
        voice = all_voices[int(rng.integers(len(all_voices)))]
        audio = speak(text, voice=voice, rate=int(rng.integers(130, 221)), pitch=int(rng.integers(25, 76)))
        _write(root / "wav" / "pretrain" / f"{i:05d}.wav", audio)
    return _shard(root / "wav" / "pretrain", root / "shards" / "pretrain", None, workers)


def write_spoken_digits(root: Path, renditions: int, n_train_voices: int, seed: int = 0,
                        workers: int = 2) -> dict:
    """Digits spoken by train voices and by held-out test voices, with manifests of labels."""
    from ptft_engine.demo.espeak import speak

    rng = np.random.default_rng(seed + 1)
    split = split_voices(n_train_voices)
    out = {"voices": split}
    for name, vs in split.items():
        folder = root / "wav" / f"digits_{name}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for voice in vs:
            for label, word in enumerate(DIGITS):
                for r in range(renditions):
                    audio = speak(word, voice=voice, rate=int(rng.integers(120, 231)),
                                  pitch=int(rng.integers(25, 76)))
                    rel = f"{voice.replace('+', '_')}_{word}_{r}.wav"
                    _write(folder / rel, audio)
                    lines.append(json.dumps({"path": rel, "label": label, "text": word, "voice": voice}))
        manifest = folder / "manifest.jsonl"
        manifest.write_text("\n".join(lines) + "\n")
        out[name] = _shard(folder, root / "shards" / f"digits_{name}", manifest, workers)
    return out


def write_speech_data(root: Path, size: str = "quick", seed: int = 0, workers: int = 2) -> dict:
    """Both corpora under `root` (wav/ and shards/); returns their shard paths and counts:
    {"pretrain": {...}, "digits": {"train": {...}, "test": {...}, "voices": {...}}}."""
    if size not in SIZES:
        raise ValueError(f"speech data size {size!r} is not one of {', '.join(SIZES)}")
    plan = SIZES[size]
    root = Path(root)
    return {"pretrain": write_pretrain_speech(root, plan["sentences"], seed, workers),
            "digits": write_spoken_digits(root, plan["renditions"], plan["train_voices"], seed, workers)}
