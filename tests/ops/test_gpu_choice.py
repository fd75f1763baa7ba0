"""Automatic GPU choice: matmul-heavy ops try a tensor-core kernel first (checked on CPU by recording the
order each public op hands to the registry, and by choosing for a CUDA device that the registry is told is fine)."""
from __future__ import annotations

import torch

from ptft_engine.ops import attention, contrastive_loss, mlm_mask, nt_xent_loss, registry


def test_matmul_heavy_ops_prefer_tensor_core_kernels(monkeypatch):
    orders = {}
    real_choose = registry.choose

    def recording_choose(op, device, backend=None, op_reason=None, gpu_order=("cuda", "triton", "reference")):
        orders[op] = gpu_order
        return real_choose(op, device, backend, op_reason, gpu_order)

    monkeypatch.setattr(registry, "choose", recording_choose)
    x = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    attention(torch.randn(1, 1, 8, 16), torch.randn(1, 1, 8, 16), torch.randn(1, 1, 8, 16))
    contrastive_loss(x, x.flip(0), torch.tensor(10.0))
    nt_xent_loss(x, x.flip(0), 0.1)
    mlm_mask(torch.randint(5, 50, (2, 8)), seed=0, sample_ids=torch.arange(2), mask_token_id=4, vocab_size=50,
             special_token_ids=(0, 1, 2, 3, 4))
    for op in ("attention", "contrastive_loss", "nt_xent_loss"):
        first = orders[op][0]
        assert first in registry.TENSOR_CORE_KERNELS[op], f"{op} tries {first} first on GPUs"
    assert registry.TENSOR_CORE_KERNELS["mlm_mask"] == ()  # no matmul: CUDA first is fine there
    assert orders["mlm_mask"][0] == "cuda"


def test_cuda_device_picks_triton_when_both_could_run(monkeypatch):
    monkeypatch.setattr(registry, "generic_reason", lambda name, device: None)
    cuda = torch.device("cuda")
    assert registry.choose("contrastive_loss", cuda, None, None, registry.MATMUL_GPU_ORDER) == "triton"
    assert registry.choose("contrastive_loss", cuda, "cuda", None, registry.MATMUL_GPU_ORDER) == "cuda"
