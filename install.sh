#!/usr/bin/env bash
# Sets up .venv with everything ptft_engine needs and builds its native extension.
# Safe to re-run. PTFT_VENV=path picks another venv; PTFT_CUDA=0|1|auto (see setup.py).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${PTFT_VENV:-.venv}
PY=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip setuptools wheel

# Torch first, pinned, and the CPU build: PyPI's Linux torch (and an unpinned one that another
# package pulls in) is a multi-GB CUDA build. The CPU build is `+cpu`: from a wheel directory
# pip is configured with, else from PyTorch's CPU index; macOS has no `+cpu` wheels, and there
# PyPI's build is the CPU one. A torch already in the venv (e.g. CUDA on a GPU box) is kept.
if ! python -c "import torch" 2>/dev/null; then
  TORCH="torch==${PTFT_TORCH_VERSION:-2.13.0}"
  python -m pip install -q "$TORCH+cpu" 2>/dev/null \
    || python -m pip install -q "$TORCH+cpu" --extra-index-url https://download.pytorch.org/whl/cpu \
    || python -m pip install -q "$TORCH"
fi
python -m pip install -q pybind11 ninja
# No build isolation: the extension (and DeepSpeed) must build against the torch above.
python -m pip install -q --no-build-isolation -e ".[all]"
python -c "import torch, ptft_engine._C" && echo "install.sh: ptft_engine and its native extension are ready in $VENV"
