"""LoRA: y = W x + b + (alpha / r) * B A dropout(x), with W frozen and only A, B trained.

A LoRALinear keeps the wrapped layer's `weight`/`bias` under the same names, so the
backbone's state dict keeps its export names; `merged_state_dict` folds B A into W
(what an export holds), and `merge_lora` does it in place, turning the modules back
into plain Linear layers. B starts at zero, so training starts from the pre-trained model.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TARGETS = {  # engine names, and transformers Wav2Vec2's (out_proj, intermediate_dense, output_dense)
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "out_proj"),
    "mlp": ("fc_in", "fc_out", "gate_proj", "up_proj", "down_proj", "intermediate_dense", "output_dense"),
}


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.r, self.scaling = r, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=base.weight.device, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=base.weight.device,
                                               dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.dropout = nn.Dropout(dropout)

    def delta(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low_rank = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # (..., out)
        return F.linear(x, self.weight, self.bias) + low_rank * self.scaling

    def merged_linear(self) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.weight + self.delta())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, scaling={self.scaling:g}"


def apply_lora(model: nn.Module, targets=("attn",), r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> list[str]:
    """Wrap every Linear named like a target projection; returns the wrapped module names."""
    names = {n for t in targets for n in TARGETS[t]}
    wrapped = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if child_name in names and isinstance(child, nn.Linear):
                setattr(parent, child_name, LoRALinear(child, r, alpha, dropout))
                wrapped.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    if not wrapped:
        raise ValueError(f"strategy.lora.targets {list(targets)}: no matching projections in the model")
    return wrapped


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA update into its weight in place; returns how many were merged."""
    count = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, child_name, child.merged_linear())
                count += 1
    return count


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with LoRA folded in and no lora_* entries; the model is unchanged."""
    from ptft_engine.export.writer import unique_state

    state = dict(unique_state(model))  # tied aliases once
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            prefix = f"{name}." if name else ""
            state[prefix + "weight"] = module.weight + module.delta()
            del state[prefix + "lora_A"], state[prefix + "lora_B"]
    return state
