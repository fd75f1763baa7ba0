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

# Torch first and pinned: an unpinned torch (or a package that depends on it) would
# fetch a multi-GB CUDA build. A torch already in the venv (e.g. CUDA on a GPU box) is kept.
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==${PTFT_TORCH_VERSION:-2.13.0}"
fi
python -m pip install -q pybind11 ninja
# No build isolation: the extension (and DeepSpeed) must build against the torch above.
python -m pip install -q --no-build-isolation -e ".[all]"
python -c "import torch, ptft_engine._C" && echo "install.sh: ptft_engine and its native extension are ready in $VENV"
