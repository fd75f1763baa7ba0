"""Backend choice for every op: cuda | triton | cpu | reference.

Precedence for a call: its `backend=` argument, then the process default (set from
config with `set_default_backend`), then `PTFT_KERNEL_BACKEND`, then automatic. An
explicit choice that cannot run raises `BackendUnavailable` with the reason; the
automatic choice falls back cuda -> triton -> cpu -> reference and logs once per op
and device what it picked.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from types import ModuleType

import torch

from ptft_engine.ops import _native

BACKENDS = ("cuda", "triton", "cpu", "reference")
ENV_VAR = "PTFT_KERNEL_BACKEND"
log = logging.getLogger("ptft_engine.ops")

_default: str | None = None
_logged: set[tuple[str, str, str]] = set()


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run these inputs here."""


def _check_name(name: str, source: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS and name != "auto":
        raise ValueError(f"{source}: unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)} or auto")
    return name


def set_default_backend(name: str | None) -> None:
    """Process-wide choice (from config); None or 'auto' restores automatic choice."""
    global _default
    _default = None if name is None else _check_name(name, "set_default_backend")


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    global _default
    old = _default
    set_default_backend(name)
    try:
        yield
    finally:
        _default = old


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising at import
        return f"triton is not importable ({exc.__class__.__name__}: {exc})"
    return None


def generic_reason(backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot run on `device` in this process (None: it can)."""
    if backend == "reference":
        return None
    if backend == "cpu":
        if device.type != "cpu":
            return f"the cpu backend takes CPU tensors, got {device.type}"
        return _native.LOAD_ERROR
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend takes CUDA tensors, got {device.type}"
        if _native.LOAD_ERROR:
            return _native.LOAD_ERROR
        if not _native.cuda_built():
            return "ptft_engine._C was built without CUDA kernels (rebuild with nvcc and a CUDA torch, PTFT_CUDA=1)"
        return None
    if backend == "triton":
        err = _triton_import_error()
        if err:
            return err
        if device.type == "cpu" and not triton_interpret():
            return "triton on CPU tensors needs TRITON_INTERPRET=1 (set before triton is imported)"
        if device.type not in ("cpu", "cuda"):
            return f"triton backend does not run on {device.type}"
        return None
    raise ValueError(f"unknown kernel backend {backend!r}")


def requested(backend: str | None = None) -> str:
    """The backend this call asks for: its argument, else the process default, else PTFT_KERNEL_BACKEND,
    else "auto". Resolved when the op is called, so its backward uses the same choice."""
    if backend is not None:
        name = _check_name(backend, "backend argument")
    elif _default is not None:
        name = _default
    elif os.environ.get(ENV_VAR):
        name = _check_name(os.environ[ENV_VAR], ENV_VAR)
    else:
        name = "auto"
    return name


# Kernels whose matmuls run on tensor cores: Triton (tl.dot) for every float dtype; CUDA (WMMA, fp32
# accumulate, sm_80+) for fp16/bf16 inputs only, fp32 stays scalar FMA there. For matmul-heavy ops the
# automatic GPU order puts these first, in this order; mlm_mask has no matmul and keeps the default order.
# `ptft env` prints this table.
# Keys are the op names the registry is asked for ("contrastive": the core of both contrastive losses).
TENSOR_CORE_KERNELS = {"attention": ("triton", "cuda"), "contrastive": ("triton", "cuda"), "mlm_mask": ()}
DEFAULT_GPU_ORDER = ("cuda", "triton", "reference")


def gpu_order(op: str) -> tuple[str, ...]:
    """Automatic preference on CUDA tensors: the op's tensor-core kernels first, then the rest."""
    first = TENSOR_CORE_KERNELS.get(op, ())
    return first + tuple(name for name in DEFAULT_GPU_ORDER if name not in first)


def choose(op: str, x: torch.Tensor, backend: str | None = None,
           op_reason: Callable[[str, torch.Tensor], str | None] | None = None) -> str:
    """Pick the backend for one call of `op` whose main input is `x`.

    `op_reason(backend, x)` lets an op add its own limits (dtype, head dim ...): it
    returns why this call cannot use that backend, or None.
    """
    device = x.device

    def reason(name: str) -> str | None:
        return generic_reason(name, device) or (op_reason(name, x) if op_reason else None)

    want = requested(backend)
    if want != "auto":
        why = reason(want)
        if why:
            raise BackendUnavailable(f"{op}: backend {want!r} cannot run here: {why}")
        return want
    # Interpreted Triton is a test vehicle, far slower than C++: never pick it on CPU.
    order = gpu_order(op) if device.type == "cuda" else ("cpu", "reference")
    skipped = []
    for name in order:
        why = reason(name)
        if why is None:
            key = (op, device.type, name)
            if key not in _logged:
                _logged.add(key)
                detail = "; ".join(skipped)
                log.info("%s on %s: using the %s backend%s", op, device.type, name, f" ({detail})" if detail else "")
            return name
        skipped.append(f"{name}: {why}")
    raise BackendUnavailable(f"{op}: no backend can run here ({'; '.join(skipped)})")


def kernels(package: str, backend: str) -> ModuleType:
    """The module of `ptft_engine.ops.<package>` that implements `backend`; every one exports the same
    `forward` (and `backward` where the op has a gradient). cpu and cuda share the compiled extension."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}")
    module = "native" if backend in ("cpu", "cuda") else backend
    return importlib.import_module(f"ptft_engine.ops.{package}.{module}")


def status(device: torch.device) -> dict[str, str | None]:
    """Backend -> reason it cannot run on `device` (None when usable); for `ptft env`."""
    return {name: generic_reason(name, device) for name in BACKENDS}
