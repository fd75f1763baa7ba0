"""Public `mlm_mask`: validates once, builds (and caches) the id tables, picks a backend.

A plain function, not a custom op: its outputs are integer ids with no gradient, so there is no
autograd glue, and it runs in the data pipeline, outside any compiled model.
"""
from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

import torch

from ptft_engine.ops import registry
from ptft_engine.ops.mlm.reference import make_plan, special_tables

OP_NAME = "mlm_mask"


@functools.lru_cache(maxsize=16)
def _tables_on(vocab_size: int, special: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(is_special, allowed) on `device`, copied once per vocabulary and device."""
    is_special, allowed = special_tables(vocab_size, special)
    return is_special.to(device), allowed.to(device)


def _check_tensors(input_ids: torch.Tensor, sample_ids: torch.Tensor, vocab_size: int) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        got = getattr(input_ids, "shape", type(input_ids))
        raise ValueError(f"mlm_mask: input_ids must be a (batch, seq) tensor, got {got}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"mlm_mask: input_ids must be int64 or int32, got {input_ids.dtype}")
    if not isinstance(sample_ids, torch.Tensor) or sample_ids.shape != (input_ids.shape[0],):
        raise ValueError(
            f"mlm_mask: sample_ids must be a ({input_ids.shape[0]},) tensor (one id per row), "
            f"got {getattr(sample_ids, 'shape', type(sample_ids))}"
        )
    if sample_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"mlm_mask: sample_ids must be int64 (or int32), got {sample_ids.dtype}")
    if sample_ids.device != input_ids.device:
        raise ValueError(f"mlm_mask: sample_ids is on {sample_ids.device} but input_ids on {input_ids.device}")
    if input_ids.shape[1] >= 2**32:
        raise ValueError(f"mlm_mask: sequence length {input_ids.shape[1]} does not fit the 32-bit position counter")
    # On CUDA the range check would cost a device sync; kernels then never select such ids.
    if input_ids.device.type == "cpu" and input_ids.numel():
        lo, hi = torch.aminmax(input_ids)
        if int(lo) < 0 or int(hi) >= vocab_size:
            raise ValueError(f"mlm_mask: input_ids must lie in [0, vocab_size={vocab_size}), "
                             f"found values in [{int(lo)}, {int(hi)}]")


def mlm_mask(
    input_ids: torch.Tensor, *, seed: int, sample_ids: torch.Tensor, mask_token_id: int, vocab_size: int,
    special_token_ids: Sequence[int], mask_prob: float = 0.15, replace_prob: float = 0.8,
    random_prob: float = 0.1, backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: returns (masked_ids, labels), labels -100 where a token was not selected.

    input_ids (B, S) int64/int32; sample_ids (B,) global sample ids. special_token_ids
    (which must include the padding id) are never selected, and random replacements are
    drawn from the other ids in [0, vocab_size). Each token's decision is a pure function
    of (seed, sample_ids[row], position) through Philox4x32-10, identical on every
    backend and independent of the rest of the batch; reference.py states the contract.
    """
    if isinstance(special_token_ids, torch.Tensor):
        special_token_ids = special_token_ids.flatten().tolist()
    try:
        special = tuple(sorted({operator.index(i) for i in special_token_ids}))
    except TypeError as exc:
        raise ValueError(f"mlm_mask: special_token_ids must be a sequence of ints ({exc})") from None
    plan = make_plan(
        seed=seed, mask_token_id=mask_token_id, vocab_size=vocab_size, special_token_ids=special,
        mask_prob=mask_prob, replace_prob=replace_prob, random_prob=random_prob,
    )
    _check_tensors(input_ids, sample_ids, vocab_size)
    name = registry.choose(OP_NAME, input_ids, backend)
    if input_ids.numel() == 0:
        return input_ids.clone(), input_ids.clone()
    is_special, allowed = _tables_on(vocab_size, special, input_ids.device)
    ids = input_ids.contiguous()
    sids = sample_ids.to(torch.int64).contiguous()
    return registry.kernels("mlm", name).forward(ids, sids, plan, is_special, allowed)
