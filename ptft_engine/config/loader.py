"""YAML + `key=value` overrides → a validated pydantic model, with one-line errors.

Overrides use dotted paths into the YAML tree (`train.lr=3e-4`, `deepspeed.zero_stage=3`);
the value is parsed as YAML so numbers, booleans, lists and `null` arrive typed, and
pydantic then coerces and checks it against the schema like any value from the file.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ptft_engine.errors import ConfigError, format_validation_error

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML (e.g. an unbalanced bracket): let the schema judge the string
    return key.split("."), value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    tree = copy.deepcopy(tree)
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[:i + 1])} is a value, not a section")
            node = child
        node[path[-1]] = value
    return tree


def validate(model: type[M], tree: dict[str, Any], source: str = "config") -> M:
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc, tree=tree)}") from None


def expand_includes(tree: dict[str, Any], base: Path) -> dict[str, Any]:
    """A section given as a path to a YAML file (`model: models/gpt2-tiny.yaml`) is that
    file's content; the path is relative to the recipe, else to the working directory."""
    out = dict(tree)
    for key, value in tree.items():
        if isinstance(value, str) and value.endswith((".yaml", ".yml")):
            target = next((p for p in (base / value, Path(value)) if p.is_file()), None)
            if target is None:
                raise ConfigError(f"{base}: {key}: included file {value} not found")
            out[key] = read_yaml(target)
    return out


def load_config(model: type[M], path: str | Path | None, overrides: list[str] | None = None) -> M:
    """Read `path` (or start empty), apply overrides, validate against `model`."""
    tree = expand_includes(read_yaml(path), Path(path).parent) if path is not None else {}
    tree = apply_overrides(tree, list(overrides or []))
    return validate(model, tree, str(path) if path is not None else "config")
