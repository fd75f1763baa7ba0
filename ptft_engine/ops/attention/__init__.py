"""Fused attention: reference.py (spec), triton.py, native.py (C++/CUDA), op.py (public).

This package shares its name with the public function `ptft_engine.ops.attention`, and
Python binds a subpackage onto its parent when it is first imported, replacing the lazy
function. So the package itself is callable and forwards to `op.attention`: whichever
object `ptft_engine.ops.attention` ends up being, `attention(q, k, v, ...)` works.
"""
from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, q, k, v, **kwargs):
        from ptft_engine.ops.attention.op import attention

        return attention(q, k, v, **kwargs)


def __getattr__(name: str):
    if name in ("attention", "AttentionFunction"):
        from ptft_engine.ops.attention import op

        return getattr(op, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _CallablePackage
