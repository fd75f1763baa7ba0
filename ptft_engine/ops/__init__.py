"""Fused kernels with one public function per op; see registry.py for backend choice.

    attention(q, k, v, *, causal, key_padding_mask, segment_ids, scale, backend)
    mlm_mask(input_ids, *, seed, sample_ids, ..., backend)
    contrastive_loss(a, b, logit_scale, *, symmetric, chunk_size, group, backend)
    nt_xent_loss(z1, z2, temperature, *, chunk_size, group, backend)

Imported lazily so that `import ptft_engine.ops` pulls in neither Triton nor the
extension until an op is used.
"""
from __future__ import annotations

import importlib

from ptft_engine.ops.registry import BackendUnavailable, set_default_backend, use_backend

_PUBLIC = {
    "attention": "ptft_engine.ops.attention.op",
    "mlm_mask": "ptft_engine.ops.mlm.op",
    "contrastive_loss": "ptft_engine.ops.contrastive.op",
    "nt_xent_loss": "ptft_engine.ops.contrastive.op",
}

__all__ = ["BackendUnavailable", "set_default_backend", "use_backend", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'ptft_engine.ops' has no attribute {name!r}")
