"""mlm_mask through ptft_engine._C: the C++ CPU kernel, or the CUDA one for CUDA tensors."""
from __future__ import annotations

import torch

from ptft_engine.ops._native import native
from ptft_engine.ops.mlm.reference import MaskPlan


def forward(
    input_ids: torch.Tensor, sample_ids: torch.Tensor, plan: MaskPlan, is_special: torch.Tensor, allowed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (B, S) contiguous int64/int32, sample_ids (B,) int64; tables on the same device."""
    return native().mlm_mask(
        input_ids, sample_ids, is_special, allowed, plan.seed, plan.mask_token_id, plan.vocab_size,
        plan.t_select, plan.t_replace, plan.t_random_end,
    )
