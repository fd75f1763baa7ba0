"""mlm_mask in Triton: one program per (block of positions, row), Philox via tl.philox.

tl.philox(seed, c0..c3) keys Philox4x32-10 with (seed low 32 bits, seed high 32 bits)
and runs the rounds of reference.py's contract, so this matches the other backends bit
for bit. Uses only APIs present from Triton 3.6 on.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ptft_engine.ops.mlm.reference import IGNORE_INDEX, MaskPlan

BLOCK = 1024
MAX_GRID_Y = 65535


@triton.jit
def _mlm_mask_kernel(
    ids_ptr, out_ptr, labels_ptr, sample_ids_ptr, is_special_ptr, allowed_ptr,
    n_rows, seq_len, seed, mask_token_id, vocab_size, t_select, t_replace, t_random_end, n_allowed,
    IGNORE: tl.constexpr, BLOCK: tl.constexpr,
):
    pos = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_row = pos < seq_len
    # rows past the grid's y limit are strided over; an int64 row keeps offsets from overflowing
    for row in range(tl.program_id(1).to(tl.int64), n_rows, tl.num_programs(1)):
        offs = row * seq_len + pos
        ids = tl.load(ids_ptr + offs, mask=in_row, other=0).to(tl.int64)
        sid = tl.load(sample_ids_ptr + row).to(tl.uint64, bitcast=True)
        zero = tl.zeros([BLOCK], dtype=tl.uint32)
        c0 = pos.to(tl.uint32)
        c1 = zero + (sid & 0xFFFFFFFF).to(tl.uint32)
        c2 = zero + (sid >> 32).to(tl.uint32)
        u0, u1, u2, _ = tl.philox(seed, c0, c1, c2, zero)
        u0 = u0.to(tl.int64)  # zero-extended: thresholds reach 2**32
        u1 = u1.to(tl.int64)
        u2 = u2.to(tl.int64)

        in_vocab = in_row & (ids >= 0) & (ids < vocab_size)
        special = tl.load(is_special_ptr + ids, mask=in_vocab, other=1)
        selected = in_vocab & (special == 0) & (u0 < t_select)
        to_mask = selected & (u1 < t_replace)
        to_random = selected & (u1 >= t_replace) & (u1 < t_random_end)
        pick = (u2 * n_allowed) >> 32  # multiply-high: index in [0, n_allowed)
        random_id = tl.load(allowed_ptr + pick, mask=to_random, other=0)

        masked = tl.where(to_mask, mask_token_id, ids)
        masked = tl.where(to_random, random_id, masked)
        labels = tl.where(selected, ids, IGNORE)
        tl.store(out_ptr + offs, masked.to(out_ptr.dtype.element_ty), mask=in_row)
        tl.store(labels_ptr + offs, labels.to(labels_ptr.dtype.element_ty), mask=in_row)


def forward(
    input_ids: torch.Tensor, sample_ids: torch.Tensor, plan: MaskPlan, is_special: torch.Tensor, allowed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (B, S) contiguous int64/int32, sample_ids (B,) int64; tables on the same device."""
    n_rows, seq_len = input_ids.shape
    out = torch.empty_like(input_ids)
    labels = torch.empty_like(input_ids)
    block = min(BLOCK, triton.next_power_of_2(seq_len))
    grid = (triton.cdiv(seq_len, block), min(n_rows, MAX_GRID_Y))
    _mlm_mask_kernel[grid](
        input_ids, out, labels, sample_ids, is_special, allowed,
        n_rows, seq_len, plan.seed, plan.mask_token_id, plan.vocab_size,
        plan.t_select, plan.t_replace, plan.t_random_end, plan.n_allowed,
        IGNORE=IGNORE_INDEX, BLOCK=block,
    )
    return out, labels
