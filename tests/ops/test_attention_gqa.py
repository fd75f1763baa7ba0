"""Grouped-query (Hkv = 2) and multi-query (Hkv = 1) attention with H = 4 query heads: every
backend that runs here takes k, v with Hkv heads as they are (no expanded copy), matches the
reference (which expands them: it is the spec), and returns dk, dv with Hkv heads."""
from __future__ import annotations

import pytest
import torch
from test_attention import assert_close_fp32, assert_flash_rule, make_inputs, run

from ptft_engine.ops import attention
from ptft_engine.ops.attention import native, reference
from ptft_engine.ops.attention import triton as triton_attention
from ptft_engine.ops.attention.reference import attention_reference

H = 4


def gqa_inputs(b, s, d, h_kv, dtype, **extra):
    """make_inputs with H query heads, k and v cut to their first h_kv heads."""
    (q, k, v, do), masks = make_inputs(b, H, s, d, dtype, **extra)
    return (q, k[:, :h_kv].contiguous(), v[:, :h_kv].contiguous(), do), masks


# (B, S_q, D, extra kwargs for make_inputs, causal): odd lengths and head dims, masks, cross
CPU_CASES = [
    pytest.param(2, 113, 40, {}, False, id="s113-d40"),
    pytest.param(2, 113, 72, dict(pad=True, segments=True), True, id="s113-d72-causal-pad-seg"),
    pytest.param(2, 77, 64, dict(s_k=200, pad=True), False, id="cross-77x200-pad"),
    pytest.param(1, 300, 32, dict(segments=True), True, id="s300-multiblock-causal-seg"),
]
TRITON_CASES = [
    pytest.param(1, 17, 16, {}, False, id="s17-d16"),
    pytest.param(1, 70, 16, {}, True, id="s70-d16-causal"),
    pytest.param(2, 33, 40, dict(pad=True, segments=True), True, id="s33-d40-causal-pad-seg"),
    pytest.param(1, 17, 16, dict(s_k=33, pad=True), False, id="cross-17x33-pad"),
]


@pytest.mark.parametrize("h_kv", [1, 2], ids=["mqa", "gqa2"])
@pytest.mark.parametrize("b,s,d,extra,causal", CPU_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cpu_gqa_matches_reference(b, s, d, extra, causal, dtype, h_kv):
    (q, k, v, do), masks = gqa_inputs(b, s, d, h_kv, dtype, **extra)
    if dtype == torch.float32:
        assert_close_fp32("cpu", q, k, v, do, causal=causal, **masks)
    else:
        assert_flash_rule("cpu", q, k, v, do, atol=2e-3, causal=causal, **masks)


@pytest.mark.parametrize("h_kv", [1, 2], ids=["mqa", "gqa2"])
@pytest.mark.parametrize("b,s,d,extra,causal", TRITON_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_triton_gqa_matches_reference(b, s, d, extra, causal, dtype, h_kv):
    (q, k, v, do), masks = gqa_inputs(b, s, d, h_kv, dtype, **extra)
    if dtype == torch.float32:
        assert_close_fp32("triton", q, k, v, do, causal=causal, **masks)
    else:
        assert_flash_rule("triton", q, k, v, do, atol=1e-3, causal=causal, **masks)


@pytest.mark.parametrize("h_kv", [1, 2], ids=["mqa", "gqa2"])
def test_reference_gqa_is_attention_over_expanded_heads(h_kv):
    """The spec by hand: query head h attends with kv head h // (H // Hkv)."""
    (q, k, v, _), masks = gqa_inputs(2, 21, 8, h_kv, torch.float64, pad=True)
    out = attention_reference(q, k, v, causal=True, **masks)
    for h in range(H):
        kv = h // (H // h_kv)
        one = attention_reference(q[:, h:h + 1], k[:, kv:kv + 1], v[:, kv:kv + 1], causal=True, **masks)
        torch.testing.assert_close(out[:, h:h + 1], one, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gqa_gradcheck_float64(backend):
    (q, k, v, _), masks = gqa_inputs(1, 9, 8, 2, torch.float64, pad=True, segments=True)
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    fn = lambda q, k, v: attention(q, k, v, causal=True, scale=0.4, backend=backend, **masks)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("h_kv", [1, 2], ids=["mqa", "gqa2"])
def test_cpu_backward_splits_keys_when_threads_outnumber_kv_heads(h_kv):
    """With more threads than (batch, kv head) pairs the C++ backward splits the key blocks
    across tasks and sums their dQ slices in order: still exact and bitwise repeatable."""
    (q, k, v, do), masks = gqa_inputs(1, 300, 32, h_kv, torch.float32, segments=True)  # every key range counts
    one = run(lambda *a, **kw: attention(*a, backend="cpu", **kw), q, k, v, do, causal=True, **masks)
    torch.set_num_threads(4)  # the folder's fixture restores the thread count
    split = run(lambda *a, **kw: attention(*a, backend="cpu", **kw), q, k, v, do, causal=True, **masks)
    again = run(lambda *a, **kw: attention(*a, backend="cpu", **kw), q, k, v, do, causal=True, **masks)
    assert_close_fp32("cpu", q, k, v, do, causal=True, **masks)
    for name, a, b, c in zip(("out", "dq", "dk", "dv"), one, split, again):
        assert torch.equal(b, c), f"{name} differs between two split runs"
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=f"{name}: split vs one task")


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_gqa_dkdv_is_deterministic(backend):
    """dK/dV of a shared head sum its group in a fixed order: two runs agree bit for bit."""
    (q, k, v, do), _ = gqa_inputs(1, 40, 16, 1, torch.float32)
    first = run(lambda *a, **kw: attention(*a, backend=backend, **kw), q, k, v, do, causal=True)
    second = run(lambda *a, **kw: attention(*a, backend=backend, **kw), q, k, v, do, causal=True)
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])


@pytest.mark.parametrize("backend,module", [("cpu", native), ("triton", triton_attention),
                                            ("reference", reference)])
def test_backend_sees_kv_heads_not_a_repeated_copy(backend, module, monkeypatch):
    """The launchers receive k, v (and give back dk, dv) with Hkv heads: no (B, H, S, D) copy."""
    (q, k, v, do), _ = gqa_inputs(1, 24, 16, 1, torch.float32)
    seen = []
    for name in ("forward", "backward"):
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name):
            seen.append((_name, tuple(a.shape for a in args[:6] if isinstance(a, torch.Tensor))))
            result = _real(*args)
            if _name == "backward":
                seen.append(("grads", tuple(t.shape for t in result)))
            return result

        monkeypatch.setattr(module, name, spy)
    run(lambda *a, **kw: attention(*a, backend=backend, **kw), q, k, v, do, causal=True)
    q_shape, kv_shape = (1, H, 24, 16), (1, 1, 24, 16)
    assert seen == [("forward", (q_shape, kv_shape, kv_shape)),
                    ("backward", (q_shape, q_shape, kv_shape, kv_shape, q_shape, (1, H, 24))),
                    ("grads", (q_shape, kv_shape, kv_shape))], seen


def test_kv_heads_must_divide_query_heads():
    q = torch.randn(1, 4, 8, 16)
    kv = torch.randn(1, 3, 8, 16)
    with pytest.raises(ValueError, match="Hkv dividing H"):
        attention(q, kv, kv, backend="cpu")
    from ptft_engine.ops import _native

    with pytest.raises(RuntimeError, match="must divide q heads"):  # the C++ front checks too
        _native.native().attention_cpu_forward(q, kv, kv, False, None, None, 0.25)


def test_self_attention_passes_kv_heads_unrepeated(monkeypatch):
    """nn.SelfAttention with num_kv_heads < num_heads hands the op the narrow k, v; the result
    equals attention over explicitly repeated heads (what the layer did before)."""
    import ptft_engine.nn.attention as nn_attention

    torch.manual_seed(0)
    layer = nn_attention.SelfAttention(32, H, num_kv_heads=1, bias=False).eval()
    x = torch.randn(2, 11, 32)
    shapes = []

    def spy(q, k, v, **kw):
        shapes.append((tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        return attention(q, k, v, backend="cpu", **kw)

    monkeypatch.setattr(nn_attention, "_attention_fn", spy)
    with torch.no_grad():
        out = layer(x, causal=True)

        def repeated(q, k, v, **kw):
            return attention_reference(q, k.repeat_interleave(H, 1), v.repeat_interleave(H, 1), **kw)

        monkeypatch.setattr(nn_attention, "_attention_fn", repeated)
        want = layer(x, causal=True)
    assert shapes == [((2, H, 11, 8), (2, 1, 11, 8), (2, 1, 11, 8))]
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_custom_op_fake_and_autograd_take_kv_heads(backend):
    """torch.library.opcheck of ptft::attention and its backward with Hkv = 1: the fake (meta)
    kernels give dk, dv the kv heads' shape, as the real kernels do."""
    from ptft_engine.ops.attention.op import attention_backward_op, attention_op

    (q, k, v, do), masks = gqa_inputs(2, 9, 8, 1, torch.float32, pad=True, segments=True)
    seg = masks["segment_ids"].to(torch.int32)
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), masks["attention_mask"], seg, True, 0.35,
            backend)
    torch.library.opcheck(attention_op, args)
    out, lse = attention_op(q.detach(), k.detach(), v.detach(), *args[3:])
    torch.library.opcheck(attention_backward_op, (do, q.detach(), k.detach(), v.detach(), out, lse, *args[3:]))
