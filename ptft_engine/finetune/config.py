"""Typed fine-tuning config (YAML -> pydantic); unknown keys are a one-line error naming the key.

Read by the engine's config loader (ptft_engine.config.loader), so a fine-tuning recipe
takes the same `key=value` overrides and gives the same errors as a pre-training one."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ptft_engine.config.loader import load_config, validate
from ptft_engine.errors import ConfigError

TaskKind = Literal["sequence_classification", "token_classification", "regression", "image_classification",
                   "audio_classification"]
DEFAULT_METRIC = {"sequence_classification": "accuracy", "token_classification": "entity_f1",
                  "regression": "pearson", "image_classification": "accuracy", "audio_classification": "accuracy"}
MINIMISED = {"mse", "loss"}
SHARD_TASKS = ("image_classification", "sequence_classification", "regression", "audio_classification")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSection(_Section):
    pretrained: str | None = Field(None, description="export directory (ours or a transformers checkpoint)")
    config: dict[str, Any] | None = Field(None, description="engine model config: train from scratch")

    @model_validator(mode="after")
    def _one(self):
        if (self.pretrained is None) == (self.config is None):
            raise ValueError("give exactly one of model.pretrained (an export) or model.config (from scratch)")
        return self


class TaskSection(_Section):
    kind: TaskKind
    num_labels: int | None = Field(None, ge=1, description="default: from the labels in the data")
    labels: list[str] | None = None
    pooling: Literal["cls", "mean", "last"] = Field("cls", description="sequence pooling; a decoder takes cls as last")
    head_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    reinit_head: bool = Field(True, description="False keeps a saved head when its shape fits")
    label_all_subtokens: bool = Field(False, description="token tasks: label every sub-word, not just the first")


class DataSection(_Section):
    format: Literal["jsonl", "csv", "image_folder", "shards"] = Field(
        "jsonl", description="shards: `ptft shard --format images` output, `--format jsonl --label-field F` "
                             "output for text tasks, or `--format audio --manifest M` output for audio "
                             "(directory, index.json, tar, glob, brace range, http(s)/s3/gs URL or pipe:)")
    train: str
    validation: str | None = None
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="held out of train when no validation file")
    train_fraction: float = Field(1.0, gt=0.0, le=1.0, description="use only this share of the training labels")
    text_field: str = "text"
    text_pair_field: str | None = None
    label_field: str = "label"
    tokens_field: str = "tokens"
    tags_field: str = "tags"
    tokenizer: str | None = Field(None, description="default: tokenizer.json of the export")
    max_length: int = Field(128, ge=4)
    image_size: int | None = Field(None, ge=4, description="default: the model's image_size")


class LoRASection(_Section):
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[Literal["attn", "mlp"]] = Field(default_factory=lambda: ["attn"])


class StrategySection(_Section):
    kind: Literal["full", "partial", "linear_probe", "lora", "freeze_feature_encoder"] = Field(
        "full", description="freeze_feature_encoder: audio_classification only (wav2vec 2.0's conv stack frozen)")
    freeze_embeddings: bool = False
    freeze_layers: int = Field(0, ge=0, description="partial: freeze the lower N blocks")
    lora: LoRASection = Field(default_factory=LoRASection)


class OptimSection(_Section):
    lr: float = Field(5e-5, gt=0)
    head_lr: float | None = Field(None, gt=0, description="default: lr (probes and LoRA like a higher one)")
    layer_decay: float = Field(1.0, gt=0.0, le=1.0, description="layer-wise lr decay; 1 = off")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    clip_grad: float = Field(1.0, ge=0)
    batch_size: int = Field(16, ge=1)
    epochs: int = Field(3, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (overrides epochs)")


class EvalSection(_Section):
    metric: str | None = Field(None, description="early-stopping metric; default by task")
    every: int | None = Field(None, ge=1, description="evaluate every N steps; default once per epoch")
    patience: int | None = Field(3, ge=1, description="evaluations without improvement before stopping; null = never")
    batch_size: int = Field(64, ge=1)


class FinetuneConfig(_Section):
    model: ModelSection
    task: TaskSection
    data: DataSection
    strategy: StrategySection = Field(default_factory=StrategySection)
    optim: OptimSection = Field(default_factory=OptimSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output_dir: str = "finetune_out"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress_bar: bool = True
    save_best: bool = True

    @model_validator(mode="after")
    def _shards_fit_the_task(self):
        if self.data.format == "shards" and self.task.kind not in SHARD_TASKS:
            raise ValueError(f"data.format=shards needs task.kind {' or '.join(SHARD_TASKS)}, got {self.task.kind} "
                             "(shards hold one text and one label per sample; token tasks read jsonl or csv)")
        if self.data.format == "shards" and self.data.text_pair_field:
            raise ValueError("data.text_pair_field needs jsonl or csv: shards hold one text per sample")
        audio = self.task.kind == "audio_classification"
        if audio and self.data.format != "shards":
            raise ValueError("task.kind audio_classification reads audio shards: set data.format: shards "
                             "(ptft shard --format audio)")
        if audio and self.strategy.kind == "partial":
            raise ValueError("strategy.kind partial: audio_classification takes full, freeze_feature_encoder, "
                             "linear_probe or lora")
        if not audio and self.strategy.kind == "freeze_feature_encoder":
            raise ValueError(f"strategy.kind freeze_feature_encoder needs task.kind audio_classification, "
                             f"got {self.task.kind}")
        return self

    @property
    def metric(self) -> str:
        return self.eval.metric or DEFAULT_METRIC[self.task.kind]


def parse_finetune_config(data: Any, source: str = "config") -> FinetuneConfig:
    """A mapping of settings (e.g. built in code) -> FinetuneConfig; ConfigError naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of fine-tuning settings, got {type(data).__name__}")
    return validate(FinetuneConfig, data, source)


def load_finetune_config(path: str | Path | None, overrides: list[str] = ()) -> FinetuneConfig:
    """YAML file + dotted `key=value` overrides, read as `ptft pretrain` reads its recipe."""
    return load_config(FinetuneConfig, path, list(overrides))
