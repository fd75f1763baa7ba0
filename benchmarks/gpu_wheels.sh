#!/usr/bin/env bash
# Run HERE (with PyPI access) before a GPU session's gpu_check.sh: the lent GPU machine has torch, triton,
# transformers, pytest-xdist ... but no pydantic, DeepSpeed or webdataset, and reaches no registry. This puts
# Python 3.12 wheels of exactly those into .whl/ (git-ignored), which gpu_check.sh installs when the device
# call carries it:   device run --carry .whl  "bash benchmarks/gpu_check.sh"
# The versions are the ones in this .venv, so both machines run the same code.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WHL=${WHL:-.whl}
mkdir -p "$WHL"
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
pins=()
for pkg in pydantic pydantic_core annotated-types typing-inspection typing_extensions hjson webdataset braceexpand; do
  pins+=("$pkg==$(ver "$pkg")")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$WHL" "${pins[@]}"
# DeepSpeed ships only an sdist: build a pure-Python wheel (its CUDA ops compile JIT on the GPU machine)
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHL" "deepspeed==$(ver deepspeed)"
ls -la "$WHL"
