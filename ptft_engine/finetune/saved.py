"""A fine-tuned model on disk, in the export format: the backbone (LoRA merged) as an
export (HF layout for text models, so `transformers` loads the backbone too), plus
head.safetensors, task.json (kind, labels, pooling) and metrics.json, all in the
manifest. `load_task_model` reads it back (safetensors + JSON only)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ptft_engine.export import export_tensors, load_export
from ptft_engine.export.errors import ExportError
from ptft_engine.finetune.lora import merged_state_dict
from ptft_engine.finetune.tasks import TaskModel

HEAD_FILE = "head.safetensors"
TASK_FILE = "task.json"
METRICS_FILE = "metrics.json"


def save_task_model(model: TaskModel, out_dir: str | Path, *, task_info: dict[str, Any], metrics: dict[str, Any],
                    tokenizer: str | None = None, source: dict[str, Any] | None = None, dtype: str = "fp32") -> Path:
    """Write atomically: a kill mid-save leaves the previous best model in place."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    state = {k: v.detach().cpu() for k, v in merged_state_dict(model.backbone).items()}
    head = {k: v.detach().cpu() for k, v in model.head.state_dict().items()}
    export_tensors(state.items(), model.backbone.config, tmp, dtype=dtype, tokenizer=tokenizer,
                   source=source or {"kind": "finetune"}, extra_tensors={HEAD_FILE: head},
                   extra_json={TASK_FILE: task_info, METRICS_FILE: metrics}, overwrite=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def load_task_model(path: str | Path, device: str = "cpu") -> tuple[TaskModel, dict[str, Any]]:
    """A saved fine-tuned model -> (TaskModel in eval mode, task info incl. label names)."""
    from safetensors.torch import load_file

    path = Path(path)
    loaded = load_export(path, device=device)  # verifies every file's sha256, head and task.json included
    task_file, head_file = path / TASK_FILE, path / HEAD_FILE
    if not task_file.is_file() or not head_file.is_file():
        raise ExportError(f"{path}: not a fine-tuned model (no {TASK_FILE} / {HEAD_FILE}); use load_pretrained")
    info = json.loads(task_file.read_text())
    model = TaskModel(loaded.model, info["kind"], info["num_outputs"], info.get("pooling", "cls"), 0.0)
    model.head.load_state_dict(load_file(str(head_file), device=device))
    return model.eval(), info


def head_if_fits(path: str | Path, model: TaskModel) -> bool:
    """Keep a saved head (task.reinit_head=false) when the export has one of the same shape."""
    from safetensors.torch import load_file

    head_file = Path(path) / HEAD_FILE
    if not head_file.is_file():
        return False
    state = load_file(str(head_file))
    if any(state[k].shape != v.shape for k, v in model.head.state_dict().items() if k in state):
        return False
    model.head.load_state_dict(state)
    return True


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
