#!/usr/bin/env bash
# Pre-train on one node with N ranks (GPUs, or CPU processes with gloo when no GPU):
#
#   launch/local.sh N --config configs/clm_tiny.yaml [key=value ...] [--resume auto]
#
# Environment: PYTHON (default: the repo's .venv, else python3), MASTER_PORT (default: a
# free port); pick GPUs with CUDA_VISIBLE_DEVICES. The launcher (ptft_engine/engine/launcher.py)
# forwards SIGTERM/SIGINT to the ranks, which save one checkpoint and exit 75; ranks stop
# when the launcher dies; a failed rank takes the others down (PTFT_FAIL_GRACE_S, 15 s).
set -euo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: launch/local.sh NUM_RANKS --config RECIPE.yaml [key=value ...]" >&2
  exit 2
fi
NPROC=$1; shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
PORT=${MASTER_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
# no GPU driver: DeepSpeed's CPU accelerator (gloo) instead of guessing
command -v nvidia-smi > /dev/null 2>&1 || export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m ptft_engine.engine.launcher --nproc "$NPROC" --master-port "$PORT" -- pretrain "$@"
