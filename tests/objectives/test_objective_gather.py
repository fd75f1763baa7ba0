"""gather: true on 2 gloo ranks gives the loss and (data-parallel averaged) gradients of
one process holding the whole batch: negatives really come from every rank."""
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from shared_helpers import spawn_gloo

from ptft_engine.models import load_model_config
from ptft_engine.objectives import build_objective

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "models"
CASES = {"clip": "clip-tiny", "simclr": "vit-tiny-digits"}


def make_batch(objective):
    g = torch.Generator().manual_seed(5)
    if objective == "clip":
        return {"pixel_values": torch.rand(8, 1, 8, 8, generator=g),
                "input_ids": torch.randint(4, 64, (8, 6), generator=g),
                "attention_mask": torch.ones(8, 6, dtype=torch.bool)}
    return {"view1": torch.rand(8, 1, 8, 8, generator=g), "view2": torch.rand(8, 1, 8, 8, generator=g)}


def loss_and_grads(objective, gather, batch):
    torch.manual_seed(0)  # the same model on every rank
    task = build_objective(load_model_config(PRESETS / f"{CASES[objective]}.yaml"),
                           {"name": objective, "gather": gather})
    out = task(batch)
    out["loss"].backward()
    return out["loss"].detach(), {n: p.grad.clone() for n, p in task.named_parameters()}


def _rank(rank, out_dir):
    torch.set_num_threads(1)
    for objective in CASES:
        full = make_batch(objective)
        local = {k: v[rank * 4:(rank + 1) * 4] for k, v in full.items()}
        loss, grads = loss_and_grads(objective, True, local)
        dist.all_reduce(loss)
        for g in grads.values():
            dist.all_reduce(g)
        if rank == 0:  # data-parallel averaging, as DeepSpeed does
            torch.save((loss / 2, {n: g / 2 for n, g in grads.items()}), os.path.join(out_dir, f"{objective}.pt"))


@pytest.mark.slow
def test_gathered_loss_and_grads_match_one_process(tmp_path):
    spawn_gloo(_rank, 2, str(tmp_path))
    for objective in CASES:
        loss, grads = torch.load(tmp_path / f"{objective}.pt")
        ref_loss, ref_grads = loss_and_grads(objective, False, make_batch(objective))
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6, msg=objective)
        for n, g in ref_grads.items():
            torch.testing.assert_close(grads[n], g, rtol=1e-4, atol=1e-6, msg=f"{objective}: {n}")
