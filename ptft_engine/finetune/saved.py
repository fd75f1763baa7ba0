"""A fine-tuned model on disk, in the export format: the backbone (LoRA merged) and the
head as the transformers task class that computes the same thing (config.json names it,
with id2label), or as head.safetensors where no class does (export/task_heads.py says
which); task.json (kind, labels, pooling, which transformers class) and metrics.json, all
in the manifest. `load_task_model` reads either form back (safetensors + JSON only)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from ptft_engine.export import export_tensors, load_export
from ptft_engine.export.errors import ExportError
from ptft_engine.export.loader import read_task_head
from ptft_engine.export.task_heads import METRICS_FILE, TASK_FILE
from ptft_engine.finetune.lora import merged_state_dict
from ptft_engine.finetune.tasks import TaskModel


def save_task_model(model: TaskModel, out_dir: str | Path, *, task_info: dict[str, Any], metrics: dict[str, Any],
                    tokenizer: str | None = None, source: dict[str, Any] | None = None, dtype: str = "fp32") -> Path:
    """Write atomically: a kill mid-save leaves the previous best model in place."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    state = {k: v.detach().cpu() for k, v in merged_state_dict(model.backbone).items()}
    head = {k: v.cpu() for k, v in model.head_state().items()}
    export_tensors(state.items(), model.backbone.config, tmp, dtype=dtype, tokenizer=tokenizer,
                   source=source or {"kind": "finetune"}, task=task_info, head=head,
                   extra_json={METRICS_FILE: metrics}, overwrite=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def _task_model(backbone, info: dict[str, Any], head: dict[str, torch.Tensor], dropout: float = 0.0) -> TaskModel:
    # the head's own tensors say whether it has a pooler / a bias (saves before both were transformers')
    projector = head.get("projector.weight")
    model = TaskModel(backbone, info["kind"], info["num_outputs"], info.get("pooling", "cls"), dropout,
                      pooler="pooler.weight" in head, head_bias="head.bias" in head,
                      **({} if projector is None else {"projector_size": projector.shape[0]}))
    model.load_head(head)
    return model


def load_task_model(path: str | Path, device: str = "cpu") -> tuple[TaskModel, dict[str, Any]]:
    """A saved fine-tuned model -> (TaskModel in eval mode, task info incl. label names)."""
    path = Path(path)
    loaded = load_export(path, device=device)  # verifies every file's sha256, head and task.json included
    if loaded.task is None:
        raise ExportError(f"{path}: not a fine-tuned model (no {TASK_FILE}); use load_pretrained")
    model = _task_model(loaded.model, loaded.task, loaded.head)
    return model.to(device).eval(), loaded.task


def head_if_fits(path: str | Path, model: TaskModel) -> bool:
    """Keep a saved head (task.reinit_head=false) when the export has one of the same shapes."""
    _, head = read_task_head(path)
    mine = model.head_state()
    if not head or set(head) != set(mine) or any(head[k].shape != v.shape for k, v in mine.items()):
        return False
    model.load_head(head)
    return True

