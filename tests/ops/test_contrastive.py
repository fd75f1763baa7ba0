"""contrastive_loss / nt_xent_loss: every backend against the naive full-matrix losses."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch._library.custom_ops import OPDEFS

from ptft_engine.ops import BackendUnavailable, contrastive_loss, nt_xent_loss, registry
from ptft_engine.ops.contrastive.reference import contrastive_loss_reference, nt_xent_loss_reference

CPU = torch.device("cpu")
N, D, CHUNK = 37, 24, 16  # N not a multiple of the chunk (nor of Triton's 16-row blocks)


def _usable(name, device=CPU):
    return registry.generic_reason(name, device) is None


CPU_BACKENDS = [
    "reference",
    pytest.param("cpu", marks=pytest.mark.skipif(not _usable("cpu"), reason="ptft_engine._C not built")),
    pytest.param("triton", marks=pytest.mark.skipif(not _usable("triton"), reason="needs TRITON_INTERPRET=1")),
]
# Lower precision: bf16 on the C++ kernel, fp16 on Triton (the interpreter has no bf16).
LOW_PRECISION = [("reference", torch.bfloat16), ("cpu", torch.bfloat16), ("triton", torch.float16)]
TOL = {torch.float32: 2e-5, torch.float64: 1e-12, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def _embeddings(n=N, d=D, dtype=torch.float32, normalise=True):
    x = torch.randn(n, d, dtype=torch.float64)
    return F.normalize(x, dim=1) if normalise else x


def _rel_err(x, ref):
    x, ref = x.detach().double(), ref.detach().double()
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _clip_case(backend, dtype, symmetric, scale_value=1 / 0.07, normalise=True):
    """Our loss and grads in `dtype` vs the float64 naive spec on the same (rounded) inputs."""
    a64, b64 = (_embeddings(normalise=normalise).to(dtype).double() for _ in range(2))
    outs = []
    for fn, dt in ((lambda a, b, s: contrastive_loss(a, b, s, symmetric=symmetric, chunk_size=CHUNK, backend=backend),
                    dtype), (lambda a, b, s: contrastive_loss_reference(a, b, s, symmetric), torch.float64)):
        a = a64.to(dt).requires_grad_()
        b = b64.to(dt).requires_grad_()
        s = torch.tensor(scale_value, dtype=torch.float32 if dt != torch.float64 else dt, requires_grad=True)
        loss = fn(a, b, s)
        outs.append((loss, *torch.autograd.grad(loss, (a, b, s))))
    return outs


def _skip_unusable(backend):
    if not _usable(backend):
        pytest.skip(f"{backend} backend unavailable here: {registry.generic_reason(backend, CPU)}")


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_clip_matches_naive_fp32(backend, symmetric):
    ours, ref = _clip_case(backend, torch.float32, symmetric)
    for x, y, what in zip(ours, ref, ("loss", "da", "db", "dscale")):
        assert torch.isfinite(x).all(), what
        assert _rel_err(x, y) < TOL[torch.float32], f"{backend} {what}: rel err {_rel_err(x, y):.2e}"


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("backend,dtype", LOW_PRECISION, ids=lambda v: str(v).replace("torch.", ""))
def test_clip_matches_naive_low_precision(backend, dtype, symmetric):
    _skip_unusable(backend)
    ours, ref = _clip_case(backend, dtype, symmetric)
    assert ours[1].dtype == dtype and ours[2].dtype == dtype
    # fp32 accumulation: the loss is as good as fp32; grads carry the dtype's rounding.
    assert _rel_err(ours[0], ref[0]) < 1e-5
    for x, y, what in zip(ours[1:], ref[1:], ("da", "db", "dscale")):
        assert _rel_err(x, y) < TOL[dtype], f"{backend} {dtype} {what}: rel err {_rel_err(x, y):.2e}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_clip_large_logits_stay_finite(backend):
    # Unnormalised inputs at scale 100: logits in the thousands overflow a naive exp.
    ours, ref = _clip_case(backend, torch.float32, True, scale_value=100.0, normalise=False)
    for x, y in zip(ours, ref):
        assert torch.isfinite(x).all()
        assert _rel_err(x, y) < 1e-4


def _nt_xent_case(backend, dtype, temp_value=0.2):
    z = [_embeddings().to(dtype).double() for _ in range(2)]
    outs = []
    for fn, dt in ((lambda z1, z2, t: nt_xent_loss(z1, z2, t, chunk_size=CHUNK, backend=backend), dtype),
                   (nt_xent_loss_reference, torch.float64)):
        z1, z2 = (x.to(dt).requires_grad_() for x in z)
        t = torch.tensor(temp_value, dtype=torch.float32 if dt != torch.float64 else dt, requires_grad=True)
        loss = fn(z1, z2, t)
        outs.append((loss, *torch.autograd.grad(loss, (z1, z2, t))))
    return outs


@pytest.mark.parametrize("backend,dtype", [("reference", torch.float32), ("cpu", torch.float32),
                                           ("triton", torch.float32), *LOW_PRECISION],
                         ids=lambda v: str(v).replace("torch.", ""))
def test_nt_xent_matches_naive(backend, dtype):
    _skip_unusable(backend)
    ours, ref = _nt_xent_case(backend, dtype)
    assert _rel_err(ours[0], ref[0]) < 1e-5
    for x, y, what in zip(ours[1:], ref[1:], ("dz1", "dz2", "dtemperature")):
        assert _rel_err(x, y) < TOL[dtype], f"{backend} {dtype} {what}: rel err {_rel_err(x, y):.2e}"


def test_references_match_explicit_formulas():
    """The specs themselves, against loops over anchors written out from the definitions."""
    n, scale, temp = 6, 3.0, 0.5
    a, b = _embeddings(n, 5), _embeddings(n, 5)
    logits = scale * a @ b.T
    rows = [-(logits[i, i] - torch.logsumexp(logits[i], 0)) for i in range(n)]
    cols = [-(logits[i, i] - torch.logsumexp(logits[:, i], 0)) for i in range(n)]
    sym = 0.5 * (sum(rows) / n + sum(cols) / n)
    assert torch.allclose(contrastive_loss_reference(a, b, torch.tensor(scale, dtype=a.dtype)), sym)
    assert torch.allclose(contrastive_loss_reference(a, b, torch.tensor(scale, dtype=a.dtype), False), sum(rows) / n)
    z = torch.cat([a, b])
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = torch.stack([z[i] @ z[k] / temp for k in range(2 * n) if k != i])
        total += -(z[i] @ z[pos] / temp - torch.logsumexp(sims, 0))
    assert torch.allclose(nt_xent_loss_reference(a, b, temp), total / (2 * n))


@pytest.mark.parametrize("backend", ["reference",
                                     pytest.param("cpu", marks=pytest.mark.skipif(not _usable("cpu"), reason="no _C"))])
def test_gradcheck_float64(backend):
    a, b = (_embeddings(7, 3).requires_grad_() for _ in range(2))
    s = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    for sym in (True, False):
        assert torch.autograd.gradcheck(
            lambda x, y, k, sym=sym: contrastive_loss(x, y, k, symmetric=sym, chunk_size=3, backend=backend), (a, b, s))
    assert torch.autograd.gradcheck(lambda x, y, k: nt_xent_loss(x, y, k, chunk_size=3, backend=backend), (a, b, t))


def test_public_api_auto_backend_and_chunk_default():
    a, b = _embeddings().float(), _embeddings().float()
    s = torch.tensor(10.0)
    ref = contrastive_loss_reference(a.double(), b.double(), s.double())
    assert math.isclose(float(contrastive_loss(a, b, s)), float(ref), rel_tol=1e-5)
    assert math.isclose(float(contrastive_loss(a, b, s, chunk_size=5)), float(ref), rel_tol=1e-5)
    assert math.isclose(float(nt_xent_loss(a, b, 0.1)), float(nt_xent_loss_reference(a.double(), b.double(), 0.1)),
                        rel_tol=1e-5)
    with registry.use_backend("reference"):
        assert math.isclose(float(contrastive_loss(a, b, s)), float(ref), rel_tol=1e-5)


def test_bad_inputs_raise_clear_errors():
    a, b = torch.randn(8, 4), torch.randn(8, 4)
    s = torch.tensor(2.0)
    with pytest.raises(ValueError, match="same shape"):
        contrastive_loss(a, torch.randn(9, 4), s)
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(a, torch.randn(8, 5), 0.1)
    with pytest.raises(ValueError, match="logit_scale must be a scalar"):
        contrastive_loss(a, b, torch.ones(2))
    with pytest.raises(ValueError, match="2-D"):
        contrastive_loss(a[0], b[0], s)
    with pytest.raises(ValueError, match="dtype"):
        contrastive_loss(a, b.double(), s)
    with pytest.raises(ValueError, match="floating point"):
        contrastive_loss(a.long(), b.long(), s)
    with pytest.raises(ValueError, match="chunk_size"):
        contrastive_loss(a, b, s, chunk_size=0)
    with pytest.raises(ValueError, match="temperature must be positive"):
        nt_xent_loss(a, b, 0.0)
    with pytest.raises(ValueError, match="temperature must be a scalar"):
        nt_xent_loss(a, b, torch.ones(3))
    with pytest.raises(BackendUnavailable, match="cuda"):
        contrastive_loss(a, b, s, backend="cuda")
    if _usable("triton"):
        with pytest.raises(BackendUnavailable, match="bfloat16"):
            contrastive_loss(a.bfloat16(), b.bfloat16(), s, backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_gpu_backends_match_naive(backend, dtype):
    dev = torch.device("cuda")
    if registry.generic_reason(backend, dev):
        pytest.skip(registry.generic_reason(backend, dev))
    tol = 5e-4 if dtype == torch.float32 else 2e-2
    a0, b0 = (F.normalize(torch.randn(300, 72, device=dev), dim=1).to(dtype) for _ in range(2))
    for sym in (True, False):
        got, want = [], []
        for name, dt, out in ((backend, dtype, got), ("reference", torch.float64, want)):
            a, b = a0.to(dt).requires_grad_(), b0.to(dt).requires_grad_()
            s = torch.tensor(14.0, device=dev, dtype=torch.float32 if dt != torch.float64 else dt, requires_grad=True)
            loss = contrastive_loss(a, b, s, symmetric=sym, backend=name)
            out.extend([loss, *torch.autograd.grad(loss, (a, b, s))])
        for x, y in zip(got, want):
            assert _rel_err(x, y) < tol
        z_got, z_want = [], []
        for name, dt, out in ((backend, dtype, z_got), ("reference", torch.float64, z_want)):
            z1, z2 = a0.to(dt).requires_grad_(), b0.to(dt).requires_grad_()
            loss = nt_xent_loss(z1, z2, 0.1, backend=name)
            out.extend([loss, *torch.autograd.grad(loss, (z1, z2))])
        for x, y in zip(z_got, z_want):
            assert _rel_err(x, y) < tol


class _LargestAllocation(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor (bytes) any op, also from C++ via the dispatcher, produces.

    In-place ops (set_, copy_ ...) allocate nothing; the Triton interpreter uses them to
    alias arguments' storages, so they are not counted."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "ptft":  # our custom ops: look inside them, at what the kernels allocate
            with self:
                return OPDEFS[func._schema.name]._init_fn(*args, **(kwargs or {}))
        out = func(*args, **(kwargs or {}))
        if not func.__name__.split(".")[0].endswith("_"):
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel() * t.element_size())
        return out


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_logits_never_materialised_whole(backend):
    _skip_unusable(backend)
    n, chunk = 64, 16
    a, b = (_embeddings(n, 8).float().requires_grad_() for _ in range(2))
    s = torch.tensor(5.0, requires_grad=True)
    with _LargestAllocation() as mode:
        contrastive_loss(a, b, s, chunk_size=chunk, backend=backend).backward()
        nt_xent_loss(a, b, 1.0 / s, chunk_size=chunk, backend=backend).backward()
    if backend == "reference":
        assert mode.largest >= 4 * n * n  # the detector sees the naive (N, N) logits
    else:  # at most one (chunk, chunk) tile or the (2N, D) stacked views, in float32
        assert mode.largest <= 4 * max(chunk * chunk, 2 * n * 8), f"{backend}: a tensor of {mode.largest} bytes"


def test_local_references_split_the_global_loss_by_rows():
    """Two "ranks" holding rows 0-3 and 4-7, each against all columns, average to the global
    loss; the offset is what puts each local row's target on the global diagonal."""
    from ptft_engine.ops.contrastive.reference import local_contrastive_loss_reference, local_nt_xent_loss_reference

    g = torch.Generator().manual_seed(3)
    a, b = F.normalize(torch.randn(8, 5, generator=g), dim=-1), F.normalize(torch.randn(8, 5, generator=g), dim=-1)
    scale = torch.tensor(7.0)
    for symmetric in (True, False):
        parts = [local_contrastive_loss_reference(a[i:i + 4], b[i:i + 4], a, b, scale, i, symmetric=symmetric)
                 for i in (0, 4)]
        torch.testing.assert_close(sum(parts) / 2, contrastive_loss_reference(a, b, scale, symmetric=symmetric))
    both = [local_contrastive_loss_reference(a[i:i + 4], b[i:i + 4], a, b, scale, i) for i in (0, 4)]
    torch.testing.assert_close(sum(both) / 2, contrastive_loss_reference(a, b, scale, symmetric=True))  # default
    parts = [local_nt_xent_loss_reference(a[i:i + 4], b[i:i + 4], a, b, 0.5, i) for i in (0, 4)]
    torch.testing.assert_close(sum(parts) / 2, nt_xent_loss_reference(a, b, 0.5))
