"""Every Triton config a GPU may pick, run under the interpreter before any GPU sees it.

On a GPU the attention kernels autotune over several (BLOCK_M, BLOCK_N) shapes and the
contrastive kernels use larger tiles than the interpreter's defaults; block shapes with
BLOCK_M != BLOCK_N change the causal split and the backward's block ranges, so each entry
is pinned in turn and checked against the float64 reference on odd lengths (several blocks,
ragged tails) with causal, padding and segment masks.
"""
from __future__ import annotations

import pytest
import torch

from ptft_engine.ops import contrastive_loss, nt_xent_loss
from ptft_engine.ops.attention import triton as triton_attention
from ptft_engine.ops.contrastive import reference as contrastive_reference
from ptft_engine.ops.contrastive import triton as triton_contrastive
from test_attention import assert_close_fp32, make_inputs

KINDS = ("fwd", "dkdv", "dq")
N_CONFIGS = max(len(triton_attention.configs(kind)) for kind in KINDS)
LAYOUTS = {  # s_q, s_k and masks: every layout spans more than one 128-wide block
    "causal": dict(s_q=161, causal=True),
    "causal-pad-seg": dict(s_q=150, causal=True, pad=True, segments=True),
    "cross-pad": dict(s_q=97, s_k=161, causal=False, pad=True),
}


@pytest.fixture
def pinned():
    yield triton_attention.pin_config
    for kind in KINDS:
        triton_attention.pin_config(kind, None)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("index", range(N_CONFIGS))
def test_attention_autotune_entry(pinned, index, layout):
    spec = dict(LAYOUTS[layout])
    causal = spec.pop("causal")
    entries = {kind: triton_attention.configs(kind) for kind in KINDS}
    for kind, metas in entries.items():
        pinned(kind, metas[index % len(metas)])
    (q, k, v, do), masks = make_inputs(1, 2, spec.pop("s_q"), 40, torch.float32, **spec)
    assert_close_fp32("triton", q, k, v, do, causal=causal, **masks)


def test_autotune_lists_have_the_split_the_kernels_assume():
    # fwd and dq split their key loop at a query-block boundary (static_assert in the kernel)
    for kind in ("fwd", "dq"):
        assert all(m["BLOCK_M"] % m["BLOCK_N"] == 0 for m in triton_attention.configs(kind))
    with pytest.raises(ValueError, match="unknown attention kernel"):
        triton_attention.pin_config("bwd", {})


@pytest.fixture
def gpu_tiles(monkeypatch):
    monkeypatch.setattr(triton_contrastive, "_config", lambda x: triton_contrastive.GPU_CONFIG)


@pytest.mark.parametrize("n,d", [(150, 72), (70, 200)])
def test_contrastive_gpu_tiles(gpu_tiles, n, d):
    g = torch.Generator().manual_seed(n)
    a0, b0 = (torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1) for _ in range(2))
    results = []
    for fn in (lambda a, b, s: contrastive_loss(a, b, s, backend="triton"),
               lambda a, b, s: contrastive_reference.contrastive_loss_reference(a, b, s, True)):
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        s = torch.tensor(1 / 0.07, requires_grad=True)
        loss = fn(a, b, s)
        loss.backward()
        results.append((loss.detach(), a.grad, b.grad, s.grad))
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    z1, z2 = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    ours = nt_xent_loss(z1, z2, 0.1, backend="triton")
    ref = contrastive_reference.nt_xent_loss_reference(a0, b0, 0.1)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
