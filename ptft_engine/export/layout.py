"""A layout maps engine parameter names (and configs) to another format's, tensor by tensor.

Rules are module-prefix pairs with `{i}` for the block index, e.g.
("layers.{i}.attn.q_proj", "bert.encoder.layer.{i}.attention.self.query"); the suffix
(`.weight`, `.bias`) is carried over. A layer may transpose 2-D weights (GPT-2's Conv1D).
Working one tensor at a time lets ZeRO consolidation stream straight into the writer.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from ptft_engine.export.errors import ExportError


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile(f"^{pattern}(?P<rest>(\\..+)?)$")


class Layout:
    """Subclasses set `name`, `rules`, `transposed` (target prefixes whose 2-D weights are
    stored transposed), `tied` (target names left out: they are tied to another tensor),
    `ignore` (source-name patterns an import may skip) and implement the config maps."""

    name = ""
    rules: list[tuple[str, str]] = []
    transposed: tuple[str, ...] = ()
    tied: dict[str, str] = {}
    ignore: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._fwd = [(_compile(e), h) for e, h in self.rules]
        self._bwd = [(_compile(h), e) for e, h in self.rules]
        self._ignore = [re.compile(p) for p in self.ignore]

    @staticmethod
    def _apply(table, name: str) -> tuple[str, str] | None:
        for regex, template in table:
            m = regex.match(name)
            if m:
                prefix = template.replace("{i}", m.group("i")) if m.groupdict().get("i") is not None else template
                return prefix, m.group("rest")
        return None

    def _is_transposed(self, target_prefix: str, source_prefix: str, rest: str) -> bool:
        probe = re.sub(r"\.\d+\.", ".{i}.", target_prefix)
        probe2 = re.sub(r"\.\d+\.", ".{i}.", source_prefix)
        return rest == ".weight" and (probe in self.transposed or probe2 in self.transposed)

    # ------------------------------------------------------------------ tensors
    def to_target(self, name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        hit = self._apply(self._fwd, name)
        if hit is None:
            raise ExportError(f"tensor {name!r} has no place in the {self.name} layout")
        prefix, rest = hit
        target = prefix + rest
        if target in self.tied:
            return []
        if self._is_transposed(prefix, name[: len(name) - len(rest)], rest) and tensor.dim() == 2:
            tensor = tensor.t()
        return [(target, tensor)]

    def from_target(self, name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """Target-format name -> engine name; [] for tensors an import skips."""
        name = self.normalise_import_name(name)
        if name in self.tied or any(p.search(name) for p in self._ignore):
            return []
        hit = self._apply(self._bwd, name)
        if hit is None:
            raise ExportError(f"tensor {name!r} does not belong to a {self.name} model this engine can load")
        prefix, rest = hit
        if self._is_transposed(name[: len(name) - len(rest)], prefix, rest) and tensor.dim() == 2:
            tensor = tensor.t()
        return [(prefix + rest, tensor)]

    def normalise_import_name(self, name: str) -> str:
        return name

    # ------------------------------------------------------------------ configs
    def target_config(self, cfg: Any) -> dict[str, Any]:
        raise NotImplementedError

    def engine_config(self, target: dict[str, Any]) -> Any:
        raise NotImplementedError

    def architectures(self, config: dict[str, Any], written: set[str]) -> list[str]:
        """config.json's `architectures` for the tensors actually written (a class whose
        weights are all there, so transformers initialises nothing at random)."""
        return config["architectures"]

    def extra_json(self, cfg: Any) -> dict[str, Any]:
        """Other JSON files transformers reads beside config.json (file name -> contents)."""
        return {}

    def build_kwargs(self, names: set[str]) -> dict[str, Any]:
        """Extra keyword arguments for the engine model, decided by which tensors exist."""
        return {}


def expect(cfg: dict[str, Any], key: str, allowed, source: str) -> None:
    value = cfg.get(key, allowed[0])
    if value not in allowed:
        raise ExportError(f"{source}: {key}={value!r} is not supported (supported: {', '.join(map(repr, allowed))})")
