"""Audio classification from a wav2vec 2.0 export: the task model is transformers'
Wav2Vec2ForSequenceClassification (projector to classifier_proj_size, mean over the real
frames, linear classifier) around the engine model's weights (read by load_export: sha256
checked, safetensors only, never the network). It is saved as every fine-tuned model is
(saved.save_task_model: the task class + task.json + metrics.json + manifest.json), so it is
served by AutoModelForAudioClassification with the export's feature extractor (16 kHz, each
clip normalised to zero mean and unit variance, the one that prepares the training batches
here) and read back by load_task_model.

    model, extractor = load_audio_classifier("exports/w2v", labels=["no", "yes"])
    counts = apply_audio_strategy(model, "freeze_feature_encoder")
    result = finetune_audio(model, extractor, train_clips, train_labels, val_clips, val_labels, out_dir="out")

Strategies: full; freeze_feature_encoder (the conv stack stays as pre-trained: transformers'
and fairseq's usual fine-tuning recipe); linear_probe (encoder frozen: projector and
classifier train); lora (encoder frozen, LoRA adapters on the attention, and optionally the
feed-forward, projections + the head; merged into the weights when saved).
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptft_engine.finetune.lora import apply_lora, merged_state_dict
from ptft_engine.finetune.metrics import classification_metrics

AUDIO_STRATEGIES = ("full", "freeze_feature_encoder", "linear_probe", "lora")
SAMPLING_RATE = 16000


def load_audio_classifier(pretrained: str | Path, labels: Sequence[str], **config_overrides):
    """(Wav2Vec2ForSequenceClassification with a fresh head, its feature extractor) from a
    wav2vec2 export (or any transformers wav2vec2 directory); see audio_classifier."""
    from ptft_engine.export import load_pretrained

    return audio_classifier(load_pretrained(pretrained), labels, **config_overrides)


def audio_classifier(backbone, labels: Sequence[str], **config_overrides):
    """The engine wav2vec 2.0 model `backbone` as transformers' task class with a fresh head,
    and the feature extractor its export has. config_overrides go to the transformers config,
    e.g. mask_time_prob=0.0 (no SpecAugment) or classifier_proj_size."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    from ptft_engine.export.formats import layout_for
    from ptft_engine.export.hf_state import to_hf_state_dict

    cfg = backbone.config
    if cfg.arch != "wav2vec2":
        raise ValueError(f"task.kind audio_classification needs a wav2vec 2.0 / HuBERT model, got a {cfg.arch} model")
    layout = layout_for(cfg, "hf")
    labels = [str(x) for x in labels]
    hf = {k: v for k, v in layout.target_config(cfg).items() if k != "model_type"}
    model = Wav2Vec2ForSequenceClassification(Wav2Vec2Config(**{
        **hf, "num_labels": len(labels), "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)}, **config_overrides}))
    if getattr(model.wav2vec2, "masked_spec_embed", None) is None:
        # without SpecAugment transformers builds no mask embedding; keep the pre-trained one
        # (unused, so untouched), so a save holds every weight an export has
        model.wav2vec2.masked_spec_embed = torch.nn.Parameter(torch.empty(cfg.hidden_size))
    model.wav2vec2.load_state_dict(to_hf_state_dict(backbone))  # strict: every weight has its place
    prep = layout.extra_json(cfg)["preprocessor_config.json"]
    extractor = Wav2Vec2FeatureExtractor(**{k: v for k, v in prep.items() if k != "feature_extractor_type"})
    return model, extractor


def apply_audio_strategy(model, kind: str, *, lora_r: int = 8, lora_alpha: float = 16.0, lora_dropout: float = 0.0,
                         lora_targets: Sequence[str] = ("attn",)) -> dict[str, int]:
    """Freeze / wrap a Wav2Vec2ForSequenceClassification in place; returns parameter counts."""
    if kind not in AUDIO_STRATEGIES:
        raise ValueError(f"strategy {kind!r}: choose one of {', '.join(AUDIO_STRATEGIES)}")
    if kind == "freeze_feature_encoder":
        model.freeze_feature_encoder()
    elif kind in ("linear_probe", "lora"):
        model.freeze_base_model()
    if kind == "lora":
        apply_lora(model.wav2vec2.encoder, lora_targets, lora_r, lora_alpha, lora_dropout)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total_params": total, "trainable_params": trainable}


def audio_batch(extractor, clips: Sequence[np.ndarray], labels: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Clips (1-D float arrays at 16 kHz) -> the model's inputs, as a server would make them."""
    batch = extractor([np.asarray(c, dtype=np.float32) for c in clips], sampling_rate=SAMPLING_RATE,
                      padding=True, return_tensors="pt")
    out = {"input_values": batch["input_values"]}
    if "attention_mask" in batch:
        out["attention_mask"] = batch["attention_mask"]
    if labels is not None:
        out["labels"] = torch.as_tensor(list(labels), dtype=torch.long)
    return out


@torch.no_grad()
def evaluate_audio(model, extractor, clips, labels, batch_size: int = 32) -> dict[str, float]:
    was_training = model.training
    model.eval()
    preds, loss_sum = [], 0.0
    for i in range(0, len(clips), batch_size):
        batch = audio_batch(extractor, clips[i:i + batch_size], labels[i:i + batch_size])
        out = model(**{k: v.to(model.device) for k, v in batch.items()})
        loss_sum += out.loss.item() * len(batch["labels"])
        preds += out.logits.argmax(-1).tolist()
    model.train(was_training)
    return {"loss": loss_sum / max(1, len(clips)),
            **classification_metrics(list(labels), preds, model.config.num_labels)}


def finetune_audio(model, extractor, train_clips, train_labels, val_clips, val_labels, *, lr: float = 1e-4,
                   head_lr: float | None = None, batch_size: int = 8, epochs: int = 10, max_steps: int | None = None,
                   warmup_ratio: float = 0.1, weight_decay: float = 0.0, clip_grad: float = 1.0, seed: int = 0,
                   out_dir: str | Path | None = None, strategy: str | None = None,
                   source: dict[str, Any] | None = None) -> dict[str, Any]:
    """AdamW with linear warmup and decay; evaluates once per epoch and keeps the best model
    (by validation accuracy) in out_dir/best (LoRA merged; see save_audio_classifier)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(("projector.", "classifier."))]
    body = [p for n, p in model.named_parameters()
            if p.requires_grad and not n.startswith(("projector.", "classifier."))]
    groups = [g for g in ({"params": body, "lr": lr}, {"params": head, "lr": head_lr or lr}) if g["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    steps_per_epoch = max(1, len(train_clips) // batch_size)
    total = max_steps or epochs * steps_per_epoch
    warmup = int(warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, 1 - (s - warmup) / max(1, total - warmup)))
    history = {"train": [], "val": [{"step": 0, **evaluate_audio(model, extractor, val_clips, val_labels)}]}
    best = {"accuracy": -math.inf, "step": None}
    model.train()
    step, t0 = 0, time.time()
    while step < total:
        order = rng.permutation(len(train_clips))
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            batch = audio_batch(extractor, [train_clips[j] for j in idx], [train_labels[j] for j in idx])
            loss = model(**{k: v.to(model.device) for k, v in batch.items()}).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad:
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], clip_grad)
            optimizer.step()
            scheduler.step()
            step += 1
            history["train"].append({"step": step, "loss": loss.item()})
            if step >= total:
                break
        metrics = evaluate_audio(model, extractor, val_clips, val_labels)
        history["val"].append({"step": step, **metrics})
        if metrics["accuracy"] > best["accuracy"]:
            best = {"step": step, **metrics}
            if out_dir is not None:
                save_audio_classifier(model, Path(out_dir) / "best", metrics={"step": step, **metrics},
                                      strategy=strategy, source=source)
    return {"best": best, "initial": history["val"][0], "history": history, "steps": step,
            "seconds": time.time() - t0}


def task_model_of(model):
    """The engine TaskModel that computes what the transformers model does (LoRA folded into
    the weights; the live model keeps its adapters): the export's renaming, backwards."""
    from ptft_engine.export.hf_wav2vec2 import Wav2Vec2Layout
    from ptft_engine.export.task_heads import task_head
    from ptft_engine.finetune.tasks import TaskModel
    from ptft_engine.models import build_model

    layout = Wav2Vec2Layout()
    cfg = layout.engine_config(model.config.to_dict())
    th = task_head(cfg, {"kind": "audio_classification"}, hf_layout=True)
    backbone, head = build_model(cfg), {}
    state = {}
    for name, tensor in merged_state_dict(model).items():
        ours = th.from_target(name)
        if ours is not None:
            head[ours] = tensor
        else:
            state.update(layout.from_target(name, tensor))  # drops the "wav2vec2." prefix
    backbone.load_state_dict(state)  # strict: the renaming covers every weight
    out = TaskModel(backbone, "audio_classification", model.config.num_labels,
                    projector_size=model.config.classifier_proj_size)
    out.load_head(head)
    return out.eval()


def save_audio_classifier(model, out_dir: str | Path, *, metrics: dict[str, Any] | None = None,
                          strategy: str | None = None, source: dict[str, Any] | None = None) -> Path:
    """Save as every fine-tuned model is saved (saved.save_task_model, atomic): the
    transformers task class with id2label, preprocessor_config.json, task.json, metrics.json
    and manifest.json."""
    from ptft_engine.finetune.saved import save_task_model

    c = model.config
    task_info = {"kind": "audio_classification", "num_outputs": c.num_labels,
                 "labels": [c.id2label[i] for i in range(c.num_labels)], "pooling": "mean",
                 "strategy": strategy, "metric": "accuracy", "classifier_proj_size": c.classifier_proj_size}
    return save_task_model(task_model_of(model), out_dir, task_info=task_info, metrics=metrics or {},
                           source=source)


def finetune_audio_from_config(cfg, device: torch.device) -> dict[str, Any]:
    """`ptft finetune` with task.kind audio_classification: labelled audio shards (`ptft shard
    --format audio --manifest`) -> the best model in output_dir/best, report.json and curves.png.
    Evaluates once per epoch; eval.every and eval.patience do not apply here."""
    from ptft_engine.finetune.backbone import load_backbone
    from ptft_engine.finetune.data import FinetuneDataError, read_records, split_records, subsample
    from ptft_engine.finetune.report import write_report

    d, o = cfg.data, cfg.optim
    backbone, _, source = load_backbone(cfg)  # first, as for every task: a wrong model.pretrained stops here
    if backbone.config.arch != "wav2vec2":
        raise FinetuneDataError(f"model: task.kind audio_classification needs a wav2vec 2.0 / HuBERT model, "
                                f"got a {backbone.config.arch} model")
    label_of = lambda r: str(r["label"])  # noqa: E731
    train = read_records(d.train, "shards")
    if d.validation:
        val = read_records(d.validation, "shards")
    else:
        train, val = split_records(train, d.val_fraction, cfg.seed, label_of)
    train = subsample(train, d.train_fraction, cfg.seed, label_of)
    if not train or not val or any("audio" not in r for r in train[:1] + val[:1]):
        raise FinetuneDataError(f"{d.train}: need audio shards with labels for a train/validation split "
                                f"({len(train)} train, {len(val)} validation records)")
    names = cfg.task.labels or sorted({label_of(r) for r in train + val})
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({label_of(r) for r in train + val} - set(index))
    if unknown:
        raise FinetuneDataError(f"{d.train}: labels {unknown} are not in task.labels {names}")
    model, extractor = audio_classifier(backbone, names)
    del backbone  # its weights are in the transformers model now
    other = {r.get("sample_rate") for r in train + val} - {None, extractor.sampling_rate}
    if other:
        raise FinetuneDataError(f"{d.train}: audio at {', '.join(map(str, sorted(other)))} Hz, but the model takes "
                                f"{extractor.sampling_rate} Hz; reshard with --sample-rate {extractor.sampling_rate}")
    lo = cfg.strategy.lora
    counts = apply_audio_strategy(model, cfg.strategy.kind, lora_r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                                  lora_targets=lo.targets)
    model.to(device)
    result = finetune_audio(
        model, extractor, [r["audio"] for r in train], [index[label_of(r)] for r in train],
        [r["audio"] for r in val], [index[label_of(r)] for r in val], lr=o.lr, head_lr=o.head_lr,
        batch_size=o.batch_size, epochs=o.epochs, max_steps=o.max_steps, warmup_ratio=o.warmup_ratio,
        weight_decay=o.weight_decay, clip_grad=o.clip_grad, seed=cfg.seed,
        out_dir=cfg.output_dir if cfg.save_best else None, strategy=cfg.strategy.kind, source=source)
    report = {"config": cfg.model_dump(), "source": source, "params": counts,
              "labels": names, "metric": "accuracy", "best_step": result["best"]["step"], "stopped_early": False,
              **result,
              "best_model": str(Path(cfg.output_dir) / "best") if cfg.save_best else None}
    write_report(cfg.output_dir, report, "accuracy")
    return {**report, "model": model}
