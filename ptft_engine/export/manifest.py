"""manifest.json: where an export came from and the sha256 of every file in it.

Written last, so an export without a manifest is incomplete; the loader verifies every
listed file before reading a tensor, so a corrupted or swapped file is a clear error.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from ptft_engine.data.index import sha256_file
from ptft_engine.export.errors import ExportError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def write_manifest(out_dir: Path, files: list[str], info: dict[str, Any]) -> dict[str, Any]:
    manifest = {
        "format": "ptft_engine export",
        "format_version": FORMAT_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **info,
        "files": {name: {"sha256": sha256_file(out_dir / name), "bytes": (out_dir / name).stat().st_size}
                  for name in sorted(set(files))},
    }
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    tmp.replace(out_dir / MANIFEST)
    return manifest


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        manifest["files"]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{path}: not a valid manifest ({exc.__class__.__name__}: {exc})") from None
    return manifest


def verify(directory: Path) -> dict[str, Any] | None:
    """Check every file the manifest lists; returns the manifest (None if there is none)."""
    manifest = read_manifest(directory)
    if manifest is None:
        return None
    for name, entry in manifest["files"].items():
        path = directory / name
        if Path(name).name != name:
            raise ExportError(f"{directory / MANIFEST}: file entry {name!r} points outside the export")
        if not path.is_file():
            raise ExportError(f"{path}: listed in the manifest but missing")
        if path.stat().st_size != entry.get("bytes", path.stat().st_size):
            raise ExportError(f"{path}: size {path.stat().st_size} != {entry['bytes']} in the manifest "
                              "(truncated or changed)")
        if sha256_file(path) != entry["sha256"]:
            raise ExportError(f"{path}: sha256 mismatch with the manifest (corrupted or changed after export)")
    return manifest
