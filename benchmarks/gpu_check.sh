#!/usr/bin/env bash
# One call on a GPU machine: build the CUDA extension, run the GPU tests, benchmark
# the kernels, and write JSON under $OUT (default ./gpu_out). Budget: < 8 minutes.
#   device run: bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
status=0
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" | tee -a "$OUT/steps.jsonl"
  tail -n 15 "$OUT/$name.log"
  [ $rc -eq 0 ] || status=1
  return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

step build 200 env PTFT_CUDA=1 $PY setup.py build_ext --inplace || { echo "build failed"; exit 1; }
$PY -m ptft_engine.cli env --json > "$OUT/env.json" 2>&1
step gpu_tests 120 $PY -m pytest tests/ops -q -x -m gpu -p no:cacheprovider
: > "$OUT/bench.jsonl"
step bench_attention 120 $PY benchmarks/ops/bench_attention.py --device cuda --json-out "$OUT/bench.jsonl"
step bench_mlm 45 $PY benchmarks/ops/bench_mlm.py --device cuda --json-out "$OUT/bench.jsonl"
step bench_contrastive 60 $PY benchmarks/ops/bench_contrastive.py --device cuda --json-out "$OUT/bench.jsonl"
if $PY -c "import deepspeed" 2>/dev/null && [ -f benchmarks/e2e/bench_engine.py ]; then
  step bench_e2e 150 $PY benchmarks/e2e/bench_engine.py --device cuda --json-out "$OUT/bench.jsonl"
fi
echo "gpu_check: done (status $status); results in $OUT"
exit $status
