"""Whole-model, in-memory conversions to and from transformers' layouts.

A thin use of the per-tensor layouts the streaming export uses (one table per format):
for code that holds a model and a state dict in memory rather than files on disk.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ptft_engine.export.formats import layout_for, layout_of_config
from ptft_engine.export.writer import unique_state


def hf_config(model: nn.Module) -> dict[str, Any]:
    """config.json contents for the matching transformers class."""
    return layout_for(model.config, "hf").target_config(model.config)


def config_from_hf(hf: dict[str, Any], source: str = "config.json"):
    """A transformers config.json (dict) -> engine model config; unsupported settings
    raise ExportError (a ValueError) naming the key."""
    return layout_of_config(hf, source)[1]


def to_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Engine weights under HF names (GPT-2 Conv1D weights transposed, contiguous);
    tied copies are left out, as transformers re-ties them on load."""
    layout = layout_for(model.config, "hf")
    return {target: t.contiguous() for name, tensor in unique_state(model)
            for target, t in layout.to_target(name, tensor)}


def from_hf_state_dict(model: nn.Module, hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF weights -> a state dict that `model.load_state_dict` accepts. Missing weights raise
    KeyError naming one; tied HF copies and the layout's known extras (poolers, other heads)
    are skipped; a tensor with no place in the layout raises ExportError."""
    layout = layout_for(model.config, "hf")
    mapped: dict[str, torch.Tensor] = {}
    for name, tensor in hf_state.items():
        for ours, t in layout.from_target(name, tensor):
            mapped[ours] = t.contiguous()
    needed = [name for name, _ in unique_state(model)]
    missing = [name for name in needed if name not in mapped]
    if missing:
        hf_names = [target for target, _ in layout.to_target(missing[0], torch.empty(0))] or [missing[0]]
        raise KeyError(f"the Hugging Face checkpoint lacks {len(missing)} weights this config needs, "
                       f"e.g. {hf_names[0]}")
    # tied aliases (lm_head.weight, mlm_head.decoder.weight) are state_dict keys too
    first: dict[int, str] = {}
    state = {}
    for name, t in model.state_dict(keep_vars=True).items():
        first.setdefault(id(t), name)
        state[name] = mapped[first[id(t)]]
    return state


__all__ = ["config_from_hf", "from_hf_state_dict", "hf_config", "to_hf_state_dict"]
