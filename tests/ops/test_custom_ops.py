"""torch.library.opcheck of our custom ops: schema, fake (meta) kernels against the real ones,
the autograd registration and AOT dispatch, on every backend that runs on this CPU."""
import pytest
import torch

from ptft_engine.ops import registry
from ptft_engine.ops.attention.op import attention_backward_op, attention_op
from ptft_engine.ops.contrastive.op import contrastive_lse_backward_op, contrastive_lse_op

BACKENDS = ["reference", pytest.param("cpu", marks=pytest.mark.skipif(
    registry.generic_reason("cpu", torch.device("cpu")) is not None, reason="ptft_engine._C not built"))]


def _attention_args(backend):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 9, 8, generator=gen).requires_grad_() for _ in range(3))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    seg = torch.tensor([[0] * 4 + [1] * 5, [0] * 9], dtype=torch.int32)
    return q, k, v, mask, seg, True, 0.35, backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_ops(backend):
    args = _attention_args(backend)
    torch.library.opcheck(attention_op, args)
    torch.library.opcheck(attention_op, (*args[:3], None, None, False, 0.35, backend))
    q, k, v = (t.detach() for t in args[:3])
    out, lse = attention_op(q, k, v, *args[3:])
    torch.library.opcheck(attention_backward_op, (torch.randn_like(out), q, k, v, out, lse, *args[3:]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("want_cols", [True, False])
def test_contrastive_ops(backend, want_cols):
    gen = torch.Generator().manual_seed(1)
    a, b = (torch.nn.functional.normalize(torch.randn(11, 6, generator=gen), dim=1).requires_grad_() for _ in range(2))
    scale = torch.tensor(4.0, requires_grad=True)
    exclude = torch.arange(11)
    exclude[3] = -1  # row 3 keeps every column
    args = (a, b, scale, exclude, want_cols, 4, backend)
    torch.library.opcheck(contrastive_lse_op, args)
    row, col = contrastive_lse_op(a.detach(), b.detach(), scale.detach(), exclude, want_cols, 4, backend)
    g_col = torch.randn_like(col) if want_cols else None
    torch.library.opcheck(contrastive_lse_backward_op, (a.detach(), b.detach(), scale.detach(), exclude, row, col,
                                                        torch.randn_like(row), g_col, 4, backend))
