"""A toy speech corpus and training loop shared by the wav2vec 2.0 and HuBERT objective tests."""
from __future__ import annotations

import math

import torch


def tones(n: int, seconds: float = 0.4, sr: int = 16000) -> torch.Tensor:
    """n rising tones (chirps): each starts at 150-600 Hz and rises 1-3 octaves per second, plus a
    little noise, so a masked frame's pitch follows from its neighbours and differs from the others'."""
    g = torch.Generator().manual_seed(7)
    t = torch.arange(int(seconds * sr)) / sr
    rows = []
    for _ in range(n):
        f0 = 150 * 2 ** (2 * torch.rand((), generator=g))
        rate = 1 + 2 * torch.rand((), generator=g)
        f = f0 * 2 ** (rate * t)
        wave = torch.sin(2 * math.pi * torch.cumsum(f, 0) / sr) + 0.05 * torch.randn(t.shape[0], generator=g)
        rows.append((wave - wave.mean()) / wave.std())
    return torch.stack(rows)


def train_on_tones(obj: torch.nn.Module, steps: int, lr: float = 3e-3) -> tuple[dict, dict]:
    """Train `obj` on 24 tones (a third of them padded), 8 a step; its outputs on all of them,
    with the same masks (and distractors) each time, before and after."""
    audio = tones(24)
    attention_mask = torch.ones_like(audio, dtype=torch.bool)
    attention_mask[::3, 4800:] = False  # a third of the batch is padded
    audio = audio * attention_mask
    batch = {"input_values": audio, "attention_mask": attention_mask}

    @torch.no_grad()
    def held_out() -> dict:
        obj.eval()
        torch.manual_seed(123)
        out = obj(batch)
        obj.train()
        return out

    obj.train()
    before = held_out()
    opt = torch.optim.AdamW(obj.parameters(), lr=lr)
    for step in range(steps):
        idx = torch.arange(8) + 8 * (step % 3)
        out = obj({"input_values": audio[idx], "attention_mask": attention_mask[idx]})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        assert math.isfinite(out["loss"].item())
    return before, held_out()
