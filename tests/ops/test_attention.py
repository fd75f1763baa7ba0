"""attention: every backend against an fp32 reference (flash-attention error rule),
gradcheck in float64, fully masked rows, backend choice. Triton runs interpreted here
(TRITON_INTERPRET=1 from conftest), so its shapes stay tiny; GPU cases live in
test_attention_gpu.py, which imports the helpers below."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ptft_engine.ops import BackendUnavailable, attention, registry
from ptft_engine.ops.attention.op import _op_reason
from ptft_engine.ops.attention.reference import attention_reference


def make_inputs(b, h, s_q, d, dtype, device="cpu", s_k=None, pad=False, segments=False, seed=0):
    """[q, k, v, grad_out] and mask kwargs. Padding keeps key 0 of row 0 visible and pads
    the last third of the last row; segments are sorted runs of up to 3 documents."""
    gen = torch.Generator().manual_seed(seed)
    s_k = s_q if s_k is None else s_k
    q = torch.randn(b, h, s_q, d, generator=gen)
    k = torch.randn(b, h, s_k, d, generator=gen)
    v = torch.randn(b, h, s_k, d, generator=gen)
    do = torch.randn(b, h, s_q, d, generator=gen)
    keep = seg = None
    if pad:  # attention_mask: True = attend, False = padding key
        keep = torch.rand(b, s_k, generator=gen) >= 0.2
        keep[0, 0] = True
        keep[-1, s_k - s_k // 3:] = False
        keep = keep.to(device)
    if segments:
        seg = torch.sort(torch.randint(0, 3, (b, s_q), generator=gen), dim=1).values.to(device)
    tensors = [t.to(device=device, dtype=dtype) for t in (q, k, v, do)]
    return tensors, dict(attention_mask=keep, segment_ids=seg)


def run(fn, q, k, v, do, **kw):
    """(out, dq, dk, dv) of `fn` on fresh leaves of q, k, v."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v, **kw)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    return out.detach(), dq, dk, dv


def backend_fn(name):
    return lambda q, k, v, **kw: attention(q, k, v, backend=name, **kw)


def reference_fn(upcast):
    return lambda q, k, v, **kw: attention_reference(q, k, v, upcast=upcast, **kw)


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def assert_flash_rule(backend, q, k, v, do, atol, **kw):
    """Error against an fp32 reference at most 2x that of plain PyTorch in the same dtype,
    plus `atol`, for out, dq, dk and dv (flash-attention's test rule)."""
    ref = run(reference_fn(True), q.float(), k.float(), v.float(), do.float(), **kw)
    plain = run(reference_fn(False), q, k, v, do, **kw)
    ours = run(backend_fn(backend), q, k, v, do, **kw)
    for name, o, p, r in zip(("out", "dq", "dk", "dv"), ours, plain, ref):
        assert o.dtype == q.dtype and o.shape == r.shape, f"{name}: {o.dtype} {tuple(o.shape)}"
        assert torch.isfinite(o).all(), f"{backend} {name} has non-finite values"
        ours_err, plain_err = max_err(o, r), max_err(p, r)
        assert ours_err <= 2 * plain_err + atol, (
            f"{backend} {q.dtype} {name}: error {ours_err:.3e} > 2 x plain PyTorch {plain_err:.3e} + {atol}")


def assert_close_fp32(backend, q, k, v, do, **kw):
    """fp32 backends are held tight, against a float64 reference."""
    ref = run(reference_fn(False), q.double(), k.double(), v.double(), do.double(), **kw)
    ours = run(backend_fn(backend), q, k, v, do, **kw)
    for name, o, r in zip(("out", "dq", "dk", "dv"), ours, ref):
        assert o.dtype == torch.float32
        err, scale = max_err(o, r), r.abs().max().item()
        assert err <= 2e-5 * (1.0 + scale), f"{backend} fp32 {name}: error {err:.3e} (max |ref| {scale:.2f})"


# (B, H, S_q, D, extra kwargs for make_inputs, causal)
CPU_CASES = [
    pytest.param(2, 2, 113, 40, {}, False, id="s113-d40"),
    pytest.param(2, 2, 113, 72, {}, True, id="s113-d72-causal"),
    pytest.param(2, 3, 113, 40, dict(pad=True), False, id="s113-d40-pad"),
    pytest.param(2, 2, 113, 72, dict(pad=True, segments=True), True, id="s113-d72-causal-pad-seg"),
    pytest.param(2, 2, 77, 64, dict(s_k=200, pad=True), False, id="cross-77x200-pad"),
    pytest.param(1, 2, 600, 64, dict(segments=True), True, id="s600-multiblock-causal-seg"),
]
TRITON_CASES = [
    pytest.param(1, 2, 17, 16, {}, False, id="s17-d16"),
    pytest.param(1, 2, 70, 16, {}, False, id="s70-d16-unmasked-blocks"),
    pytest.param(2, 2, 33, 40, {}, True, id="s33-d40-causal"),
    pytest.param(2, 2, 33, 40, dict(pad=True), False, id="s33-d40-pad"),
    pytest.param(2, 2, 64, 16, dict(pad=True, segments=True), True, id="s64-d16-causal-pad-seg"),
    pytest.param(1, 2, 17, 16, dict(s_k=33, pad=True), False, id="cross-17x33-pad"),
]


@pytest.mark.parametrize("b,h,s,d,extra,causal", CPU_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cpu_backend_matches_reference(b, h, s, d, extra, causal, dtype):
    (q, k, v, do), masks = make_inputs(b, h, s, d, dtype, **extra)
    if dtype == torch.float32:
        assert_close_fp32("cpu", q, k, v, do, causal=causal, **masks)
    else:
        assert_flash_rule("cpu", q, k, v, do, atol=2e-3, causal=causal, **masks)


@pytest.mark.parametrize("b,h,s,d,extra,causal", TRITON_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_triton_backend_matches_reference(b, h, s, d, extra, causal, dtype):
    (q, k, v, do), masks = make_inputs(b, h, s, d, dtype, **extra)
    if dtype == torch.float32:
        assert_close_fp32("triton", q, k, v, do, causal=causal, **masks)
    else:
        assert_flash_rule("triton", q, k, v, do, atol=1e-3, causal=causal, **masks)


def test_triton_configs_split_at_query_block_boundaries():
    """fwd runs its unmasked key blocks up to a query-block start: BLOCK_M % BLOCK_N == 0."""
    from ptft_engine.ops.attention import triton as triton_attention

    for kind in ("fwd",):
        for cfg in triton_attention._configs(kind):
            assert cfg.kwargs["BLOCK_M"] % cfg.kwargs["BLOCK_N"] == 0, (kind, cfg.kwargs)


@pytest.mark.parametrize("causal", [False, True])
def test_reference_backend_matches_float64(causal):
    (q, k, v, do), masks = make_inputs(2, 2, 33, 40, torch.float32, pad=True, segments=True)
    assert_close_fp32("reference", q, k, v, do, causal=causal, **masks)


def _allowed_by_loops(batch, seq, *, causal, attention_mask=None, segment_ids=None):
    """The masking rules of the module docstring, one (query, key) pair at a time."""
    allowed = torch.zeros(batch, 1, seq, seq, dtype=torch.bool)
    for b in range(batch):
        for i in range(seq):
            for j in range(seq):
                ok = not (causal and j > i)
                ok = ok and (attention_mask is None or bool(attention_mask[b, j]))
                ok = ok and (segment_ids is None or int(segment_ids[b, i]) == int(segment_ids[b, j]))
                allowed[b, 0, i, j] = ok
    return allowed


def test_hand_computed_two_token_attention():
    """softmax over hand-picked scores, with the answer worked out on paper."""
    q = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])  # (1, 1, 2, 2)
    k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    v = torch.tensor([[[[10.0, 0.0], [0.0, 10.0]]]])
    # scale 1: query 0 scores (1, 0), query 1 scores (0, 2); causal hides key 1 from query 0
    e1, e2 = torch.tensor(1.0).exp(), torch.tensor(2.0).exp()
    full = torch.tensor([[e1 / (e1 + 1) * 10, 1 / (e1 + 1) * 10], [1 / (1 + e2) * 10, e2 / (1 + e2) * 10]])
    causal = torch.tensor([[10.0, 0.0], [1 / (1 + e2) * 10, e2 / (1 + e2) * 10]])
    padded = torch.tensor([[10.0, 0.0], [10.0, 0.0]])  # key 1 is padding: everyone sees key 0 only
    for backend in ("reference", "cpu", "triton"):
        run_ = lambda backend=backend, **kw: attention(q, k, v, scale=1.0, backend=backend, **kw)[0, 0]  # noqa: E731
        torch.testing.assert_close(run_(), full)
        torch.testing.assert_close(run_(causal=True), causal)
        torch.testing.assert_close(run_(attention_mask=torch.tensor([[True, False]])), padded)
        # segments [0, 1]: each token sees only itself
        torch.testing.assert_close(run_(segment_ids=torch.tensor([[0, 1]])), torch.tensor([[10.0, 0.0], [0.0, 10.0]]))


def test_reference_upcast_computes_in_fp32():
    (q, k, v, _), masks = make_inputs(2, 2, 17, 8, torch.float32, pad=True)
    half = [t.half() for t in (q, k, v)]
    fp32 = attention_reference(*[t.float() for t in half], causal=True, **masks)
    up = attention_reference(*half, causal=True, upcast=True, **masks)
    assert up.dtype == torch.float16 and torch.equal(up, fp32.half())


def test_reference_log_sum_exp_by_hand():
    """The saved LSE is log(sum exp(scaled masked scores)) per row; +inf where no key is visible."""
    (q, k, v, _), masks = make_inputs(1, 2, 6, 4, torch.float64, pad=True)
    masks["attention_mask"][0, :] = torch.tensor([True, False, True, False, False, False])
    out, lse = attention_reference(q, k, v, causal=True, scale=0.7, return_lse=True, **masks)
    allowed = _allowed_by_loops(1, 6, causal=True, **masks)[0, 0]
    assert lse.dtype == torch.float64 and lse.shape == (1, 2, 6)
    for h in range(2):
        for i in range(6):
            keys = [j for j in range(6) if allowed[i, j]]
            scores = [0.7 * float(q[0, h, i] @ k[0, h, j]) for j in keys]
            want = math.log(sum(math.exp(s) for s in scores)) if keys else math.inf
            assert lse[0, h, i].item() == pytest.approx(want, rel=1e-12), (h, i)


def test_reference_agrees_with_sdpa_bool_mask():
    """The spec itself, checked against PyTorch's SDPA with the equivalent boolean mask."""
    (q, k, v, _), masks = make_inputs(2, 2, 50, 32, torch.float32, pad=True, segments=True)
    out = attention_reference(q, k, v, causal=True, **masks)
    allowed = _allowed_by_loops(2, 50, causal=True, **masks)  # (B, 1, S, S), built without the module
    has_key = allowed.any(-1)  # SDPA gives NaN on empty rows; compare the others
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(out.masked_select(has_key[..., None]), sdpa.masked_select(has_key[..., None]))
    assert (out.masked_select(~has_key[..., None]) == 0).all()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    (q, k, v, _), masks = make_inputs(1, 2, 9, 8, torch.float64, pad=True, segments=True)
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    fn = lambda q, k, v: attention(q, k, v, causal=True, scale=0.4, backend=backend, **masks)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend,dtype", [("reference", torch.float32), ("cpu", torch.float32),
                                           ("cpu", torch.bfloat16), ("triton", torch.float32),
                                           ("triton", torch.float16)])
def test_fully_masked_rows_give_zeros(backend, dtype):
    (q, k, v, do), _ = make_inputs(2, 2, 20, 16, dtype)
    keep = torch.ones(2, 20, dtype=torch.bool)
    keep[1] = False  # batch row 1 sees no key at all
    seg = torch.zeros(2, 20, dtype=torch.long)
    out, dq, dk, dv = run(backend_fn(backend), q, k, v, do, causal=True, attention_mask=keep, segment_ids=seg)
    for name, t in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert torch.isfinite(t).all(), f"{name} has NaN/inf"
        assert (t[1] == 0).all(), f"{name} of the fully masked batch row is not zero"
    assert out[0].abs().sum() > 0


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_custom_scale_and_non_contiguous_inputs(backend):
    (q, k, v, do), _ = make_inputs(1, 2, 24, 16, torch.float32)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))  # (B, H, S, D) view of BSHD
    assert not q.is_contiguous()
    assert_close_fp32(backend, q, k, v, do, scale=0.3, causal=True)


def test_cpu_bf16_computes_in_fp32():
    """bf16 through the CPU kernel should be as good as fp32 math rounded once at the end."""
    (q, k, v, _), _ = make_inputs(1, 2, 256, 64, torch.bfloat16)
    ours = attention(q, k, v, backend="cpu")
    ref = attention_reference(q, k, v, upcast=True).to(torch.bfloat16)
    assert max_err(ours, ref) <= 2 ** -7  # at most about one bf16 ulp at |x| <= 1


def test_explicit_backend_that_cannot_run_raises_with_reason():
    (q, k, v, _), _ = make_inputs(1, 1, 8, 16, torch.float32)
    with pytest.raises(BackendUnavailable, match="cuda.*CUDA tensors"):
        attention(q, k, v, backend="cuda")
    with pytest.raises(BackendUnavailable, match="head dim 160"):
        attention(*(torch.randn(1, 1, 8, 160) for _ in range(3)), backend="triton")
    with pytest.raises(BackendUnavailable, match="float16"):
        attention(q.half(), k.half(), v.half(), backend="cpu")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        attention(q, k, v, backend="tpu")


def test_automatic_choice_on_cpu():
    q = torch.randn(1, 1, 8, 16)
    assert registry.choose("attention", q, None, _op_reason) == "cpu"
    qh = q.half()  # no CPU kernel for fp16: falls back to the reference
    assert registry.choose("attention", qh, None, _op_reason) == "reference"
    assert torch.isfinite(attention(qh, qh, qh)).all()


def test_bad_inputs_name_the_argument():
    q = torch.randn(2, 2, 8, 16)
    with pytest.raises(ValueError, match="attention_mask"):
        attention(q, q, q, attention_mask=torch.zeros(2, 8))
    with pytest.raises(ValueError, match="segment_ids"):
        attention(q, q, q, segment_ids=torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="causal"):
        attention(q, torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16), causal=True)
    with pytest.raises(ValueError, match="q must be"):
        attention(q[0], q[0], q[0])


def test_package_name_stays_callable():
    """ops/attention/ is also the function's name; importing the package must not shadow it."""
    import ptft_engine.ops as ops
    import ptft_engine.ops.attention.reference  # noqa: F401  (a fresh submodule import)

    assert callable(ops.attention) and ops.attention.__module__ == "ptft_engine.ops.attention.op"
    q = torch.randn(1, 1, 8, 16)
    torch.testing.assert_close(ops.attention(q, q, q, backend="reference"), attention_reference(q, q, q))
