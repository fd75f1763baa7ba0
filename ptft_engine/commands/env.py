"""Report the environment: versions, the native extension, and per-op kernel backends.

Like DeepSpeed's ds_report: for each backend, whether it can run here and, if not, why.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import platform
import shutil

EXAMPLE = "Example: ptft env --json"


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _version(module: str) -> str:
    try:
        # DeepSpeed prints its accelerator guess to stdout at import: keep --json clean.
        with contextlib.redirect_stdout(io.StringIO()):
            mod = importlib.import_module(module)
    except Exception as exc:  # a broken install can raise anything at import
        return f"not usable ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return getattr(mod, "__version__", "installed")


def collect() -> dict:
    import torch

    from ptft_engine.ops import _native, registry

    cuda = torch.cuda.is_available()
    report = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "nvcc": shutil.which("nvcc"),
        "cpu_threads": torch.get_num_threads(),
        "packages": {m: _version(m) for m in ("deepspeed", "triton", "webdataset", "tokenizers", "safetensors",
                                              "transformers")},
        "native_extension": "ok" if _native.LOAD_ERROR is None else _native.LOAD_ERROR,
        "native_cuda_kernels": _native.cuda_built(),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "0"),
        registry.ENV_VAR: os.environ.get(registry.ENV_VAR),
        "backends": {},
        "tensor_core_kernels": {op: list(names) for op, names in registry.TENSOR_CORE_KERNELS.items()},
    }
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if cuda else [])
    for dev in devices:
        report["backends"][dev.type] = registry.status(dev)
    if not cuda:
        no_device = "no CUDA device visible to torch"
        report["backends"]["cuda"] = {"cuda": no_device, "triton": no_device}
    return report


def run(args) -> int:
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    width = 26
    for key, value in report.items():
        if key in ("packages", "backends", "tensor_core_kernels"):
            continue
        print(f"{key:<{width}} {value}")
    print("packages:")
    for name, ver in report["packages"].items():
        print(f"  {name:<{width - 2}} {ver}")
    print("kernel backends (all ops: attention, mlm_mask, contrastive = contrastive_loss and nt_xent_loss):")
    for dev, backends in report["backends"].items():
        for name, why in backends.items():
            mark = "yes" if why is None else f"no  - {why}"
            print(f"  {dev + ' tensors / ' + name:<{width - 2}} {mark}")
    print("tensor-core kernels (automatic GPU choice takes these first for matmul-heavy ops):")
    for op, names in report["tensor_core_kernels"].items():
        print(f"  {op:<{width - 2}} {', '.join(names) or 'none (no matmul)'}")
    return 0
