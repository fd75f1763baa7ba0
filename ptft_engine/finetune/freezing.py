"""Which parameters train: full, partial (frozen embeddings / lower N blocks), linear probe
(head only), or LoRA (adapters + head). Frozen parameters get requires_grad=False, so the
optimizer never sees them and they stay bit-identical."""
from __future__ import annotations

from torch import nn

from ptft_engine.finetune.lora import apply_lora


def _freeze(module: nn.Module | None) -> None:
    if module is not None:
        for p in module.parameters():
            p.requires_grad_(False)


def apply_strategy(model: nn.Module, strategy) -> dict[str, int]:
    """Freeze/wrap `model` (a TaskModel) in place; returns parameter counts."""
    backbone = model.backbone
    layers = getattr(backbone, "layers", None)
    num_layers = len(layers) if layers is not None else 0
    if strategy.freeze_layers > num_layers:
        raise ValueError(f"strategy.freeze_layers={strategy.freeze_layers} but the model has {num_layers} blocks")
    if strategy.kind in ("linear_probe", "lora"):
        _freeze(backbone)
    if strategy.freeze_embeddings:
        _freeze(backbone.embeddings)
    for block in list(layers or [])[: strategy.freeze_layers]:
        _freeze(block)
    if strategy.kind == "lora":
        lo = strategy.lora
        apply_lora(backbone, lo.targets, lo.r, lo.alpha, lo.dropout)  # new A/B train; wrapped W stays frozen
    for p in model.head_parameters():
        p.requires_grad_(True)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total_params": total, "trainable_params": trainable}
