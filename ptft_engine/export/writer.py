"""Write an export directory: weights (safetensors, sharded above a threshold),
config.json, tokenizer files, extra files, and manifest.json (written last).

`export_tensors` takes an iterator of (engine name, tensor), so a live model and a
ZeRO checkpoint being consolidated go through the same streaming path.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Iterable

import torch

from ptft_engine.export.errors import ExportError
from ptft_engine.export.formats import NATIVE, layout_for
from ptft_engine.export.manifest import MANIFEST, sha256_json, write_manifest
from ptft_engine.export.safetensors_io import ShardedWriter, parse_size

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt")
_SPECIAL_ROLES = {"pad_token": ["[PAD]", "<pad>"], "unk_token": ["[UNK]", "<unk>"], "cls_token": ["[CLS]"],
                  "sep_token": ["[SEP]"], "mask_token": ["[MASK]", "<mask>"],
                  "bos_token": ["<bos>", "<s>", "<|endoftext|>"], "eos_token": ["<eos>", "</s>", "<|endoftext|>"]}


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


def copy_tokenizer(src: str | Path | None, out_dir: Path) -> list[str]:
    """Copy tokenizer files; add a tokenizer_config.json so AutoTokenizer can load tokenizer.json."""
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
    if "tokenizer.json" in copied:
        _ensure_post_processor(out_dir / "tokenizer.json")
    if "tokenizer.json" in copied and "tokenizer_config.json" not in copied:
        model = json.loads((out_dir / "tokenizer.json").read_text()).get("model", {})
        vocab = model.get("vocab", {}) if isinstance(model.get("vocab"), dict) else {}
        cfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
        if model.get("type") == "WordPiece":  # BERT-style: sentence pairs carry token type ids
            cfg["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
        for role, names in _SPECIAL_ROLES.items():
            found = next((n for n in names if n in vocab), None)
            if found:
                cfg[role] = found
        (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
        copied.append("tokenizer_config.json")
    if not copied:
        log.warning("no tokenizer files found at %s; export has none", src)
    return copied


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
    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
    extra_json: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Stream engine-named tensors into an export; returns the manifest."""
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    out_dir = Path(out_dir)
    layout = layout_for(model_cfg, fmt)
    _prepare_out_dir(out_dir, overwrite)
    writer = ShardedWriter(out_dir, parse_size(max_shard_size), DTYPES[dtype])
    count = 0
    for name, tensor in tensors:
        pairs = [(name, tensor)] if layout is None else layout.to_target(name, tensor)
        for target, t in pairs:
            writer.add(target, t)
        count += 1
    files = writer.close()
    if layout is None:
        config = {"ptft_format": NATIVE, "model": model_cfg.model_dump()}
    else:
        config = {**layout.target_config(model_cfg), "torch_dtype": str(DTYPES[dtype]).removeprefix("torch."),
                  "dtype": str(DTYPES[dtype]).removeprefix("torch.")}
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    files.append("config.json")
    files += copy_tokenizer(tokenizer, out_dir)
    for name, tensor_dict in (extra_tensors or {}).items():
        from safetensors.torch import save_file
        save_file({k: v.detach().contiguous().clone() for k, v in tensor_dict.items()}, str(out_dir / name))
        files.append(name)
    for name, obj in (extra_json or {}).items():
        (out_dir / name).write_text(json.dumps(obj, indent=1, default=str))
        files.append(name)
    info = {
        "layout": NATIVE if layout is None else layout.name,
        "dtype": dtype,
        "num_source_tensors": count,
        "model_config": model_cfg.model_dump(),
        "config_sha256": sha256_json(model_cfg.model_dump()),
        "tied_weights": {} if layout is None else dict(layout.tied),
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
