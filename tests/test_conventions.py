"""Conventions that live once: imports run one way (no cycles, also through function-local
imports), fine-tuning reads its config with the engine's loader and needs no DeepSpeed."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from ptft_engine import config, errors, models
from ptft_engine.finetune import load_finetune_config

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ptft_engine"
# ops/contrastive (op.py <-> distributed.py) is being untangled separately (issue 11)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file (`from pkg import mod`
    counts as mod, `from mod import name` as mod)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                            for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycles():
    graph = _import_graph()
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph))


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    graph["c"] = set()
    assert _find_cycle(graph) is None


def test_one_config_error_and_one_wording_for_every_config(tmp_path):
    assert config.ConfigError is models.ConfigError is errors.ConfigError
    recipe = REPO / "configs" / "finetune" / "sentiment.yaml"
    with pytest.raises(errors.ConfigError) as info:
        load_finetune_config(recipe, ["optim.lrr=1"])
    assert str(info.value) == f"{recipe}: optim.lrr: unknown key"
    with pytest.raises(errors.ConfigError) as info:
        config.load_run_config(REPO / "configs" / "clm_tiny.yaml", ["train.lrr=1"])
    assert str(info.value) == f"{REPO / 'configs' / 'clm_tiny.yaml'}: train.lrr: unknown key"
    with pytest.raises(errors.ConfigError, match="override 'optim.lr.x=1': optim.lr is a value, not a section"):
        load_finetune_config(recipe, ["optim.lr=1e-4", "optim.lr.x=1"])
    assert load_finetune_config(recipe, ["optim.lr=2e-4", "eval.patience=null"]).optim.lr == 2e-4


def test_finetune_needs_no_deepspeed():
    code = ("import sys; from ptft_engine.finetune import finetune, load_finetune_config; "
            "import ptft_engine.finetune.loop; "
            f"load_finetune_config({str(REPO / 'configs/finetune/sentiment.yaml')!r}); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'deepspeed'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
