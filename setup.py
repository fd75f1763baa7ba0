"""Builds ptft_engine._C from csrc/: C++ CPU kernels always, CUDA kernels when possible.

PTFT_CUDA=auto (default) builds CUDA code when nvcc and a CUDA build of torch are
present; PTFT_CUDA=1 requires them; PTFT_CUDA=0 skips them. PTFT_PORTABLE=1 drops
-march=native (for wheels that travel to other machines).
"""
import glob
import os
import shutil
import sys

from setuptools import setup


def _fail(msg: str) -> None:
    sys.stderr.write(f"\nptft_engine build error: {msg}\n\n")
    raise SystemExit(1)


try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError:
    _fail(
        "PyTorch is not installed in this environment. Install it first "
        "(CPU build: `pip install torch==2.13.0`), then "
        "`pip install --no-build-isolation -e .` so the build sees it."
    )


def _want_cuda() -> bool:
    mode = os.environ.get("PTFT_CUDA", "auto").lower()
    if mode not in ("0", "1", "auto"):
        _fail(f"PTFT_CUDA must be 0, 1 or auto, got {mode!r}")
    has_nvcc = shutil.which("nvcc") is not None or bool(os.environ.get("CUDA_HOME"))
    torch_cuda = torch.version.cuda is not None
    if mode == "1" and not (has_nvcc and torch_cuda):
        missing = [] if has_nvcc else ["nvcc (CUDA toolkit, or CUDA_HOME)"]
        if not torch_cuda:
            missing.append(f"a CUDA build of torch (this is {torch.__version__}, CPU only)")
        _fail("PTFT_CUDA=1 but missing: " + ", ".join(missing))
    return mode == "1" or (mode == "auto" and has_nvcc and torch_cuda)


here = os.path.dirname(os.path.abspath(__file__))
cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
cu_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
with_cuda = _want_cuda()

cxx_flags = ["-O3", "-std=c++17", "-fno-math-errno"]
if os.environ.get("PTFT_PORTABLE", "0") != "1":
    cxx_flags.append("-march=native")
include_dirs = [os.path.join(here, "csrc")]

if with_cuda:
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not arch_list:
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    ext = CUDAExtension(
        "ptft_engine._C",
        cpp_sources + cu_sources,
        include_dirs=include_dirs,
        define_macros=[("PTFT_WITH_CUDA", "1")],
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": ["-O3", "--use_fast_math", "-std=c++17", "-lineinfo"],
        },
    )
else:
    ext = CppExtension(
        "ptft_engine._C",
        cpp_sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags},
    )

print(f"ptft_engine: building _C with {'CPU + CUDA' if with_cuda else 'CPU only'} kernels")
setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
