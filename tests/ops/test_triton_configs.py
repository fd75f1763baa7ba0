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
from test_attention import assert_close_fp32, backend_fn, make_inputs, run

from ptft_engine.ops import contrastive_loss, nt_xent_loss
from ptft_engine.ops.attention import triton as triton_attention
from ptft_engine.ops.attention.layout import rows_contiguous
from ptft_engine.ops.contrastive import reference as contrastive_reference
from ptft_engine.ops.contrastive import triton as triton_contrastive

KINDS = ("fwd", "bwd")
N_CONFIGS = max(len(triton_attention.configs(kind)) for kind in KINDS)
LAYOUTS = {  # s_q, s_k and masks: every layout spans more than one 128-wide block
    "causal": dict(s_q=161, causal=True),
    "causal-pad-seg": dict(s_q=150, causal=True, pad=True, segments=True),
    "cross-pad": dict(s_q=97, s_k=161, causal=False, pad=True),
    # packed rows: 5 and 4 documents of odd lengths, the second row ends in 23 padding keys
    "packed-causal": dict(s_q=173, causal=True, docs=((37, 50, 9, 61, 16), (70, 1, 45, 34))),
    "packed": dict(s_q=173, causal=False, docs=((37, 50, 9, 61, 16), (70, 1, 45, 34))),
}


def packed_masks(docs, s):
    """segment_ids numbering each row's documents in order; keys past the last document are padding."""
    seg = torch.zeros(len(docs), s, dtype=torch.long)
    keep = torch.ones(len(docs), s, dtype=torch.bool)
    for row, lengths in enumerate(docs):
        ends = torch.tensor(lengths).cumsum(0)
        seg[row] = torch.searchsorted(ends, torch.arange(s), right=True)
        keep[row, int(ends[-1]):] = False
    return dict(attention_mask=keep, segment_ids=seg)


@pytest.fixture
def pinned():
    yield triton_attention.pin_config
    for kind in KINDS:
        triton_attention.pin_config(kind, None)


@pytest.mark.slow  # every autotune entry x layout through the Triton interpreter: a sweep
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("index", range(N_CONFIGS))
def test_attention_autotune_entry(pinned, index, layout):
    spec = dict(LAYOUTS[layout])
    causal = spec.pop("causal")
    entries = {kind: triton_attention.configs(kind) for kind in KINDS}
    for kind, metas in entries.items():
        pinned(kind, metas[index % len(metas)])
    docs = spec.pop("docs", None)
    b = 1 if docs is None else len(docs)
    s_q = spec.pop("s_q")
    (q, k, v, do), masks = make_inputs(b, 2, s_q, 40, torch.float32, **spec)
    if docs is not None:
        masks = packed_masks(docs, s_q)
    assert_close_fp32("triton", q, k, v, do, causal=causal, **masks)


def test_autotune_lists_have_the_split_the_kernels_assume():
    # fwd splits its key loop at a query-block boundary (static_assert in the kernel); the
    # segment-range table has one entry per 16 positions
    assert all(m["BLOCK_M"] % m["BLOCK_N"] == 0 for m in triton_attention.configs("fwd"))
    for kind in KINDS:
        assert 1 <= len(triton_attention.configs(kind)) <= 5
        assert all(m[b] % triton_attention.CHUNK == 0 for m in triton_attention.configs(kind)
                   for b in ("BLOCK_M", "BLOCK_N"))
    with pytest.raises(ValueError, match="unknown attention kernel"):
        triton_attention.pin_config("dq", {})


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


def _bshd_view(t: torch.Tensor) -> torch.Tensor:
    """The (B, H, S, D) view a model gets by transposing its (B, S, H, D) projection: not contiguous."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def test_attention_reads_transposed_views_by_stride():
    (q, k, v, do), masks = make_inputs(2, 3, 70, 24, torch.float32, pad=True, segments=True)
    q, k, v, do = (_bshd_view(t) for t in (q, k, v, do))
    assert not any(t.is_contiguous() for t in (q, k, v, do))
    assert all(rows_contiguous(t) is t for t in (q, k, v, do))  # no copy
    assert_close_fp32("triton", q, k, v, do, causal=True, **masks)
    # a head dim with a stride (here every other element) is copied once, still right
    wide = [torch.cat([t, t], dim=-1)[..., ::2] for t in (q, k, v, do)]
    assert wide[0].stride(-1) == 2
    assert_close_fp32("triton", *wide, causal=False, **masks)


def test_chunk_ranges_table():
    seg = torch.tensor([[0] * 20 + [1] * 12 + [2] * 3])  # 35 positions: chunks 0-15, 16-31, 32-34
    pad = torch.zeros(1, 35, dtype=torch.bool)
    pad[0, 30:] = True
    table = triton_attention._chunk_ranges(seg.to(torch.int32), pad)
    lo, hi, padded = table[0].tolist()
    assert lo[:2] == [0, 0] and hi[:2] == [0, 1] and padded[:2] == [0, 1]
    assert lo[2] > hi[2] and padded[2] == 1  # all padding: an empty range, never visited


@pytest.mark.parametrize("causal", [False, True])
def test_skipped_blocks_are_never_read(causal):
    """Key blocks of another document or all padding are skipped, not masked: poisoning their
    keys and values with NaN (which any masked read would spread, 0 * NaN = NaN) leaves the other
    documents' outputs and gradients exactly as with clean values."""
    s = 128  # four 32-wide interpreter blocks: documents [0, 32), [32, 64), [64, 96), padding
    (q, k, v, do), _ = make_inputs(1, 2, s, 16, torch.float32)
    seg = (torch.arange(s) // 32).clamp(max=2)[None]
    pad = torch.arange(s)[None] >= 96
    poisoned_k, poisoned_v = k.clone(), v.clone()
    for t in (poisoned_k, poisoned_v):
        t[:, :, 32:64] = float("nan")  # document 1
        t[:, :, 96:] = float("nan")  # padding
    kw = dict(causal=causal, attention_mask=~pad, segment_ids=seg)
    clean = run(backend_fn("triton"), q, k, v, do, **kw)
    dirty = run(backend_fn("triton"), q, poisoned_k, poisoned_v, do, **kw)
    others = torch.cat([torch.arange(0, 32), torch.arange(64, 96)])
    for name, c, d in zip(("out", "dq", "dk", "dv"), clean, dirty):
        torch.testing.assert_close(d[:, :, others], c[:, :, others], rtol=0, atol=0, msg=name)


def _losses_and_grads(n, d, seed=0):
    """CLIP (both directions, learnable scale) and NT-Xent (excluded diagonal) by the Triton
    backend and by the reference: [(ours, reference), ...] for every loss and gradient."""
    g = torch.Generator().manual_seed(seed)
    a0, b0 = (torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1) for _ in range(2))
    results = []
    for clip, xent in ((lambda a, b, s: contrastive_loss(a, b, s, backend="triton"),
                        lambda z1, z2: nt_xent_loss(z1, z2, 0.1, backend="triton")),
                       (lambda a, b, s: contrastive_reference.contrastive_loss_reference(a, b, s, True),
                        lambda z1, z2: contrastive_reference.nt_xent_loss_reference(z1, z2, 0.1))):
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        s = torch.tensor(1 / 0.07, requires_grad=True)
        loss = clip(a, b, s)
        loss.backward()
        z1, z2 = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        x = xent(z1, z2)
        x.backward()
        results.append((loss.detach(), a.grad, b.grad, s.grad, x.detach(), z1.grad, z2.grad))
    return list(zip(*results))


@pytest.mark.parametrize("splits", [pytest.param(1, marks=pytest.mark.slow), 2,  # the quick suite keeps one split
                                    pytest.param(3, marks=pytest.mark.slow), pytest.param(5, marks=pytest.mark.slow)])
def test_contrastive_column_splits(monkeypatch, splits):
    """Forward partial (max, sum) per column split and the backward's atomically added da agree
    with the reference at an odd n (ragged last split) for several split counts."""
    monkeypatch.setattr(triton_contrastive, "FORCE_SPLITS", splits)
    n = 75  # 16-wide interpreter tiles: 5 column tiles
    per, launched = triton_contrastive._split_columns(n, triton_contrastive.INTERPRET_CONFIG["BLOCK_N"], splits)
    assert launched == splits and per * (launched - 1) < n <= per * launched
    for ours, ref in _losses_and_grads(n, 24, seed=splits):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_split_count_fills_the_gpu_but_never_splits_a_tile():
    assert triton_contrastive.split_count(64, 64, torch.device("cpu")) == 1  # interpreter: one program at a time
    # n = 4096 rows in 64-row blocks on an H200 (132 SMs): 64 programs -> 5 splits, 320 programs
    assert triton_contrastive.splits_to_fill(64, 64, 132) == 5
    assert triton_contrastive.splits_to_fill(64 * 8, 64, 132) == 1  # backward with 8 feature slices
    assert triton_contrastive.splits_to_fill(4, 2, 132) == 2
    assert triton_contrastive._split_columns(4096, 64, 5) == (832, 5)
    assert triton_contrastive._split_columns(100, 64, 4) == (64, 2)  # at most one split per tile
