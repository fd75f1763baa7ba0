"""Optimizer parameter groups with layer-wise learning-rate decay (LLRD).

Depth ids: embeddings 0, block i -> i + 1, everything above the blocks (final norm, the
task head) -> L + 1. ELECTRA's convention: the head counts as the top layer and gets the
base lr; a parameter at depth d gets lr * decay ** (L + 1 - d). No weight decay on
biases, norms and other 1-D parameters.
"""
from __future__ import annotations

import re

from torch import nn

_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def depth_of(name: str, num_layers: int) -> int:
    if not name.startswith("backbone."):  # the task head (and BERT's pooler)
        return num_layers + 1
    if ".embeddings." in name or name.startswith("backbone.embeddings"):
        return 0
    m = _BLOCK.search(name)
    return int(m.group(1)) + 1 if m else num_layers + 1


def param_groups(model: nn.Module, lr: float, *, layer_decay: float = 1.0, weight_decay: float = 0.0,
                 head_lr: float | None = None) -> list[dict]:
    layers = getattr(model.backbone, "layers", None)
    num_layers = len(layers) if layers is not None else 0
    groups: dict[tuple[int, bool, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth = depth_of(name, num_layers)
        is_head = not name.startswith("backbone.")
        decay = p.ndim >= 2
        key = (depth, decay, is_head)
        if key not in groups:
            base = head_lr if (is_head and head_lr is not None) else lr
            groups[key] = {"params": [], "names": [], "depth": depth,
                           "lr": base * layer_decay ** (num_layers + 1 - depth),
                           "weight_decay": weight_decay if decay else 0.0}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    for g in groups.values():
        g["initial_lr"] = g["lr"]
    return [groups[k] for k in sorted(groups)]
