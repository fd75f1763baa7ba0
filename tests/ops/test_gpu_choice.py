"""Automatic GPU choice: matmul-heavy ops try a tensor-core kernel first (checked on CPU by recording the
op names the public functions ask the registry for, and by choosing for a CUDA device that the registry
is told is fine)."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from ptft_engine.commands import env
from ptft_engine.ops import attention, contrastive_loss, mlm_mask, nt_xent_loss, registry


def test_matmul_heavy_ops_prefer_tensor_core_kernels(monkeypatch):
    asked = set()
    real_choose = registry.choose

    def recording_choose(op, x, backend=None, op_reason=None):
        asked.add(op)
        return real_choose(op, x, backend, op_reason)

    monkeypatch.setattr(registry, "choose", recording_choose)
    x = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    attention(torch.randn(1, 1, 8, 16), torch.randn(1, 1, 8, 16), torch.randn(1, 1, 8, 16))
    contrastive_loss(x, x.flip(0), torch.tensor(10.0))
    nt_xent_loss(x, x.flip(0), 0.1)
    mlm_mask(torch.randint(5, 50, (2, 8)), seed=0, sample_ids=torch.arange(2), mask_token_id=4, vocab_size=50,
             special_token_ids=(0, 1, 2, 3, 4))
    assert asked == set(registry.TENSOR_CORE_KERNELS)  # every op the table names, and no other
    for op in ("attention", "contrastive"):
        order = registry.gpu_order(op)
        assert order[:2] == registry.TENSOR_CORE_KERNELS[op] == ("triton", "cuda"), op
        assert order[-1] == "reference"
    assert registry.TENSOR_CORE_KERNELS["mlm_mask"] == ()  # no matmul: CUDA first is fine there
    assert registry.gpu_order("mlm_mask")[0] == "cuda"


def test_cuda_device_picks_triton_when_both_could_run(monkeypatch):
    monkeypatch.setattr(registry, "generic_reason", lambda name, device: None)
    x = SimpleNamespace(device=torch.device("cuda"))  # the registry only looks at the device here
    assert registry.choose("contrastive", x) == "triton"
    assert registry.choose("attention", x) == "triton"
    assert registry.choose("contrastive", x, "cuda") == "cuda"
    assert registry.choose("mlm_mask", x) == "cuda"


def test_env_report_names_tensor_core_kernels():
    report = env.collect()
    assert report["tensor_core_kernels"] == {"attention": ["triton", "cuda"], "contrastive": ["triton", "cuda"],
                                             "mlm_mask": []}
