"""BERT masked-LM sampling in plain PyTorch: the specification every backend matches.

Contract (all backends, bit for bit)
------------------------------------
Inputs: ``input_ids`` (B, S) int64 or int32, ``sample_ids`` (B,) int64 global sample
ids, ``seed`` an int in [0, 2**64). Each token (row b, position s) draws four 32-bit
words from Philox4x32-10 (Random123 / Triton ``tl.philox`` rounds and constants):

    key     = (seed & 0xFFFFFFFF, seed >> 32)
    counter = (s, sid & 0xFFFFFFFF, (sid >> 32) & 0xFFFFFFFF, 0)   sid = sample_ids[b]
    (u0, u1, u2, u3) = philox4x32_10(counter, key)                 u3 unused

so a token's fate depends only on (seed, sample id, position): not on the row index,
the other samples in the batch, the batch size or the device. With
``T(p) = floor(p * 2**32)`` (exact, computed on the host in Python):

    selectable = 0 <= id < vocab_size and id not in special_token_ids
    selected   = selectable and u0 < T(mask_prob)
    -> [MASK]  if selected and u1 < T(replace_prob)
    -> random  if selected and T(replace_prob) <= u1 < T(replace_prob) + T(random_prob)
    -> kept    otherwise
    random id  = allowed[(u2 * len(allowed)) >> 32]     (multiply-high, not modulo)

where ``allowed`` is the ascending list of ids in [0, vocab_size) that are not
special, so a random replacement is never a special token. labels = original id
where selected, else -100; both outputs keep the input dtype. Ids outside
[0, vocab_size) raise for CPU tensors; on CUDA tensors that check would cost a device
sync, so it is skipped and such tokens are simply never selected (every backend
treats them alike).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ptft_engine.labels import IGNORE_INDEX
from ptft_engine.ops.mlm.philox import MASK32, philox4x32

MAX_VOCAB = 2**31 - 1  # keeps u2 * len(allowed) inside int64 and ids inside int32


def threshold(p: float) -> int:
    """floor(p * 2**32); exact because scaling a double by a power of two is exact."""
    return int(float(p) * 2**32)


@dataclass(frozen=True, eq=False)
class MaskPlan:
    """Everything a kernel needs besides the ids: thresholds and the two id tables."""

    seed: int
    mask_token_id: int
    vocab_size: int
    t_select: int  # T(mask_prob), in [0, 2**32]
    t_replace: int  # T(replace_prob)
    t_random_end: int  # T(replace_prob) + T(random_prob), <= 2**32
    is_special: torch.Tensor  # (vocab_size,) uint8, 1 for special ids
    allowed: torch.Tensor  # (n_allowed,) int64, non-special ids ascending

    @property
    def n_allowed(self) -> int:
        return int(self.allowed.numel())


def _check_prob(name: str, p: float) -> None:
    if not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"mlm_mask: {name} must be a probability in [0, 1], got {p!r}")


@functools.lru_cache(maxsize=8)
def special_tables(vocab_size: int, special: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(is_special (vocab_size,) uint8, allowed (n,) int64 ascending) on CPU, built once per vocabulary."""
    is_special = torch.zeros(vocab_size, dtype=torch.uint8)
    if special:
        is_special[torch.tensor(special, dtype=torch.int64)] = 1
    allowed = torch.nonzero(is_special == 0).flatten()
    return is_special, allowed


def make_plan(
    *, seed: int, mask_token_id: int, vocab_size: int, special_token_ids: Sequence[int],
    mask_prob: float, replace_prob: float, random_prob: float,
) -> MaskPlan:
    """Validates the scalar arguments; thresholds plus the cached CPU id tables (see module docstring)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"mlm_mask: seed must be an int in [0, 2**64), got {seed!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 1 <= vocab_size <= MAX_VOCAB:
        raise ValueError(f"mlm_mask: vocab_size must be an int in [1, 2**31), got {vocab_size!r}")
    if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mlm_mask: mask_token_id must be an int in [0, vocab_size={vocab_size}), "
                         f"got {mask_token_id!r}")
    for name, p in (("mask_prob", mask_prob), ("replace_prob", replace_prob), ("random_prob", random_prob)):
        _check_prob(name, p)
    if float(replace_prob) + float(random_prob) > 1.0 + 1e-9:
        raise ValueError(f"mlm_mask: replace_prob + random_prob must be <= 1, got {replace_prob} + {random_prob}")
    if isinstance(special_token_ids, torch.Tensor):
        special_token_ids = special_token_ids.flatten().tolist()
    special = sorted({int(i) for i in special_token_ids})
    bad = [i for i in special if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"mlm_mask: special_token_ids must lie in [0, vocab_size={vocab_size}), got {bad[:5]}")
    is_special, allowed = special_tables(vocab_size, tuple(special))
    t_replace = threshold(replace_prob)
    t_random = threshold(random_prob)
    if t_random > 0 and allowed.numel() == 0:
        raise ValueError("mlm_mask: random_prob > 0 but every id in [0, vocab_size) is special: nothing to draw from")
    return MaskPlan(
        seed=seed, mask_token_id=mask_token_id, vocab_size=vocab_size,
        t_select=threshold(mask_prob), t_replace=t_replace,
        t_random_end=min(t_replace + t_random, 2**32),
        is_special=is_special, allowed=allowed,
    )


def mlm_mask_reference(
    input_ids: torch.Tensor, sample_ids: torch.Tensor, plan: MaskPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract above in vectorised int64 PyTorch; (masked_ids, labels) in the input dtype."""
    device = input_ids.device
    ids = input_ids.to(torch.int64)  # (B, S)
    n_rows, seq_len = ids.shape
    sid = sample_ids.to(device=device, dtype=torch.int64).view(n_rows, 1)  # (B, 1)
    # int64 >> is arithmetic, so mask after shifting to get the two's-complement high word
    c0 = torch.arange(seq_len, device=device, dtype=torch.int64).view(1, seq_len).expand(n_rows, seq_len)
    c1 = (sid & MASK32).expand(n_rows, seq_len)
    c2 = ((sid >> 32) & MASK32).expand(n_rows, seq_len)
    c3 = torch.zeros_like(c0)
    u0, u1, u2, _ = philox4x32(c0, c1, c2, c3, plan.seed & MASK32, plan.seed >> 32)

    in_vocab = (ids >= 0) & (ids < plan.vocab_size)
    special = plan.is_special.to(device)[ids.clamp(0, plan.vocab_size - 1)].bool()
    selected = in_vocab & ~special & (u0 < plan.t_select)
    to_mask = selected & (u1 < plan.t_replace)
    to_random = selected & (u1 >= plan.t_replace) & (u1 < plan.t_random_end)

    masked = torch.where(to_mask, torch.full_like(ids, plan.mask_token_id), ids)
    if plan.n_allowed:
        pick = (u2 * plan.n_allowed) >> 32  # multiply-high: index in [0, n_allowed)
        masked = torch.where(to_random, plan.allowed.to(device)[pick], masked)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return masked.to(input_ids.dtype), labels.to(input_ids.dtype)


def forward(input_ids: torch.Tensor, sample_ids: torch.Tensor, plan: MaskPlan, is_special: torch.Tensor,
            allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The backend interface (as triton.py and native.py); the spec derives its tables from the plan."""
    return mlm_mask_reference(input_ids, sample_ids, plan)
