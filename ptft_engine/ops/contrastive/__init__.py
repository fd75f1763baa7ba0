"""Contrastive losses (CLIP/InfoNCE and SimCLR NT-Xent), chunked with an online log-sum-exp."""
from ptft_engine.ops.contrastive.op import contrastive_loss, nt_xent_loss

__all__ = ["contrastive_loss", "nt_xent_loss"]
