"""Fine-tuned task heads <-> transformers task classes.

A fine-tuned model is an engine backbone plus the head of finetune.TaskModel:
  pooler.{weight,bias}  encoder sequence tasks pooled at [CLS]: tanh(dense(h[CLS])), BERT's pooler
  head.{weight,bias}    the output projection (decoder sequence tasks: no bias, as transformers' `score`)
  projector.{weight,bias}  audio classification: frames mean-pooled, then projected (no activation)
                        to classifier_proj_size before `head`: Wav2Vec2ForSequenceClassification's projector
Where a transformers class computes exactly what TaskModel does, the head is written under
that class's names into the model's safetensors, and config.json names the class with
id2label / label2id, so `AutoModelFor*.from_pretrained` serves it. Where none does (mean
pooling, a native export, a decoder without a pad token), the head goes to head.safetensors
and task.json says why; `ptft_engine.finetune.load_task_model` reads both forms.

Decoder sequence tasks: transformers pools the rightmost token that is not pad_token_id,
TaskModel the rightmost token its attention mask keeps; the same token whenever the
tokenizer has a pad token of its own (ours always do: [PAD]), which is why one is required.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TASK_FILE = "task.json"
HEAD_FILE = "head.safetensors"
METRICS_FILE = "metrics.json"
SEQUENCE_TASKS = ("sequence_classification", "regression", "audio_classification")  # one label per input


@dataclass
class TaskHead:
    architecture: str | None            # the transformers class; None: only ptft reproduces the head
    rules: dict[str, str] = field(default_factory=dict)  # engine head module -> transformers module
    backbone_prefix: str = ""           # prepended to the backbone's names (ViTForImageClassification: "vit.")
    reason: str = ""                    # why no transformers class fits, when architecture is None

    def to_target(self, name: str) -> str | None:
        module, _, rest = name.partition(".")
        return f"{self.rules[module]}.{rest}" if module in self.rules else None

    def from_target(self, name: str) -> str | None:
        for ours, theirs in self.rules.items():
            if name.startswith(theirs + "."):
                return ours + name[len(theirs):]
        return None


def _native(reason: str) -> TaskHead:
    return TaskHead(None, reason=reason)


def task_head(model_cfg, task: dict[str, Any], hf_layout: bool, pad_token_id: int | None = None,
              eos_token_id: int | None = None) -> TaskHead:
    """Which transformers class reproduces `task` (task.json contents) on this backbone."""
    kind, pooling = task["kind"], task.get("pooling", "cls")
    arch = model_cfg.arch
    if not hf_layout:
        return _native("the backbone is exported in the native layout (--format native)")
    if arch == "encoder":
        if kind == "token_classification":
            return TaskHead("BertForTokenClassification", {"head": "classifier"})
        if pooling != "cls":
            return _native(f"pooling={pooling!r}: BertForSequenceClassification pools [CLS] only")
        return TaskHead("BertForSequenceClassification", {"pooler": "bert.pooler.dense", "head": "classifier"})
    if arch == "decoder":
        style = "GPT2" if model_cfg.style == "gpt2" else "Llama"
        if kind == "token_classification":
            return TaskHead(f"{style}ForTokenClassification", {"head": "classifier" if style == "GPT2" else "score"})
        if pooling == "mean":  # "cls" asked of a decoder pools its last token (finetune.tasks)
            return _native(f"pooling={pooling!r}: {style}ForSequenceClassification pools the last token only")
        if pad_token_id is None or pad_token_id == eos_token_id:
            return _native("the tokenizer has no pad token of its own: transformers would pool a different token")
        return TaskHead(f"{style}ForSequenceClassification", {"head": "score"})
    if arch == "vit":
        if pooling != "cls":
            return _native(f"pooling={pooling!r}: ViTForImageClassification classifies the [CLS] token only")
        return TaskHead("ViTForImageClassification", {"head": "classifier"}, backbone_prefix="vit.")
    if arch == "wav2vec2" and kind == "audio_classification":
        return TaskHead("Wav2Vec2ForSequenceClassification", {"projector": "projector", "head": "classifier"},
                        backbone_prefix="wav2vec2.")
    return _native(f"no transformers task class for a {arch} backbone")


def task_config(head: TaskHead, task: dict[str, Any], pad_token_id: int | None) -> dict[str, Any]:
    """config.json entries of the transformers task class."""
    if head.architecture is None:
        return {}
    labels = task.get("labels") or [task.get("target") or "value"]
    out: dict[str, Any] = {"architectures": [head.architecture],
                           "id2label": {str(i): name for i, name in enumerate(labels)},
                           "label2id": {name: i for i, name in enumerate(labels)}}
    if task["kind"] in SEQUENCE_TASKS:
        out["problem_type"] = "regression" if task["kind"] == "regression" else "single_label_classification"
    if pad_token_id is not None:
        out["pad_token_id"] = pad_token_id
    if task.get("classifier_proj_size"):  # the projector's width (transformers' default is 256)
        out["classifier_proj_size"] = task["classifier_proj_size"]
    return out
