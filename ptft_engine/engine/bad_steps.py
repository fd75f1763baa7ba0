"""Skip optimizer updates whose gradients are not finite, on every rank alike.

The guard is the client optimizer DeepSpeed wraps. Under ZeRO each rank's optimizer
sees only its partition of the gradients, so the finiteness flag is all-reduced before
deciding: either every rank applies the update or none does. (DeepSpeed's own overflow
check, active for fp16 and some bf16 setups, can also skip a step; the trainer counts
that through `engine.was_step_applied()`.)
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class GuardedAdamW(torch.optim.AdamW):
    def __init__(self, params, *, clip_grad: float = 0.0, **kwargs):
        super().__init__(params, **kwargs)
        self.clip_grad = clip_grad  # only used when DeepSpeed does not clip (stage 0, fp32)
        self.last_step_bad = False
        self.last_grad_norm: float | None = None

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        local_sq = torch.zeros((), dtype=torch.float32, device=grads[0].device if grads else "cpu")
        if grads:
            local_sq = torch.stack([g.detach().float().pow(2).sum() for g in grads]).sum()
        bad = (~torch.isfinite(local_sq)).float().reshape(1)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":  # NCCL reduces GPU tensors only (grads may be offloaded)
                bad = bad.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        self.last_step_bad = bool(bad.item())
        self.last_grad_norm = float(local_sq.sqrt()) if not self.last_step_bad else float("nan")
        if self.last_step_bad:
            return None
        if self.clip_grad > 0 and grads:
            scale = self.clip_grad / (self.last_grad_norm + 1e-6)
            if scale < 1.0:
                torch._foreach_mul_(grads, scale)
        return super().step(closure)
