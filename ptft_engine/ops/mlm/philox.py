"""Philox4x32-10 in plain PyTorch int64 arithmetic (every value kept in [0, 2**32)).

Same rounds, constants and key schedule as triton.language.random.philox_impl and
csrc/common/philox.h, so all backends draw the same numbers. int64 cannot hold a full
32x32-bit product, so the multiplier is split into 16-bit halves: every partial
product then fits in 48 bits.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
ROUND_A = 0xD2511F53  # multiplies counter word 0
ROUND_B = 0xCD9E8D57  # multiplies counter word 2
KEY_A = 0x9E3779B9  # Weyl increments of the key, one per round
KEY_B = 0xBB67AE85
N_ROUNDS = 10


def _mulhilo(x: torch.Tensor, a: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high 32 bits, low 32 bits) of x * a for x in [0, 2**32) and a 32-bit constant."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    p_hi = x * a_hi  # < 2**48
    p_lo = x * a_lo  # < 2**48
    # x*a = p_hi * 2**16 + p_lo; nesting the floor divisions keeps everything < 2**49
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & MASK32
    return hi, lo


def philox4x32(
    c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, k0: int, k1: int,
    n_rounds: int = N_ROUNDS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox rounds on int64 tensors holding uint32 words; key (k0, k1) as Python ints."""
    k0 &= MASK32
    k1 &= MASK32
    for _ in range(n_rounds):
        hi_b, lo_b = _mulhilo(c2, ROUND_B)
        hi_a, lo_a = _mulhilo(c0, ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + KEY_A) & MASK32
        k1 = (k1 + KEY_B) & MASK32
    return c0, c1, c2, c3
