#!/usr/bin/env bash
# The one prepared GPU check: a single command for the device tool that, in under 8 minutes on an
# H100 or H200, runs the GPU tests, then `mimo bench` on the Qwen3-30B-A3B layer shapes (random
# MXFP4 weights) and the PyTorch baseline on the same checkpoint, and writes
# benches/results/<date>-<device>.json. Logs and every JSON go to $OUT (the device tool brings
# them back).
#
#   ../shared/tools/gpu-stage                 # here: release binaries and tests in .gpu/
#   benches/gpu-check.sh                      # on the GPU machine (device tool, carry .gpu)
#   benches/gpu-check.sh --dry-run            # here, no GPU: part 1 on the device emulator
#
# Part 1, the tests: the staged gpu_kernel tests with MIMO_GPU_TESTS=1 (they must not skip), then
# a short `mimo bench` of the built-in model (the command path the benchmark takes). On a dry run
# the same executables run on the device emulator instead (MIMO_GPU_TESTS unset, `--device emu`),
# so a typo here fails here, not in the lent minutes.
# Part 2 (GPU only): benches/run_gpu_bench.sh's mimo and torch phases on LAYERS layers, merged
# into the results file. The 48-layer mimo run and the DFlash phase are left to run_gpu_bench.sh.
#
# Budget (seconds, each part cut off at its limit; a cut part is reported, the rest still runs):
# TESTS_LIMIT=270 BENCH_LIMIT=90 TORCH_TIMEOUT=150. Knobs: LAYERS=4 TOKENS=64 CONTEXT=1024,
# MIMO=.gpu/bin/mimo TESTS=.gpu/tests/gpu_kernel TEST_FILTER= (a test-name filter).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    *)
      echo "gpu-check: unknown argument $arg (only --dry-run)" >&2
      exit 2
      ;;
  esac
done

MIMO=${MIMO:-.gpu/bin/mimo}
TESTS=${TESTS:-.gpu/tests/gpu_kernel}
TEST_FILTER=${TEST_FILTER:-}
TESTS_LIMIT=${TESTS_LIMIT:-270}
BENCH_LIMIT=${BENCH_LIMIT:-90}
export LAYERS=${LAYERS:-4} TOKENS=${TOKENS:-64} CONTEXT=${CONTEXT:-1024}
export TORCH_TIMEOUT=${TORCH_TIMEOUT:-150} MIMO
LOGS=${OUT:-/tmp/gpu-check}
mkdir -p "$LOGS"
failed=()

log() { printf 'gpu-check: %s\n' "$*" >&2; }

# Runs "$@" under a time limit of $1 seconds, output to $LOGS/$2.log; records a failure.
part() {
  local limit=$1 name=$2
  shift 2
  local started=$SECONDS
  log "$name: $*"
  timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  local took=$((SECONDS - started))
  if ((rc == 0)); then
    log "$name: ok in ${took}s"
  else
    ((rc == 124)) && log "$name: cut off at its ${limit}s limit"
    log "$name: FAILED (exit $rc, ${took}s); the end of $LOGS/$name.log:"
    tail -n 25 "$LOGS/$name.log" >&2
    failed+=("$name")
  fi
  return 0
}

for f in "$MIMO" "$TESTS"; do
  if [[ ! -x $f ]]; then
    log "error: $f not found: run ../shared/tools/gpu-stage first (or set MIMO / TESTS)"
    exit 1
  fi
done

if ((DRY_RUN)); then
  unset MIMO_GPU_TESTS
  device=emu
  log "dry run: part 1 on the device emulator"
else
  export MIMO_GPU_TESTS=1
  device=cuda
  eval "$(benches/run_gpu_bench.sh env)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$LOGS/gpu.txt" 2>&1 || true
  log "on $(head -n 1 "$LOGS/gpu.txt")"
fi

# ---- part 1: the tests, and the bench command on the built-in model ----
filter=()
if [[ -n $TEST_FILTER ]]; then filter=("$TEST_FILTER"); fi
part "$TESTS_LIMIT" gpu-tests env RUST_BACKTRACE=1 "$TESTS" --test-threads=1 --nocapture "${filter[@]}"
grep -h "^skipped:" "$LOGS/gpu-tests.log" >&2 || true
part "$BENCH_LIMIT" bench-builtin "$MIMO" bench --device "$device" --tokens 8 --warmup 2 --context 32 --json
[[ -s $LOGS/bench-builtin.log ]] && tail -n 1 "$LOGS/bench-builtin.log" >"$LOGS/bench-builtin.json"

if ((DRY_RUN)); then
  if ((${#failed[@]})); then
    log "dry run FAILED: ${failed[*]}"
    exit 1
  fi
  log "dry run ok (part 2 needs a GPU)"
  exit 0
fi

# ---- part 2: mimo against PyTorch on the Qwen3-30B-A3B layer shapes ----
export WORK=${WORK:-/tmp/mimo-bench} FULL_MODEL=0
part $((BENCH_LIMIT + 60)) bench-mimo benches/run_gpu_bench.sh mimo
part $((TORCH_TIMEOUT + 30)) bench-torch benches/run_gpu_bench.sh torch
part 60 bench-merge benches/run_gpu_bench.sh merge
for f in "$WORK"/*.json; do [[ -f $f ]] && cp "$f" "$LOGS/"; done
cp benches/results/*.json "$LOGS/" 2>/dev/null || true

if ((${#failed[@]})); then
  log "FAILED: ${failed[*]} (logs in $LOGS)"
  exit 1
fi
log "all parts passed (logs in $LOGS)"
