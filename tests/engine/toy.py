"""A tiny objective with the objectives' forward contract, for engine tests and benchmarks.

forward(batch) → {"loss", "num_tokens"}; `flops_per_token()` like the real objectives.
A NaN can be injected at chosen steps (by counting forward calls) to test bad-step handling,
and the steps can be slowed from a chosen call on (numerics unchanged) so a kill lands mid-run.
"""
from __future__ import annotations

import time

import torch
from torch import nn


class ToyCausalLM(nn.Module):
    def __init__(self, vocab_size: int = 128, hidden: int = 32, dropout: float = 0.1, nan_at_calls=(),
                 slow_from_call: int | None = None):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden)
        self.mix = nn.Linear(2 * hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)  # exercises the RNG state that a resume must restore
        self.head = nn.Linear(hidden, vocab_size)
        self.nan_at_calls = set(nan_at_calls)
        self.slow_from_call = slow_from_call  # sleep per step from then on: a kill lands mid-run
        self.calls = 0

    def forward(self, batch):
        self.calls += 1 if self.training else 0
        ids = batch["input_ids"]  # (B, S)
        x = self.embed(ids[:, :-1])  # (B, S-1, H)
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)  # previous token's embedding
        h = self.norm(torch.relu(self.mix(torch.cat([x, prev], dim=-1))))
        logits = self.head(self.drop(h)).float()  # (B, S-1, V)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
        if self.slow_from_call is not None and self.calls >= self.slow_from_call:
            time.sleep(0.5)
        if self.calls in self.nan_at_calls:
            loss = loss * float("nan")
        return {"loss": loss, "num_tokens": ids[:, 1:].numel()}

    def flops_per_token(self) -> float:
        return 6.0 * sum(p.numel() for p in self.parameters())
