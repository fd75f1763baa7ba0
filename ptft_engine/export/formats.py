"""Which layout a model config exports to, and which one an existing config.json is in."""
from __future__ import annotations

from typing import Any

from ptft_engine.export.errors import ExportError
from ptft_engine.export.layout import Layout

NATIVE = "native"
FORMATS = ("auto", "hf", NATIVE)


def layout_for(cfg, fmt: str = "auto") -> Layout | None:
    """The HF layout for `cfg`, or None for the native layout (engine names + engine config)."""
    from ptft_engine.export.hf_bert import BertLayout
    from ptft_engine.export.hf_gpt2 import GPT2Layout, LlamaLayout

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == NATIVE:
        return None
    if cfg.arch == "encoder":
        return BertLayout()
    if cfg.arch == "decoder":
        return GPT2Layout(cfg.tie_word_embeddings) if cfg.style == "gpt2" else LlamaLayout(cfg.tie_word_embeddings)
    if fmt == "hf":
        raise ExportError(f"model arch {cfg.arch!r} has no Hugging Face layout here; use --format native")
    return None


def layout_of_config(config: dict[str, Any], source: str) -> tuple[Layout | None, Any]:
    """config.json contents -> (layout or None for native, engine model config)."""
    from ptft_engine.export.hf_bert import BertLayout
    from ptft_engine.export.hf_gpt2 import GPT2Layout, LlamaLayout
    from pydantic import ValidationError

    from ptft_engine.models import ConfigError, format_validation_error, parse_model_config

    if config.get("ptft_format") == NATIVE:
        try:
            return None, parse_model_config(config.get("model"), prefix=f"{source}: model")
        except ConfigError as exc:
            raise ExportError(str(exc)) from None
    kind = config.get("model_type")
    layouts = {"bert": BertLayout, "gpt2": GPT2Layout, "llama": LlamaLayout}
    if kind not in layouts:
        raise ExportError(f"{source}: model_type {kind!r} is not importable (supported: bert, gpt2, llama, "
                          "or a ptft native export)")
    try:
        cfg = layouts[kind]().engine_config(config, source)
    except (TypeError, KeyError) as exc:
        raise ExportError(f"{source}: incomplete {kind} config ({exc.__class__.__name__}: {exc})") from None
    except ValidationError as exc:
        raise ExportError(f"{source}: {kind} config does not fit the engine: {format_validation_error(exc)}") from None
    layout = layouts[kind]() if kind == "bert" else layouts[kind](cfg.tie_word_embeddings)
    return layout, cfg
