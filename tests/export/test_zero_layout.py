"""ZeRO partition layouts at world sizes other than 2 (files written here in DeepSpeed's
layout): uneven partitions, tensors spanning several ranks, padding, frozen params."""
import math
from collections import OrderedDict

import pytest
import torch

from ptft_engine.export.zero import consolidated_tensors


def _params():
    g = torch.Generator().manual_seed(0)
    return [OrderedDict(a=torch.randn(5, 3, generator=g), b=torch.randn(7, generator=g),
                        c=torch.randn(2, 11, generator=g)),
            OrderedDict(d=torch.randn(13, generator=g), e=torch.randn(1, generator=g))]


def _model_states(groups, frozen=None):
    module = {n: t for grp in groups for n, t in grp.items()}
    module.update(frozen or {})
    return {"module": module, "buffer_names": [], "ds_version": "test", "global_steps": 1,
            "param_shapes": [OrderedDict((n, t.shape) for n, t in grp.items()) for grp in groups]}


@pytest.mark.parametrize("world", [1, 3, 4])
def test_stage12_any_world_size(tmp_path, world):
    groups = _params()
    frozen = {"f": torch.arange(6.0).view(2, 3)}
    torch.save(_model_states(groups, frozen), tmp_path / "mp_rank_00_model_states.pt")
    flats = []
    for grp in groups:
        flat = torch.cat([t.flatten() for t in grp.values()])
        padded = math.ceil(flat.numel() / world) * world
        flats.append(torch.cat([flat, torch.zeros(padded - flat.numel())]))
    for r in range(world):
        parts = [f.view(world, -1)[r].clone() for f in flats]
        torch.save({"optimizer_state_dict": {"single_partition_of_fp32_groups": parts, "zero_stage": 2}},
                   tmp_path / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
    stream, info = consolidated_tensors(tmp_path)
    out = dict(stream)
    assert info["world_size"] == world
    for grp in groups:
        for n, t in grp.items():
            assert torch.equal(out[n], t), n
    assert torch.equal(out["f"], frozen["f"])


@pytest.mark.parametrize("world", [3, 4])
def test_stage3_any_world_size(tmp_path, world):
    groups = _params()
    states = _model_states(groups)
    for r in range(world):
        flat_groups = []
        for grp in groups:
            chunks = []
            for t in grp.values():
                part = math.ceil(t.numel() / world)
                padded = torch.cat([t.flatten(), torch.zeros(part * world - t.numel())])
                chunks.append(padded[r * part:(r + 1) * part])
            flat_groups.append(torch.cat(chunks))
        torch.save({**states, "module": {n: torch.empty(0) for n in states["module"]}},
                   tmp_path / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")
        torch.save({"optimizer_state_dict": {"fp32_flat_groups": flat_groups, "zero_stage": 3}},
                   tmp_path / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
    stream, info = consolidated_tensors(tmp_path)
    out = dict(stream)
    assert info["zero_stage_layout"] == "3" and info["world_size"] == world
    for grp in groups:
        for n, t in grp.items():
            assert torch.equal(out[n], t), n


def test_stage12_emits_tensors_before_reading_later_ranks(tmp_path, monkeypatch):
    """Streaming: the first group's leading tensor is complete after rank 0 alone."""
    import ptft_engine.export.zero as zero

    groups = [OrderedDict(a=torch.randn(4), b=torch.randn(100))]
    torch.save(_model_states(groups), tmp_path / "mp_rank_00_model_states.pt")
    flat = torch.cat([groups[0]["a"], groups[0]["b"]])
    for r in range(4):
        torch.save({"optimizer_state_dict": {"single_partition_of_fp32_groups": [flat.view(4, -1)[r].clone()]}},
                   tmp_path / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
    opened = []
    real = zero.torch_load
    monkeypatch.setattr(zero, "torch_load", lambda p: opened.append(p.name) or real(p))
    stream, _ = consolidated_tensors(tmp_path)
    name, _ = next(stream)
    assert name == "a" and [n for n in opened if "optim" in n] == ["zero_pp_rank_0_mp_rank_00_optim_states.pt"]


def test_stage0_lists_a_tied_alias_once(tmp_path):
    # ZeRO-0 saves the whole module; an MLM head's decoder weight is the word embedding itself
    emb = torch.randn(6, 4)
    module = OrderedDict(emb=emb, norm=torch.ones(4), decoder=emb)  # decoder: the same storage
    torch.save({"module": module, "buffer_names": [], "ds_version": "test", "global_steps": 1},
               tmp_path / "mp_rank_00_model_states.pt")
    stream, info = consolidated_tensors(tmp_path)
    out = dict(stream)
    assert info["zero_stage_layout"] == "0"
    assert sorted(out) == ["emb", "norm"] and torch.equal(out["emb"], emb)
