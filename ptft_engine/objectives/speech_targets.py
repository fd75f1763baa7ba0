"""HuBERT's first-iteration targets: k-means cluster ids of MFCC frames (Hsu et al. 2021).

Features: 39 per frame, 13 MFCCs (23 mel bands, orthonormal DCT-II, cepstral liftering 22 and
pre-emphasis 0.97: Kaldi's defaults, which HuBERT's MFCCs use; a Hamming window where Kaldi
uses its "povey" window) + deltas + delta-deltas (regression over +-2 frames). Windows of 400
samples every 320 at 16 kHz: the receptive field and the stride of wav2vec 2.0's conv encoder,
so MFCC frame t covers the samples conv frame t sees and there is one target per model frame
(HuBERT's MFCC targets run at 100 Hz and are subsampled; here they are made at the model's
50 Hz directly). Deltas stop at each clip's last real frame, so padding never changes a real
frame's features.

`fit_kmeans` standardises the features of a corpus (per dimension) and clusters them with
scikit-learn's MiniBatchKMeans; `KMeansTargets` holds the centroids and the standardisation,
saves them as one JSON file and turns audio into cluster ids (nearest centroid). The model
never sees these features: they only make its targets.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ptft_engine.errors import ConfigError
from ptft_engine.labels import IGNORE_INDEX

FORMAT = "ptft-kmeans-targets"
SAMPLE_RATE = 16_000
WINDOW = 400  # 25 ms: the conv encoder's receptive field
HOP = 320  # 20 ms: its stride
N_FFT = 512
N_MELS = 23
N_CEPS = 13
LIFTER = 22
PREEMPHASIS = 0.97
DELTA_SPAN = 2  # frames either side
LOG_FLOOR = 1e-10  # mel energy floor before the log (silence, digital zeros)
FEATURES = {"kind": "mfcc", "sample_rate": SAMPLE_RATE, "window": WINDOW, "hop": HOP, "n_fft": N_FFT,
            "n_mels": N_MELS, "n_ceps": N_CEPS, "lifter": LIFTER, "preemphasis": PREEMPHASIS, "deltas": 2}
DIM = N_CEPS * 3


def num_frames(num_samples: int) -> int:
    """Feature frames of a clip of num_samples: whole windows only."""
    return (num_samples - WINDOW) // HOP + 1 if num_samples >= WINDOW else 0


def _mel(f: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(f / 700.0)  # HTK's mel scale, as Kaldi


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   low_hz: float = 20.0) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) triangles, equally spaced and triangular on the mel scale
    between low_hz and Nyquist, peak 1 (Kaldi's layout)."""
    edges = torch.linspace(float(_mel(torch.tensor(low_hz))), float(_mel(torch.tensor(sample_rate / 2))),
                           n_mels + 2, dtype=torch.float64)
    bins = _mel(torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft)[:, None]  # (F, 1)
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]  # (M,) each
    up = (bins - left) / (centre - left)
    down = (right - bins) / (right - centre)
    return torch.minimum(up, down).clamp(min=0.0).float()


def _dct_lifter(n_mels: int = N_MELS, n_ceps: int = N_CEPS, lifter: int = LIFTER) -> torch.Tensor:
    """(n_mels, n_ceps): orthonormal DCT-II, each column scaled by the cepstral lifter
    1 + L/2 sin(pi k / L), which evens out the coefficients' magnitudes."""
    n = torch.arange(n_mels, dtype=torch.float64)[:, None]
    k = torch.arange(n_ceps, dtype=torch.float64)[None, :]
    dct = torch.cos(math.pi / n_mels * (n + 0.5) * k) * math.sqrt(2.0 / n_mels)
    dct[:, 0] /= math.sqrt(2.0)
    return (dct * (1 + lifter / 2 * torch.sin(math.pi * k / lifter))).float()


def deltas(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, C) -> (B, T, C) regression slopes over +-DELTA_SPAN frames; a neighbour beyond
    either end of a clip's real frames (lengths (B,)) is its edge frame repeated."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, T)
    last = (lengths.to(x.device)[:, None] - 1).clamp(min=0)  # (B, 1)

    def pick(idx: torch.Tensor) -> torch.Tensor:  # (B, T) frame indexes -> (B, T, C)
        return x.gather(1, idx[..., None].expand(-1, -1, x.shape[2]))

    out = torch.zeros_like(x)
    for n in range(1, DELTA_SPAN + 1):
        ahead = torch.minimum(t + n, last).clamp(min=0)  # (B, T)
        behind = torch.minimum((t - n).clamp(min=0), last)
        out = out + n * (pick(ahead) - pick(behind))
    return out / (2 * sum(n * n for n in range(1, DELTA_SPAN + 1)))


def mfcc(audio: torch.Tensor, sample_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) audio at 16 kHz -> (B, num_frames(L), 39) float32 MFCC + deltas + delta-deltas.
    sample_lengths (B,): real samples per row (right padding); None: all real."""
    x = audio.float()
    if x.shape[1] < WINDOW:  # not one whole window
        return x.new_zeros(x.shape[0], 0, DIM)
    frames = x.unfold(1, WINDOW, HOP)  # (B, T, 400)
    frames = frames - frames.mean(-1, keepdim=True)  # DC offset per frame
    frames = torch.cat([frames[..., :1] * (1 - PREEMPHASIS), frames[..., 1:] - PREEMPHASIS * frames[..., :-1]], -1)
    window = torch.hamming_window(WINDOW, periodic=False, dtype=frames.dtype, device=frames.device)
    power = torch.fft.rfft(frames * window, n=N_FFT).abs().pow(2)  # (B, T, 257)
    logmel = (power @ mel_filterbank().to(power.device)).clamp(min=LOG_FLOOR).log()  # (B, T, 23)
    ceps = logmel @ _dct_lifter().to(power.device)  # (B, T, 13)
    if sample_lengths is None:
        lengths = torch.full((x.shape[0],), frames.shape[1], device=x.device)
    else:
        lengths = ((sample_lengths.long() - WINDOW) // HOP + 1).clamp(min=0)
    d1 = deltas(ceps, lengths)
    return torch.cat([ceps, d1, deltas(d1, lengths)], -1)


def _bad(path, why: str) -> ConfigError:
    return ConfigError(f"k-means targets file {path}: {why}")


@dataclass
class KMeansTargets:
    """Standardisation (mean, std: (39,)) and centroids (K, 39) of standardised MFCC frames."""

    mean: torch.Tensor
    std: torch.Tensor
    centroids: torch.Tensor
    frames: int = 0  # frames the centroids were fitted on
    inertia: float = float("nan")  # mean squared distance of a fitted frame to its centroid

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    def assign(self, features: torch.Tensor) -> torch.Tensor:
        """(..., 39) MFCC frames -> (...) id of the nearest centroid (Euclidean, standardised)."""
        dev = features.device
        z = (features.float() - self.mean.to(dev)) / self.std.to(dev)
        c = self.centroids.to(dev)
        # |z - c|^2 = |z|^2 - 2 z.c + |c|^2; |z|^2 is the same for every centroid
        dist = (c * c).sum(-1) - 2 * z @ c.T
        return dist.argmin(-1)

    def cluster_ids(self, audio: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) audio [, (B, L) bool real samples] -> (B, num_frames(L)) ids, IGNORE_INDEX on
        frames that are not whole inside a clip's real samples."""
        lengths = None if attention_mask is None else attention_mask.long().sum(-1)
        with torch.no_grad():
            ids = self.assign(mfcc(audio, lengths))
        if lengths is not None:
            real = torch.arange(ids.shape[1], device=ids.device)[None, :] < ((lengths - WINDOW) // HOP + 1)[:, None]
            ids = ids.masked_fill(~real, IGNORE_INDEX)
        return ids

    def save(self, path: str | Path) -> None:
        doc = {"format": FORMAT, "version": 1, "features": FEATURES, "num_clusters": self.num_clusters,
               "frames": self.frames, "inertia": None if math.isnan(self.inertia) else self.inertia,
               "mean": self.mean.tolist(), "std": self.std.tolist(), "centroids": self.centroids.tolist()}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(doc))

    @classmethod
    def load(cls, path: str | Path) -> KMeansTargets:
        """Raises ConfigError (one line naming the file) for a missing or malformed file."""
        p = Path(path)
        if not p.is_file():
            raise _bad(path, "not found (write one with `ptft speech-targets SHARDS --output FILE`)")
        try:
            doc = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise _bad(path, f"unreadable ({exc})") from None
        except json.JSONDecodeError as exc:
            raise _bad(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise _bad(path, f"not a {FORMAT} file (written by `ptft speech-targets`)")
        if doc.get("features") != FEATURES:
            raise _bad(path, f"made from features {doc.get('features')}, but this version computes {FEATURES}; "
                             "fit it again with `ptft speech-targets`")
        missing = [k for k in ("mean", "std", "centroids") if k not in doc]
        if missing:
            raise _bad(path, f"lacks {', '.join(missing)}")
        try:
            mean, std, centroids = (torch.tensor(doc[k], dtype=torch.float32) for k in ("mean", "std", "centroids"))
        except (TypeError, ValueError) as exc:
            raise _bad(path, f"mean, std and centroids must be lists of numbers ({exc})") from None
        if mean.shape != (DIM,) or std.shape != (DIM,) or centroids.ndim != 2 or centroids.shape[1] != DIM:
            raise _bad(path, f"expected mean and std of {DIM} and centroids of K x {DIM}, got "
                             f"{tuple(mean.shape)}, {tuple(std.shape)}, {tuple(centroids.shape)}")
        if centroids.shape[0] < 2:
            raise _bad(path, f"{centroids.shape[0]} centroid(s); at least 2 are needed")
        if not all(torch.isfinite(t).all() for t in (mean, std, centroids)) or (std <= 0).any():
            raise _bad(path, "holds non-finite numbers or a std <= 0")
        inertia = doc.get("inertia")
        return cls(mean, std, centroids, int(doc.get("frames") or 0),
                   float(inertia) if isinstance(inertia, (int, float)) else float("nan"))


def fit_kmeans(clips: Iterable[np.ndarray], clusters: int, seed: int = 0, max_frames: int | None = None,
               normalize=None) -> KMeansTargets:
    """MFCC frames of every clip (float arrays at 16 kHz; `normalize(clip)` first if given, to
    see them as training does), standardised, clustered into `clusters` by MiniBatchKMeans.
    `max_frames`: stop reading once this many frames are in."""
    try:
        from sklearn.cluster import MiniBatchKMeans
    except ImportError:
        raise ImportError("k-means targets need scikit-learn: pip install 'ptft_engine[audio]'") from None
    parts, total = [], 0
    for clip in clips:
        x = np.asarray(clip, dtype=np.float32)
        if len(x) < WINDOW:
            continue  # shorter than one frame: no features
        if normalize is not None:
            x = normalize(x)
        parts.append(mfcc(torch.from_numpy(x)[None])[0].numpy())
        total += len(parts[-1])
        if max_frames and total >= max_frames:
            break
    if total < clusters:
        raise ValueError(f"{total} MFCC frames are too few for {clusters} clusters; give more audio or "
                         "fewer clusters")
    feats = np.concatenate(parts)[:max_frames] if max_frames else np.concatenate(parts)  # (N, 39)
    mean, std = feats.mean(0), feats.std(0)
    std = np.maximum(std, 1e-6)  # a constant dimension (e.g. digital silence) stays finite
    z = (feats - mean) / std
    km = MiniBatchKMeans(n_clusters=clusters, batch_size=min(len(z), 4096), n_init=3, max_iter=100,
                         random_state=seed).fit(z)
    return KMeansTargets(torch.from_numpy(mean).float(), torch.from_numpy(std).float(),
                         torch.from_numpy(km.cluster_centers_).float(), frames=len(z),
                         inertia=float(km.inertia_) / len(z))


def fit_shards(shards: list[str], clusters: int, seed: int = 0, max_frames: int | None = None) -> KMeansTargets:
    """`fit_kmeans` over every clip of audio shards at 16 kHz (data.shards entries), each clip
    normalised to zero mean and unit variance as the audio stream normalises its crops."""
    from itertools import chain

    from ptft_engine.data.audio import iter_clips, normalize

    clips = chain.from_iterable(iter_clips(s, SAMPLE_RATE) for s in shards)
    return fit_kmeans(clips, clusters, seed=seed, max_frames=max_frames, normalize=normalize)
