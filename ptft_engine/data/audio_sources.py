"""Audio inputs for `ptft shard --format audio`: WAV/FLAC/OGG read with soundfile, resampled
to one rate, stored as int16 PCM.

Why int16 and not float16 (both 2 bytes a sample): WAV and FLAC sources are almost always
16-bit, so int16 at the source rate is lossless, and after resampling its uniform step
(2^-15 of full scale, -96 dB) is finer than float16's at any loud sample (11-bit
mantissa: a step of 2^-11 near full scale). The stream turns it into float32.

A sample is KEY.pcm (little-endian int16 mono frames at the index's "sample_rate"),
KEY.cls (class index into the index's "classes") and KEY.txt (transcript) when a manifest
gives them. The manifest is JSONL, one {"path": ..., "label": ..., "text": ...} per clip,
paths relative to the manifest; with one, every input must have an entry. Classes are the
manifest's labels sorted (numerically when all are numbers), so a train and a test
manifest with the same labels give the same class indexes.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from ptft_engine.data.errors import DataError, log
from ptft_engine.data.inputs import expand_inputs

AUDIO_EXTS = (".wav", ".flac", ".ogg")
CLIPS_PER_ITEM = 32  # work item size: enough to amortise a pool round trip, small enough to spread
PCM_DTYPE = "<i2"


def read_manifest(path: str) -> dict[str, dict]:
    """{absolute clip path: {"label": ..., "text": ...}} from a JSONL manifest."""
    root = os.path.dirname(os.path.abspath(path))
    out: dict[str, dict] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"manifest {path!r} is unreadable ({exc})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"manifest {path}:{n} is not valid JSON ({exc})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("path"), str):
            raise DataError(f"manifest {path}:{n} has no \"path\" string")
        if "text" in rec and not isinstance(rec["text"], str):
            raise DataError(f"manifest {path}:{n}: \"text\" must be a string")
        clip = os.path.abspath(os.path.join(root, rec["path"]))
        out[clip] = {k: rec[k] for k in ("label", "text") if k in rec}
    if not out:
        raise DataError(f"manifest {path!r} lists no clips")
    return out


def class_names(entries) -> list[str]:
    """The distinct labels, sorted (numerically when all are numbers), as strings."""
    labels = {e["label"] for e in entries if "label" in e}
    if labels and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in labels):
        return [str(x) for x in sorted(labels)]
    return sorted(str(x) for x in labels)


def plan_audio(inputs: list[str], manifest: str | None) -> tuple[list[tuple], dict]:
    """Groups of (path, class index or -1, transcript or None), and index metadata (classes)."""
    try:  # here, not in the pool workers, where every clip would fail with it
        import scipy.signal  # noqa: F401
        import soundfile  # noqa: F401
    except (ModuleNotFoundError, OSError) as exc:  # soundfile raises OSError without libsndfile
        raise DataError(f"--format audio needs soundfile and scipy ({exc}); pip install 'ptft_engine[audio]'") from None
    files = expand_inputs(inputs, AUDIO_EXTS)
    meta: dict = {}
    entries = read_manifest(manifest) if manifest else None
    classes: list[str] = []
    if entries is not None:
        classes = class_names(entries.values())
        if classes:
            meta["classes"] = classes
    clips = []
    for path in files:
        entry = entries.get(os.path.abspath(path)) if entries is not None else {}
        if entry is None:
            clips.append((path, None, None))  # named as a bad input when processed
            continue
        cls = classes.index(str(entry["label"])) if "label" in entry else -1
        clips.append((path, cls, entry.get("text")))
    missing = sorted(p for p in entries or () if not os.path.exists(p))
    if missing:  # a typo in a path, or a clip lost on the way: its label would go unseen
        log.warning("manifest %s lists %d clip(s) that do not exist, e.g. %s", manifest, len(missing),
                    ", ".join(missing[:3]))
    groups = [tuple(clips[i:i + CLIPS_PER_ITEM]) for i in range(0, len(clips), CLIPS_PER_ITEM)]
    return groups, meta


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (scipy's resample_poly: an FIR anti-aliasing filter) by the
    reduced ratio rate_out/rate_in."""
    if rate_in == rate_out:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(rate_in, rate_out)
    return resample_poly(x, rate_out // g, rate_in // g).astype(np.float32)


def to_pcm16(x: np.ndarray) -> bytes:
    """float [-1, 1) -> little-endian int16 bytes; overshoot from resampling is clipped."""
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(PCM_DTYPE).tobytes()


def read_clip(path: str, rate: int) -> tuple[np.ndarray, int]:
    """Mono float32 frames at `rate`, and the bytes read; raises ValueError with the reason."""
    import soundfile as sf

    try:
        with sf.SoundFile(path) as f:
            if f.channels != 1:
                raise ValueError(f"has {f.channels} channels; audio shards are mono (downmix it first)")
            x = f.read(dtype="float32")
            rate_in = f.samplerate
    except ValueError:
        raise
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise ValueError(f"unreadable audio ({exc.__class__.__name__}: {exc})") from None
    if len(x) == 0:
        raise ValueError("empty audio (0 frames)")
    return resample(x, rate_in, rate), os.path.getsize(path)


def process_audio(clips: tuple, rate: int) -> tuple[list[dict], list[tuple[str, str]], int]:
    """Encoded samples of one group of clips, its bad inputs (name, reason), and bytes read."""
    samples, bad, nbytes = [], [], 0
    for path, cls, text in clips:
        if cls is None:
            bad.append((path, "not listed in the manifest"))
            continue
        try:
            x, size = read_clip(path, rate)
        except ValueError as exc:
            bad.append((path, str(exc)))
            continue
        nbytes += size
        sample = {"pcm": to_pcm16(x)}
        if cls >= 0:
            sample["cls"] = str(cls).encode()
        if text is not None:
            sample["txt"] = text.encode("utf-8")
        samples.append(sample)
    return samples, bad, nbytes
