"""attention on a GPU: the Triton and CUDA kernels against the fp32 reference in fp16 and
bf16 (flash-attention rule), fp32 held tight, long sequences at D = 128. Skipped without
CUDA; benchmarks/gpu_check.sh runs them on a GPU machine."""
from __future__ import annotations

import pytest
import torch
from test_attention import assert_close_fp32, assert_flash_rule, backend_fn, make_inputs, run

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _fixed_triton_config(monkeypatch):
    """Correctness does not need the tuning sweep; one config per shape keeps compile time low."""
    from ptft_engine.ops.attention import triton as triton_attention

    monkeypatch.setattr(triton_attention, "AUTOTUNE", False)

CASES = [
    pytest.param(2, 3, 113, 40, {}, False, id="s113-d40"),
    pytest.param(2, 2, 113, 72, {}, True, id="s113-d72-causal"),
    pytest.param(2, 2, 257, 128, dict(pad=True), False, id="s257-d128-pad"),
    pytest.param(2, 2, 300, 64, dict(pad=True, segments=True), True, id="s300-d64-causal-pad-seg"),
    pytest.param(1, 2, 77, 96, dict(s_k=190, pad=True), False, id="cross-77x190-d96"),
    pytest.param(1, 4, 2048, 128, {}, True, id="s2048-d128-causal"),
    pytest.param(1, 2, 2048, 128, dict(segments=True), False, id="s2048-d128-seg"),
]


@pytest.mark.parametrize("b,h,s,d,extra,causal", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_backend_matches_reference(backend, dtype, b, h, s, d, extra, causal):
    (q, k, v, do), masks = make_inputs(b, h, s, d, dtype, device="cuda", **extra)
    assert_flash_rule(backend, q, k, v, do, atol=2e-3 if dtype == torch.bfloat16 else 5e-4,
                      causal=causal, **masks)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_fp32_is_tight(backend):
    (q, k, v, do), masks = make_inputs(2, 2, 113, 40, torch.float32, device="cuda", pad=True, segments=True)
    assert_close_fp32(backend, q, k, v, do, causal=True, **masks)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_fully_masked_rows_give_zeros(backend):
    (q, k, v, do), _ = make_inputs(2, 2, 40, 64, torch.bfloat16, device="cuda")
    keep = torch.ones(2, 40, dtype=torch.bool, device="cuda")
    keep[1] = False
    out, dq, dk, dv = run(backend_fn(backend), q, k, v, do, causal=True, attention_mask=keep)
    for name, t in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert torch.isfinite(t).all(), f"{backend} {name} has NaN/inf"
        assert (t[1] == 0).all(), f"{backend} {name} of the fully masked batch row is not zero"


def test_automatic_choice_on_gpu_prefers_triton_explicit_cuda_still_works():
    from ptft_engine.ops import registry
    from ptft_engine.ops.attention.op import _op_reason

    q = torch.randn(1, 1, 8, 64, device="cuda", dtype=torch.bfloat16)
    assert registry.choose("attention", q, None, _op_reason) == "triton"
    assert registry.choose("attention", q, "cuda", _op_reason) == "cuda"


GQA_CASES = [
    pytest.param(2, 113, 72, dict(pad=True, segments=True), True, id="s113-d72-causal-pad-seg"),
    pytest.param(1, 300, 128, {}, True, id="s300-d128-causal"),
    pytest.param(1, 77, 64, dict(s_k=190, pad=True), False, id="cross-77x190-d64"),
]


@pytest.mark.parametrize("h_kv", [1, 2], ids=["mqa", "gqa2"])
@pytest.mark.parametrize("b,s,d,extra,causal", GQA_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])  # fp16 shares bf16 code
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_grouped_query_matches_reference(backend, dtype, b, s, d, extra, causal, h_kv):
    """4 query heads over h_kv shared k/v heads, read in place; dk/dv come back with h_kv heads."""
    (q, k, v, do), masks = make_inputs(b, 4, s, d, dtype, device="cuda", **extra)
    k, v = k[:, :h_kv].contiguous(), v[:, :h_kv].contiguous()
    if dtype == torch.float32:
        assert_close_fp32(backend, q, k, v, do, causal=causal, **masks)
    else:
        assert_flash_rule(backend, q, k, v, do, atol=2e-3, causal=causal, **masks)


def _strided_inputs(dtype):
    """Inputs as a model hands them over: q and dO (B, H, S, D) views of (B, S, H, D) tensors, v a
    view of an (S, B, Hkv, D) one (k and v with different strides), grouped heads; all dense, so
    the clone in `run` keeps their strides."""
    (q, k, v, do), masks = make_inputs(2, 4, 150, 72, dtype, device="cuda", pad=True, segments=True)
    q, k, do = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k[:, :2], do))
    v = v[:, :2].permute(2, 0, 1, 3).contiguous().permute(1, 2, 0, 3)
    return (q, k, v, do), masks


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_strided_inputs_are_read_in_place(backend, dtype):
    from ptft_engine.ops.attention import native

    (q, k, v, do), masks = _strided_inputs(dtype)
    assert not any(t.is_contiguous() for t in (q, k, v, do)) and k.stride() != v.stride()
    assert all(t.clone().stride() == t.stride() for t in (q, k, v, do))
    assert all(native._layout(t) is t for t in (q, k, v, do))  # the CUDA launcher copies none of them
    if dtype == torch.float32:
        assert_close_fp32(backend, q, k, v, do, causal=True, **masks)
    else:
        assert_flash_rule(backend, q, k, v, do, atol=2e-3, causal=True, **masks)
