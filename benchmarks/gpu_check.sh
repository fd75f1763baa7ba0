#!/usr/bin/env bash
# One call on a GPU machine yields every GPU figure this project has, or as many as the time allows:
#   here first:  bash benchmarks/gpu_wheels.sh         (pydantic, DeepSpeed, webdataset wheels into .whl/)
#   device run:  bash benchmarks/gpu_check.sh           (carry: .whl)
# It always reports. One global deadline (PTFT_GPU_CHECK_BUDGET seconds, default 450) bounds every step, and
# each step has a guaranteed share of it (SHARES): a step may use what the steps before it left, up to its cap,
# never the shares of the steps after it. The benchmarks (the figures) run before the long GPU test steps,
# which still keep their share. No step stops another (a failed CUDA build still runs the Triton tests and
# benchmarks); tests run in parallel (pytest-xdist when present) without -x, Triton and CUDA apart;
# benchmarks write each JSON row as it is measured and turn a failing case into an error row; summary.json
# is written last. $OUT holds at most 8 files (the device tool's limit): summary.json steps.jsonl bench.jsonl
# junit_triton.xml junit_cuda.xml env.json log.txt.
# PTFT_GPU_CHECK_DRY=1 runs the same steps on a CPU (the GPU tests collected and skipped, the benchmarks'
# GPU cases tiny, fp32, Triton interpreted), so CI proves the script itself still works.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
DRY=${PTFT_GPU_CHECK_DRY:-0}
BUDGET=${PTFT_GPU_CHECK_BUDGET:-450}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
: > "$OUT/steps.jsonl"
: > "$OUT/bench.jsonl"
: > "$OUT/log.txt"
START=$SECONDS
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
log() { echo "$*" | tee -a "$OUT/log.txt"; }

# name:share in run order; shares are percent of the budget less the 10 s kept for the summary. wheels
# runs only when .whl/ exists; a step that finishes early (or does not run) leaves its time to the next.
SHARES="wheels:4 build:30 env:3 bench_mlm:5 bench_attention:22 bench_contrastive:7 bench_e2e:12 tests_triton:10 tests_cuda:7"
AVAIL=$((BUDGET - 10))
kept_for_later() {  # seconds promised to the steps after $1
  local entry after=0 pct=0
  for entry in $SHARES; do
    [ "$after" = 1 ] && pct=$((pct + ${entry#*:}))
    [ "${entry%%:*}" = "$1" ] && after=1
  done
  echo $((AVAIL * pct / 100))
}

step() {  # step NAME CAP CMD...: at most CAP seconds, never into the later steps' shares; output into log.txt
  local name=$1 limit=$2; shift 2
  local start=$((SECONDS - START)) kept
  kept=$(kept_for_later "$name")
  local left=$((AVAIL - start - kept))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    echo "{\"step\": \"$name\", \"rc\": null, \"seconds\": 0, \"start\": $start, \"kept\": $kept, \"skipped\": \"deadline\"}" \
      >> "$OUT/steps.jsonl"
    log "== $name: skipped, the ${BUDGET}s deadline is near (${kept}s kept for the later steps)"
    return 124
  fi
  log "== $name (limit ${limit}s)"
  timeout -k 5 "$limit" "$@" >> "$OUT/log.txt" 2>&1
  local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - START - start)), \"start\": $start, \"limit\": $limit, \"kept\": $kept}" \
    | tee -a "$OUT/steps.jsonl"
  return $rc
}

if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1 DS_ACCELERATOR=cpu
  GPU_ARGS=(--device cuda --dry)
  E2E_ARGS=(--dry)
  step build 60 "$PY" -c "import torch, ptft_engine._C"  # install.sh built it; CI has no CUDA to build for
else
  # The GPU machine reaches no registry: wheels that gpu_wheels.sh fetched here travel in .whl/
  if ls .whl/*.whl > /dev/null 2>&1; then
    step wheels 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/ptft_site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/ptft_site"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/log.txt" 2>&1
  GPU_ARGS=(--device cuda)
  E2E_ARGS=(--device cuda)
  step build 200 env PTFT_CUDA=1 "$PY" setup.py build_ext --inplace \
    || log "CUDA build failed: the Triton steps still run (the cuda rows will say the backend is unavailable)"
fi
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
  >> "$OUT/log.txt" 2>&1
step env 60 sh -c "\"$PY\" -m ptft_engine.cli env --json > \"$OUT/env.json\""

# The figures first: benchmarks before the GPU tests (which compile ~60 attention specialisations and could
# take any time they are given); the shares above keep time for both.
step bench_mlm 45 "$PY" benchmarks/ops/bench_mlm.py "${GPU_ARGS[@]}" --json-out "$OUT/bench.jsonl"
step bench_attention 150 "$PY" benchmarks/ops/bench_attention.py "${GPU_ARGS[@]}" --json-out "$OUT/bench.jsonl"
step bench_contrastive 60 "$PY" benchmarks/ops/bench_contrastive.py "${GPU_ARGS[@]}" --json-out "$OUT/bench.jsonl"
step bench_e2e 150 "$PY" benchmarks/e2e/bench_engine.py "${E2E_ARGS[@]}" --json-out "$OUT/bench.jsonl"

XDIST=()
"$PY" -c "import xdist" 2> /dev/null && XDIST=(-n "${PTFT_GPU_CHECK_WORKERS:-8}")
PYTEST=("$PY" -m pytest tests/ops -q -m gpu -p no:cacheprovider -o addopts="" "${XDIST[@]}")
step tests_triton 150 "${PYTEST[@]}" -k triton --junitxml="$OUT/junit_triton.xml"
step tests_cuda 100 "${PYTEST[@]}" -k "not triton" --junitxml="$OUT/junit_cuda.xml"

"$PY" - "$OUT" "$DRY" "$((SECONDS - START))" <<'PY'
import json, pathlib, sys, xml.etree.ElementTree as ET
out, dry, seconds = pathlib.Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
rows = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines() if line.strip()]
tests = {}
for name in ("triton", "cuda"):
    path = out / f"junit_{name}.xml"
    if path.exists():
        suite = ET.parse(path).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        tests[name] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
summary = {"dry": dry, "seconds": seconds, "steps": steps, "tests": tests,
           "bench_rows": len(rows), "bench_errors": sum(1 for r in rows if r.get("error")),
           "failed_steps": [s["step"] for s in steps if s.get("rc") not in (0, None)],
           "skipped_steps": [s["step"] for s in steps if s.get("skipped")]}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary))
sys.exit(1 if summary["failed_steps"] else 0)
PY
rc=$?
log "gpu_check: done in $((SECONDS - START))s (exit $rc); results in $OUT"
exit $rc
