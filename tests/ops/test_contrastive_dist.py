"""Distributed contrastive losses over 2 gloo ranks equal the single-process losses.

Checked exactly as distributed.py documents it: the mean of the rank losses is the global
loss; a rank's gradient w.r.t. its local embeddings is W times the global one; parameter
gradients (a projection and logit_scale / temperature), averaged over ranks as data
parallel training does, equal the global gradients.
"""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from shared_helpers import spawn_gloo

from ptft_engine.ops import contrastive_loss, nt_xent_loss, registry

WORLD, N_LOCAL, D_IN, D = 2, 5, 6, 8


def _params():
    torch.manual_seed(0)  # identical data and parameters on every rank
    xa, xb = torch.randn(WORLD * N_LOCAL, D_IN), torch.randn(WORLD * N_LOCAL, D_IN)
    wa, wb = torch.randn(D_IN, D), torch.randn(D_IN, D)
    return xa, xb, wa, wb


def _run(kind, backend, rows, group):
    """Loss of the rows `rows` and the leaves whose grads we compare."""
    xa, xb, wa0, wb0 = _params()
    wa, wb = wa0.clone().requires_grad_(), wb0.clone().requires_grad_()
    log_scale = torch.tensor(2.0, requires_grad=True)
    a = F.normalize(xa[rows] @ wa, dim=1)
    b = F.normalize(xb[rows] @ wb, dim=1)
    a.retain_grad()
    b.retain_grad()
    if kind == "nt_xent":
        loss = nt_xent_loss(a, b, 1.0 / log_scale.exp(), chunk_size=3, group=group, backend=backend)
    else:
        loss = contrastive_loss(a, b, log_scale.exp(), symmetric=kind == "clip_sym", chunk_size=3, group=group,
                                backend=backend)
    loss.backward()
    return loss.detach(), a.grad, b.grad, wa.grad, wb.grad, log_scale.grad


def _close(x, y, what):
    assert torch.allclose(x, y, rtol=1e-4, atol=1e-6), f"{what}: max diff {(x - y).abs().max():.3e}"


def _worker(rank, backends):
    mine = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    for backend in backends:
        for kind in ("clip_sym", "clip_asym", "nt_xent"):
            what = f"rank {rank} {backend} {kind}"
            g_loss, g_a, g_b, g_wa, g_wb, g_s = _run(kind, "reference", slice(None), None)
            loss, da, db, dwa, dwb, ds = _run(kind, backend, mine, dist.group.WORLD)
            mean_loss = loss.clone()
            dist.all_reduce(mean_loss)
            _close(mean_loss / WORLD, g_loss, f"{what} mean of rank losses")
            _close(da, WORLD * g_a[mine], f"{what} d(local a)")
            _close(db, WORLD * g_b[mine], f"{what} d(local b)")
            for grad, ref, name in ((dwa, g_wa, "dW_a"), (dwb, g_wb, "dW_b"), (ds, g_s, "d log_scale")):
                avg = grad.clone()
                dist.all_reduce(avg)
                _close(avg / WORLD, ref, f"{what} data-parallel mean of {name}")
    # Uneven local batches are refused on every rank (no hang, no silent misalignment).
    uneven = torch.randn(3 + rank, 4)
    with pytest.raises(ValueError, match="same"):
        contrastive_loss(uneven, uneven, torch.tensor(1.0), group=dist.group.WORLD, backend="reference")


@pytest.mark.slow  # two processes
def test_two_gloo_ranks_equal_single_process():
    cpu = torch.device("cpu")
    backends = [b for b in ("reference", "cpu", "triton") if registry.generic_reason(b, cpu) is None]
    assert "reference" in backends
    spawn_gloo(_worker, WORLD, backends)
