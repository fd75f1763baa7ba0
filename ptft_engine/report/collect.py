"""Find the runs under a folder and read their records (tolerating half-written lines)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PretrainRun:
    path: Path
    name: str
    train: list[dict] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)


@dataclass
class FinetuneRun:
    path: Path
    name: str
    report: dict


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a run killed mid-write leaves a partial last line
            continue
    return rows


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _skip(path: Path, root: Path) -> bool:
    # our own output and copies inside checkpoints are not runs
    return any(part in ("report", "checkpoints") for part in path.relative_to(root).parts[:-1])


def read_run_config(run_dir: Path) -> dict:
    """The resolved config a run saved (config.yaml, or config.json from older runs)."""
    path = run_dir / "config.yaml"
    if path.is_file():
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            data = None
        return data if isinstance(data, dict) else {}
    return _read_json(run_dir / "config.json") or {}


def find_pretrain_runs(root: Path) -> list[PretrainRun]:
    runs = []
    for metrics in sorted(root.rglob("metrics.jsonl")):
        if _skip(metrics, root):
            continue
        rows = read_jsonl(metrics)
        run = PretrainRun(metrics.parent, metrics.parent.name,
                          train=[r for r in rows if r.get("split", "train") == "train"],
                          eval=[r for r in rows if r.get("split") == "eval"],
                          config=read_run_config(metrics.parent))
        if run.train or run.eval:
            runs.append(run)
    return runs


def find_finetune_runs(root: Path) -> list[FinetuneRun]:
    runs = []
    for path in sorted(root.rglob("report.json")):
        if _skip(path, root):
            continue
        report = _read_json(path)
        if report and isinstance(report.get("history"), dict):
            runs.append(FinetuneRun(path.parent, path.parent.name, report))
    return runs


def find_comparisons(root: Path) -> list[tuple[str, dict]]:
    """(name, data) of each comparison.json / <what>_comparison.json at the top of root
    (a demo writes one per evidence table), comparison.json first."""
    found = []
    for path in sorted(root.glob("*comparison.json"), key=lambda p: (p.name != "comparison.json", p.name)):
        data = _read_json(path)
        if data and data.get("rows"):
            found.append((path.stem, data))
    return found
