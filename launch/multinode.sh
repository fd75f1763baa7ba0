#!/usr/bin/env bash
# Pre-train on several nodes with the deepspeed launcher and a hostfile (launch/hostfile.example).
#
# a) From one node, the launcher reaches the others over pdsh/ssh (same paths everywhere):
#      HOSTFILE=hosts launch/multinode.sh --config configs/gpt_1b.yaml [key=value ...]
# b) One launcher per node, no ssh (containers, schedulers, or tests on one machine):
#      HOSTFILE=hosts NODE_RANK=0 MASTER_ADDR=node-a launch/multinode.sh --config ...   # on node-a
#      HOSTFILE=hosts NODE_RANK=1 MASTER_ADDR=node-a launch/multinode.sh --config ...   # on node-b
#
# Environment: HOSTFILE (required); MASTER_ADDR (default: the hostfile's first host);
# MASTER_PORT (default 29500); NODE_RANK (selects mode b); LAUNCHER (mode a: pdsh, openmpi,
# mvapich, slurm; default pdsh; mode b: `deepspeed` for DeepSpeed's launcher instead of ours);
# PYTHON (default: the repo's .venv, else python3); DS_LAUNCHER_ARGS (extra deepspeed launcher flags).
#
# Mode b runs our launcher (ptft_engine/engine/launcher.py, as launch/local.sh): signals are
# forwarded and the ranks save before they exit (code 75). Mode a, and mode b with
# LAUNCHER=deepspeed, run DeepSpeed's launcher (`deepspeed --no_ssh --node_rank N` in mode b),
# which SIGKILLs the ranks 30 s after forwarding a SIGTERM: a large model may not finish its save.
set -euo pipefail
: "${HOSTFILE:?set HOSTFILE to a deepspeed hostfile (see launch/hostfile.example)}"
[[ -f "$HOSTFILE" ]] || { echo "multinode.sh: HOSTFILE $HOSTFILE not found" >&2; exit 2; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
FIRST_HOST=$(grep -v '^\s*#' "$HOSTFILE" | awk 'NF {print $1; exit}')
MASTER_ADDR=${MASTER_ADDR:-$FIRST_HOST}
MASTER_PORT=${MASTER_PORT:-29500}
command -v nvidia-smi > /dev/null 2>&1 || export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n "${NODE_RANK:-}" && "${LAUNCHER:-}" == deepspeed ]]; then
  # DeepSpeed's own launcher per node (no ssh): ranks still stop when it dies (parent check each step),
  # but it SIGKILLs them 30 s after forwarding a SIGTERM, so a large model may not finish its save
  # shellcheck disable=SC2086
  exec "$PYTHON" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" \
    --master_port "$MASTER_PORT" --no_ssh --node_rank "$NODE_RANK" ${DS_LAUNCHER_ARGS:-} \
    --no_local_rank --module ptft_engine.cli pretrain "$@"
fi
if [[ -n "${NODE_RANK:-}" ]]; then
  exec "$PYTHON" -m ptft_engine.engine.launcher --hostfile "$HOSTFILE" --node-rank "$NODE_RANK" \
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" -- pretrain "$@"
fi
# shellcheck disable=SC2086
exec "$PYTHON" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" \
  --master_port "$MASTER_PORT" --launcher "${LAUNCHER:-pdsh}" ${DS_LAUNCHER_ARGS:-} \
  --no_local_rank --module ptft_engine.cli pretrain "$@"
