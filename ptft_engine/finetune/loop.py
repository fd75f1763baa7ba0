"""The fine-tuning loop: plain PyTorch on one device (no DeepSpeed).

    result = finetune(load_finetune_config("configs/finetune/sst2.yaml"))

Steps: load the backbone (an export, a transformers directory, or a fresh model),
build the data and the task head, freeze/wrap per the strategy, AdamW over
layer-wise-decayed groups with warmup + decay, evaluate every N steps, keep the best
model (export format, with its metrics), stop early when the metric stalls, report.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from ptft_engine.engine.runtime import move_batch, pick_device, seed_everything
from ptft_engine.engine.schedules import lr_at
from ptft_engine.finetune.backbone import load_backbone
from ptft_engine.finetune.config import MINIMISED, FinetuneConfig
from ptft_engine.finetune.datasets import build_task_data
from ptft_engine.finetune.freezing import apply_strategy
from ptft_engine.finetune.llrd import param_groups
from ptft_engine.finetune.metrics import classification_metrics, regression_metrics, token_metrics
from ptft_engine.finetune.report import write_report
from ptft_engine.finetune.saved import head_if_fits, save_task_model
from ptft_engine.finetune.tasks import TaskModel, select_backbone
from ptft_engine.labels import IGNORE_INDEX

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(model: TaskModel, loader, device, label_names: list[str] | None) -> dict[str, float]:
    model.eval()
    total_loss, batches = 0.0, 0
    y_true: list = []
    y_pred: list = []
    for batch in loader:
        batch = move_batch(batch, device)
        logits = model(batch)
        total_loss += model.loss(logits, batch["labels"]).item()
        batches += 1
        if model.kind == "token_classification":
            pred = logits.argmax(-1)
            starts = batch["word_starts"].bool() & (batch["labels"] != IGNORE_INDEX)
            for r in range(pred.shape[0]):
                keep = starts[r]
                y_true.append([label_names[i] for i in batch["labels"][r][keep].tolist()])
                y_pred.append([label_names[i] for i in pred[r][keep].tolist()])
        elif model.kind == "regression":
            y_true += batch["labels"].float().tolist()
            y_pred += logits.float().tolist()
        else:
            y_true += batch["labels"].tolist()
            y_pred += logits.argmax(-1).tolist()
    model.train()
    if model.kind == "token_classification":
        metrics = token_metrics(y_true, y_pred)
    elif model.kind == "regression":
        metrics = regression_metrics(y_true, y_pred)
    else:
        metrics = classification_metrics(y_true, y_pred, len(label_names))
    return {"loss": total_loss / max(1, batches), **metrics}


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    seed_everything(cfg.seed)
    device = pick_device(cfg.device, key="device")
    if cfg.task.kind == "audio_classification":  # a transformers task model: its own loop
        from ptft_engine.finetune.audio import finetune_audio_from_config

        return finetune_audio_from_config(cfg, device)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = cfg.task.kind

    backbone, tokenizer, source = load_backbone(cfg)
    backbone = select_backbone(backbone, kind)
    data = build_task_data(cfg, backbone.config, tokenizer)
    num_outputs = 1 if kind == "regression" else len(data.label_names)
    if cfg.task.num_labels is not None and kind != "regression" and cfg.task.num_labels != num_outputs:
        raise ValueError(f"task.num_labels={cfg.task.num_labels} but the data has {num_outputs} labels "
                         f"({', '.join(data.label_names)})")
    model = TaskModel(backbone, kind, num_outputs, cfg.task.pooling, cfg.task.head_dropout)
    kept_head = (not cfg.task.reinit_head and cfg.model.pretrained is not None
                 and head_if_fits(cfg.model.pretrained, model))
    counts = apply_strategy(model, cfg.strategy)
    model.to(device).train()

    o = cfg.optim
    optimizer = torch.optim.AdamW(param_groups(model, o.lr, layer_decay=o.layer_decay, weight_decay=o.weight_decay,
                                               head_lr=o.head_lr), lr=o.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    train_loader = torch.utils.data.DataLoader(data.train, batch_size=o.batch_size, shuffle=True, generator=g,
                                               collate_fn=data.collate, drop_last=len(data.train) > o.batch_size)
    val_loader = torch.utils.data.DataLoader(data.val, batch_size=cfg.eval.batch_size, collate_fn=data.collate)
    total = o.max_steps or o.epochs * len(train_loader)
    # the pre-training schedule as a factor of each group's lr (layer-wise decay keeps its ratios)
    warmup = int(o.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(
        step, base_lr=1.0, total_steps=total, warmup_steps=warmup, schedule=o.schedule))
    eval_every = cfg.eval.every or len(train_loader)
    metric, sign = cfg.metric, (-1.0 if cfg.metric in MINIMISED else 1.0)
    task_info = {"kind": kind, "num_outputs": num_outputs, "labels": data.label_names, "pooling": model.pooling,
                 "strategy": cfg.strategy.kind, "metric": metric}
    if kind != "image_classification":
        task_info["max_length"] = cfg.data.max_length  # what the served tokenizer truncates to
    if kind == "regression":
        task_info["target"] = cfg.data.label_field

    history: dict[str, list] = {"train": [], "val": []}
    best: dict[str, Any] = {"score": -math.inf, "step": None, "metrics": None}
    stale, step, stopped_early, t0 = 0, 0, False, time.time()
    history["val"].append({"step": 0, **evaluate(model, val_loader, device, data.label_names)})  # the baseline
    bar = None
    if cfg.progress_bar:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=f"finetune {kind}", unit="step")
    while step < total and not stopped_early:
        for batch in train_loader:
            batch = move_batch(batch, device)
            loss = model.loss(model(batch), batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if o.clip_grad:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], o.clip_grad)
            optimizer.step()
            scheduler.step()
            step += 1
            history["train"].append({"step": step, "loss": loss.item(), "lr": optimizer.param_groups[-1]["lr"]})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if step % eval_every == 0 or step == total:
                m = evaluate(model, val_loader, device, data.label_names)
                history["val"].append({"step": step, **m})
                if metric not in m:
                    raise ValueError(f"eval.metric {metric!r} is not computed for {kind} (have {', '.join(m)})")
                if sign * m[metric] > best["score"]:
                    best = {"score": sign * m[metric], "step": step, "metrics": m}
                    stale = 0
                    if cfg.save_best:
                        save_task_model(model, out_dir / "best", task_info=task_info, tokenizer=data.tokenizer_path,
                                        metrics={"step": step, **m}, source=source)
                else:
                    stale += 1
                    if cfg.eval.patience is not None and stale >= cfg.eval.patience:
                        stopped_early = True
                        break
            if step >= total:
                break
    if bar is not None:
        bar.close()
    report = {"config": cfg.model_dump(), "source": source, "params": counts, "kept_saved_head": kept_head,
              "steps": step, "stopped_early": stopped_early, "seconds": time.time() - t0, "metric": metric,
              "best_step": best["step"], "best": best["metrics"],
              "initial": history["val"][0], "history": history,
              "best_model": str(out_dir / "best") if cfg.save_best else None}
    write_report(out_dir, report, metric)
    return {**report, "model": model}
