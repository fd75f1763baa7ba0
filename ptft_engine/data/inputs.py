"""The files named by `ptft shard` inputs: a file, a directory (recursively) or a glob."""
from __future__ import annotations

import glob
import os


def expand_inputs(inputs: list[str], exts: tuple[str, ...] | None = None) -> list[str]:
    """Files of each input, sorted per input; a directory keeps only `exts` when given (a file
    or a glob is taken as named). A missing input, or one without files, is an error naming it."""
    files: list[str] = []
    for spec in inputs:
        if os.path.isdir(spec):
            found = sorted(p for p in glob.glob(os.path.join(spec, "**", "*"), recursive=True)
                           if os.path.isfile(p) and (exts is None or p.lower().endswith(exts)))
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        elif os.path.isfile(spec):
            found = [spec]
        else:
            raise FileNotFoundError(f"input {spec!r} does not exist")
        if not found:
            kind = f"files ending in {', '.join(exts)}" if exts else "files"
            raise FileNotFoundError(f"input {spec!r} contains no {kind}")
        files.extend(found)
    return files
