"""Write an export directory: weights (safetensors, sharded above a threshold),
config.json, tokenizer files, extra files, and manifest.json (written last).

`export_tensors` takes an iterator of (engine name, tensor), so a live model and a
ZeRO checkpoint being consolidated go through the same streaming path.
"""
from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ptft_engine.data.tokenizer import role_tokens
from ptft_engine.export.errors import ExportError
from ptft_engine.export.formats import NATIVE, layout_for
from ptft_engine.export.manifest import MANIFEST, sha256_json, write_manifest
from ptft_engine.export.safetensors_io import ShardedWriter, parse_size

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ExportError(f"{out_dir}: output directory is not empty (pass --overwrite to replace it)")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _ensure_post_processor(path: Path) -> None:
    """Tokenizers trained before `ptft tokenizer train` set a post-processor lack one:
    give the exported copy BERT's template so transformers adds [CLS]/[SEP]."""
    from tokenizers import Tokenizer

    from ptft_engine.data.tokenizer import add_post_processor

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise ExportError(f"{path}: not a readable tokenizer.json ({exc})") from None
    if add_post_processor(tok):
        tok.save(str(path))
        log.info("%s: added the [CLS] $A [SEP] post-processor the tokenizer lacked", path)


def special_tokens(out_dir: Path) -> dict[str, tuple[str, int]]:
    """role ("pad_token", "eos_token" ...) -> (token, id) in the exported tokenizer.json."""
    path = out_dir / "tokenizer.json"
    if not path.is_file():
        return {}
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
    return {f"{role}_token": (name, vocab[name]) for role, name in role_tokens(vocab, own_only=True).items()
            if name is not None}


def _set_post_processor(path: Path, task: dict | None) -> None:
    """The special tokens transformers' tokenizer adds must be the ones the model saw.
    A fine-tuned decoder saw `text <eos>` (finetune.data pools at the last token); a
    pre-trained decoder's prompts must not end in <eos>, so no template is kept."""
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_file(str(path))
    eos = role_tokens(tok.get_vocab(with_added_tokens=True), own_only=True)["eos"]
    if task is not None and eos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B:1 {eos}:1", special_tokens=[(eos, tok.token_to_id(eos))])
    elif type(tok.post_processor).__name__ in ("TemplateProcessing", "BertProcessing", "RobertaProcessing"):
        tok.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1", special_tokens=[])
    else:
        return
    tok.save(str(path))


def copy_tokenizer(src: str | Path | None, out_dir: Path, model_cfg=None, task: dict | None = None) -> list[str]:
    """Copy tokenizer files and write the tokenizer_config.json transformers reads: the
    special tokens, model_max_length (so truncation=True truncates), the padding side
    (left for decoders, so batched generation pads before the prompt) and the inputs
    the model takes (no token_type_ids for decoders: GPT-2 would add them as embeddings)."""
    if src is None:
        return []
    src = Path(src)
    src_dir = src.parent if src.is_file() else src
    copied = []
    if src.is_file() and src.suffix == ".json":
        shutil.copyfile(src, out_dir / "tokenizer.json")
        copied.append("tokenizer.json")
    for name in TOKENIZER_FILES:
        if name not in copied and (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, out_dir / name)
            copied.append(name)
    if not copied:
        log.warning("no tokenizer files found at %s; export has none", src)
        return []
    arch = getattr(model_cfg, "arch", None)
    if "tokenizer.json" in copied:
        _ensure_post_processor(out_dir / "tokenizer.json")
        if arch == "decoder":
            _set_post_processor(out_dir / "tokenizer.json", task)
    cfg_path = out_dir / "tokenizer_config.json"
    cfg: dict[str, Any] = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if "tokenizer.json" in copied:
        cfg.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        for role, (name, _) in special_tokens(out_dir).items():
            cfg.setdefault(role, name)
    if arch in ("encoder", "decoder"):
        limit = model_cfg.max_position_embeddings
        if task is not None and task.get("max_length"):
            limit = min(limit, int(task["max_length"]))  # what fine-tuning truncated to
        cfg["model_max_length"] = limit
        # a fine-tuned decoder was trained right-padded (GPT-2's positions are absolute)
        cfg["padding_side"] = "left" if arch == "decoder" and task is None else "right"
        types = arch == "encoder" and model_cfg.type_vocab_size > 0
        cfg["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"] if types else \
            ["input_ids", "attention_mask"]
    cfg_path.write_text(json.dumps(cfg, indent=1))
    if "tokenizer_config.json" not in copied:
        copied.append("tokenizer_config.json")
    return copied


def _decoder_ids(model_cfg, special: dict[str, int]) -> dict[str, Any]:
    """config.json / generation_config.json ids: `generate` stops at <eos> and pads with [PAD]."""
    return {"bos_token_id": special.get("bos_token"), "eos_token_id": special.get("eos_token"),
            "pad_token_id": special.get("pad_token")}


def _identity_pooler(cfg) -> dict[str, torch.Tensor]:
    """ViTModel always builds a pooler (tanh(dense(h[CLS]))); the engine ViT pools the [CLS]
    state as it is. An identity dense with pooler_act="linear" makes pooler_output exactly that."""
    return {"pooler.dense.weight": torch.eye(cfg.hidden_size), "pooler.dense.bias": torch.zeros(cfg.hidden_size)}


def export_tensors(
    tensors: Iterable[tuple[str, torch.Tensor]],
    model_cfg,
    out_dir: str | Path,
    *,
    fmt: str = "auto",
    dtype: str = "fp32",
    max_shard_size: str | int = "2GB",
    tokenizer: str | Path | None = None,
    source: dict[str, Any] | None = None,
    task: dict[str, Any] | None = None,
    head: dict[str, torch.Tensor] | None = None,
    extra_json: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Stream engine-named tensors into an export; returns the manifest.

    A fine-tuned model passes `task` (task.json contents) and `head` (TaskModel's head
    tensors, engine names): they are saved as the transformers task class where one
    reproduces the head (see task_heads), otherwise as head.safetensors."""
    from ptft_engine.export.task_heads import HEAD_FILE, TASK_FILE, task_config, task_head

    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    out_dir = Path(out_dir)
    if task is not None and fmt == "auto" and model_cfg.arch == "vit" and model_cfg.pooling == "cls":
        fmt = "hf"  # a fine-tuned ViT becomes ViTForImageClassification
    layout = layout_for(model_cfg, fmt)
    native_why = None
    if task is not None and fmt == "auto" and layout is not None:
        try:  # a backbone transformers cannot hold (e.g. no token types) saves natively
            layout.target_config(model_cfg)
        except ExportError as exc:
            layout, native_why = None, str(exc).split(";")[0]
    _prepare_out_dir(out_dir, overwrite)
    files = copy_tokenizer(tokenizer, out_dir, model_cfg, task)  # first: config.json needs its special ids
    special = {role: i for role, (_, i) in special_tokens(out_dir).items()}
    decoder_ids = _decoder_ids(model_cfg, special) if model_cfg.arch == "decoder" else {}
    th = None
    if task is not None:
        th = task_head(model_cfg, task, layout is not None, decoder_ids.get("pad_token_id"),
                       decoder_ids.get("eos_token_id"))
        if native_why:
            th.reason = native_why
    prefix = th.backbone_prefix if th is not None and th.architecture else ""
    writer = ShardedWriter(out_dir, parse_size(max_shard_size), DTYPES[dtype])
    count, written = 0, set()
    for name, tensor in tensors:
        pairs = [(name, tensor)] if layout is None else layout.to_target(name, tensor)
        for target, t in pairs:
            writer.add(prefix + target, t)
            written.add(target)
        count += 1
        tensor = pairs = t = None  # the writer has the bytes: let the tensor go before the next is built
    vit_pooler = layout is not None and model_cfg.arch == "vit" and th is None
    if vit_pooler:
        for target, t in _identity_pooler(model_cfg).items():
            writer.add(target, t)
    if th is not None and th.architecture:
        for name, t in (head or {}).items():
            writer.add(th.to_target(name), t)
    files += writer.close()
    if th is not None and not th.architecture:
        from safetensors.torch import save_file

        save_file({k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in (head or {}).items()},
                  str(out_dir / HEAD_FILE))
        files.append(HEAD_FILE)
    if layout is None:
        config = {"ptft_format": NATIVE, "model": model_cfg.model_dump()}
    else:
        config = layout.target_config(model_cfg)
        config = {**config, "architectures": layout.architectures(config, written), **decoder_ids,
                  "torch_dtype": str(DTYPES[dtype]).removeprefix("torch."),
                  "dtype": str(DTYPES[dtype]).removeprefix("torch.")}
        if vit_pooler:
            config["pooler_act"] = "linear"
        if th is not None:
            config.update(task_config(th, task, decoder_ids.get("pad_token_id")))
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    files.append("config.json")
    if layout is not None and model_cfg.arch == "decoder" and task is None:
        gen = {k: v for k, v in decoder_ids.items() if v is not None}
        (out_dir / "generation_config.json").write_text(json.dumps({**gen, "_from_model_config": False}, indent=1))
        files.append("generation_config.json")
    json_files = {**({} if layout is None else layout.extra_json(model_cfg)), **(extra_json or {})}
    if task is not None:
        json_files[TASK_FILE] = {**task, "transformers_class": th.architecture,
                                 **({"transformers_class_why_none": th.reason} if not th.architecture else {})}
    for name, obj in json_files.items():
        (out_dir / name).write_text(json.dumps(obj, indent=1, default=str))
        files.append(name)
    info = {
        "layout": NATIVE if layout is None else layout.name,
        "dtype": dtype,
        "num_source_tensors": count,
        "model_config": model_cfg.model_dump(),
        "config_sha256": sha256_json(model_cfg.model_dump()),
        "tied_weights": {} if layout is None else dict(layout.tied),
        "task": None if th is None else {"kind": task["kind"], "transformers_class": th.architecture},
        "source": source or {},
    }
    manifest = write_manifest(out_dir, files, info)
    log.info("exported %d tensors to %s (%s, %s)", count, out_dir, info["layout"], dtype)
    return manifest


def unique_state(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """state_dict entries without tied aliases (lm_head.weight, mlm_head.decoder.weight are
    the embedding's Parameter under a second name): each tensor once, first name wins."""
    seen: set[int] = set()
    out = []
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            out.append((name, t.detach()))
    return out


def export_model(model: torch.nn.Module, out_dir: str | Path, **kwargs) -> dict[str, Any]:
    """Export a live engine model (its `.config` says which layout)."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "arch"):
        raise ExportError(f"{type(model).__name__} has no engine model config (.config with arch)")
    kwargs.setdefault("source", {"kind": "live model"})
    return export_tensors(unique_state(model), cfg, out_dir, **kwargs)


__all__ = ["DTYPES", "MANIFEST", "copy_tokenizer", "export_model", "export_tensors", "unique_state"]
