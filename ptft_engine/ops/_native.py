"""Loads the compiled extension ptft_engine._C once, remembering why it failed."""
from __future__ import annotations

from types import ModuleType

import torch  # noqa: F401  (loads libc10 etc. that _C links against)

_C: ModuleType | None
try:
    from ptft_engine import _C  # type: ignore[attr-defined]

    LOAD_ERROR: str | None = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    LOAD_ERROR = f"ptft_engine._C did not import ({exc}); rebuild with `pip install --no-build-isolation -e .`"


def native() -> ModuleType:
    if _C is None:
        raise RuntimeError(LOAD_ERROR)
    return _C


def cuda_built() -> bool:
    return _C is not None and bool(getattr(_C, "cuda_built", False))
