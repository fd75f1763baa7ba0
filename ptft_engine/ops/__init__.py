"""Fused kernels with one public function per op; see registry.py for backend choice.

    attention(q, k, v, *, causal, attention_mask, segment_ids, scale, backend)
    mlm_mask(input_ids, *, seed, sample_ids, ..., backend)
    contrastive_loss(a, b, logit_scale, *, symmetric, chunk_size, group, backend)
    nt_xent_loss(z1, z2, temperature, *, chunk_size, group, backend)

The op modules import only torch and their reference code; Triton and the compiled
extension load when a backend first needs them. The functions are bound here eagerly:
a subpackage of the same name (ops/attention/) would otherwise shadow its function.
"""
from ptft_engine.ops.attention.op import attention
from ptft_engine.ops.contrastive.op import contrastive_loss, nt_xent_loss
from ptft_engine.ops.mlm.op import mlm_mask
from ptft_engine.ops.registry import BackendUnavailable, set_default_backend, use_backend

__all__ = [
    "BackendUnavailable",
    "attention",
    "contrastive_loss",
    "mlm_mask",
    "nt_xent_loss",
    "set_default_backend",
    "use_backend",
]
