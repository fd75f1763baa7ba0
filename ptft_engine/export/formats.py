"""Which layout a model config exports to, and which one an existing config.json is in."""
from __future__ import annotations

from typing import Any

from ptft_engine.export.errors import ExportError
from ptft_engine.export.layout import Layout

NATIVE = "native"
FORMATS = ("auto", "hf", NATIVE)


def _hf_layouts() -> dict[str, type[Layout]]:
    """transformers model_type -> layout class (imported lazily: they import the model configs)."""
    from ptft_engine.export.hf_bert import BertLayout
    from ptft_engine.export.hf_gpt2 import GPT2Layout, LlamaLayout
    from ptft_engine.export.hf_vit import ViTLayout
    from ptft_engine.export.hf_wav2vec2 import Wav2Vec2Layout

    return {"bert": BertLayout, "gpt2": GPT2Layout, "llama": LlamaLayout, "vit": ViTLayout, "wav2vec2": Wav2Vec2Layout}


def _make(kind: str, cfg) -> Layout:
    cls = _hf_layouts()[kind]
    return cls(cfg.tie_word_embeddings) if kind in ("gpt2", "llama") else cls()


def layout_for(cfg, fmt: str = "auto") -> Layout | None:
    """The HF layout for `cfg`, or None for the native layout (engine names + engine config).
    A ViT goes to transformers' ViTModel only when asked (fmt="hf"): auto keeps it native,
    which also keeps settings ViTModel cannot hold (pooling)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == NATIVE:
        return None
    if cfg.arch == "encoder":
        return _make("bert", cfg)
    if cfg.arch == "decoder":
        return _make(cfg.style, cfg)
    if cfg.arch == "wav2vec2":
        return _make("wav2vec2", cfg)
    if cfg.arch == "vit" and fmt == "hf":
        return _make("vit", cfg)
    if fmt == "hf":
        raise ExportError(f"model arch {cfg.arch!r} has no Hugging Face layout here; use --format native")
    return None


def layout_of_config(config: dict[str, Any], source: str) -> tuple[Layout | None, Any]:
    """config.json contents -> (layout or None for native, engine model config)."""
    from pydantic import ValidationError

    from ptft_engine.errors import ConfigError, format_validation_error
    from ptft_engine.models import parse_model_config

    if config.get("ptft_format") == NATIVE:
        try:
            return None, parse_model_config(config.get("model"), prefix=f"{source}: model")
        except ConfigError as exc:
            raise ExportError(str(exc)) from None
    kind = config.get("model_type")
    layouts = _hf_layouts()
    if kind not in layouts:
        raise ExportError(f"{source}: model_type {kind!r} is not importable (supported: {', '.join(layouts)}, "
                          "or a ptft native export)")
    try:
        cfg = layouts[kind]().engine_config(config, source)
    except (TypeError, KeyError) as exc:
        raise ExportError(f"{source}: incomplete {kind} config ({exc.__class__.__name__}: {exc})") from None
    except ValidationError as exc:
        raise ExportError(f"{source}: {kind} config does not fit the engine: {format_validation_error(exc)}") from None
    return _make(kind, cfg), cfg
