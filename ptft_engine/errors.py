"""Errors every package shares: ConfigError, and pydantic's report as one line naming the key.

It sits at the bottom of the import graph (pydantic only), so the config loader, the
model, objective and data schemas and fine-tuning all raise the same class with the
same wording, and none of them imports another to get it.
"""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class ConfigError(ValueError):
    """A config problem the user can fix; its message is one line naming the key."""


def _loc(loc: tuple, tree: Any, missing: bool) -> list[str]:
    # A discriminated union adds its tag (e.g. 'decoder') to the location: a part that is
    # not a key of the input mapping is such a tag, unless it is the missing key itself.
    # Without the input (tree=None) the location is kept as pydantic gave it.
    if tree is None:
        return [str(p) for p in loc]
    parts, node = [], tree
    for i, p in enumerate(loc):
        if isinstance(node, dict):
            last = i == len(loc) - 1
            if p in node and (last or isinstance(node[p], (dict, list))):
                node = node[p]
            elif not (last and missing):
                continue
        elif isinstance(node, list) and isinstance(p, int) and p < len(node):
            node = node[p]
        parts.append(str(p))
    return parts


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_error(exc: ValidationError, prefix: str = "", tree: Any = None) -> str:
    """Pydantic's multi-line report -> 'key: problem; key: problem', keys as dotted paths
    under `prefix`. `tree` is the validated input: with it, union tags leave the paths."""
    parts = []
    for err in exc.errors(include_url=False):
        key = ".".join(([prefix] if prefix else []) + _loc(err["loc"], tree, err["type"] == "missing"))
        kind, ctx = err["type"], err.get("ctx") or {}
        if kind == "extra_forbidden":
            problem = "unknown key"
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            field = str(ctx.get("discriminator", "")).strip("'") or "kind"
            key = f"{key}.{field}" if key else field
            tags = str(ctx.get("expected_tags", "")).replace("'", "")
            problem = f"must be one of {tags}, got {ctx.get('tag')!r}" if kind == "union_tag_invalid" else "missing"
        elif kind == "value_error":  # a validator's own words; "field: why" names the field
            problem = err["msg"].removeprefix("Value error, ")
            field, sep, rest = problem.partition(": ")
            if sep and field.isidentifier():
                key, problem = (f"{key}.{field}" if key else field), rest
        elif kind == "missing":
            problem = "missing"
        else:
            problem = f"{err['msg']} (got {_shown(err['input'])})"
        parts.append(f"{key}: {problem}" if key else problem)
    return "; ".join(parts)
