#!/usr/bin/env bash
# mimo against PyTorch on one GPU, in one sitting, written to benches/results/<date>-<device>.json.
#
#   ../shared/tools/gpu-stage                 # on the Rust machine: release binaries in .gpu/bin
#   benches/run_gpu_bench.sh                  # on the GPU machine (no Rust there): all phases
#   benches/run_gpu_bench.sh mimo|dflash|torch|merge # one phase at a time (each under 10 minutes)
#   eval "$(benches/run_gpu_bench.sh env)"    # NVRTC on the library path (also for .gpu/run-tests)
#
# THE PLAN, and why. The GPU machine has 64 GB of disk and 80 GB of GPU memory (H100), 30
# minutes in all and 10 minutes per command. Qwen3-30B-A3B is 18.5 GB with MXFP4 experts but
# 61 GB in bf16: a bf16 checkpoint does not fit on the disk beside anything else, and PyTorch would
# hold 61 GB of weights plus its compile and CUDA-graph memory. So:
#   1. the comparison runs LAYERS (default 8) layers of the full Qwen3-30B-A3B layer shapes
#      (hidden 2048, 32/4 heads of 128, 128 experts top-8 of 768, vocab 151936), from ONE random
#      checkpoint with MXFP4 experts (4.1 GB for 8 layers) that both read: mimo runs the FP4
#      codes, PyTorch decodes them to bf16 on the GPU (exactly the same values) and runs bf16,
#      the configuration this baseline is defined as. Per-layer costs dominate both, and the
#      embedding/lm_head share is the same for both, so the ratio carries to 48 layers;
#   2. mimo alone also runs the full 48-layer model from weights synthesised in memory
#      (`mimo bench --random`: the same generator as the checkpoint, no disk), for the absolute
#      number (`full_model` in the result);
#   3. both time decode at position CONTEXT (default 1024) with CUDA events around each step, the
#      greedy id fed back on the device, after a warm-up; median ms per step; bytes per step as
#      mimo's report counts them (MXFP4 experts for mimo, bf16 for PyTorch); the copy bandwidth
#      (bytes read + written by a 1 GiB device-to-device copy) measured in the same process.
#   4. the dflash phase (`mimo bench --dflash`, issue 5 item 7) times DFlash's parts on the full
#      48-layer model (in-memory random weights) with a random DRAFT_LAYERS-layer draft of its
#      shape (or DRAFT, a real draft directory): the target's verify step at each of BLOCKS
#      tokens, the distinct experts each layer routes the block to (computed on the host from the
#      router; random weights route near uniformly, a worst case), the draft step, and the
#      PROJECTED tokens/s = TAU / (draft + verify) at the largest block, labelled as a projection.
#      Its JSON is dflash.json, and `dflash` in the merged file.
# Expected on an H100: checkpoint ~10 s; mimo phase ~1.5 min (two NVRTC compiles of ~15 s, cached
# in ~/.cache/mimo/kernels); torch phase ~3-5 min (torch.compile of 8 layers dominates); dflash phase ~1.5-2 min (random weights
# for 48 layers, the host routing probe and the host-timed draft). The device
# tool hands a machine back 30 s after a call, losing /tmp: run `all` in one call, or run phases in
# separate calls (each makes the checkpoint it needs) and merge on the Rust machine from the JSON
# files they copied to $OUT: `WORK=<folder of those files> benches/run_gpu_bench.sh merge`.
#
# Knobs (environment): LAYERS=8 CONTEXT=1024 TOKENS=128 WARMUP=16 SEED=0 MIMO=.gpu/bin/mimo
# PYTHON=python3 WORK=/tmp/mimo-bench RESULTS=benches/results TORCH_TIMEOUT=560; for dflash:
# DRAFT_LAYERS=5 DRAFT= (a draft directory instead of a random draft) BLOCKS=1,4,8,16 TAU=6.3
# DFLASH_TOKENS=32 DFLASH_WARMUP=4; FULL_MODEL=0 skips the 48-layer run. With OUT set (the
# device tool's output folder), every JSON written and the PyTorch log are copied there too.
set -euo pipefail
cd "$(dirname "$0")/.."

LAYERS=${LAYERS:-8}
CONTEXT=${CONTEXT:-1024}
TOKENS=${TOKENS:-128}
WARMUP=${WARMUP:-16}
SEED=${SEED:-0}
MIMO=${MIMO:-.gpu/bin/mimo}
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/mimo-bench}
RESULTS=${RESULTS:-benches/results}
TORCH_TIMEOUT=${TORCH_TIMEOUT:-560}
DRAFT_LAYERS=${DRAFT_LAYERS:-5}
DRAFT=${DRAFT:-}
BLOCKS=${BLOCKS:-1,4,8,16}
TAU=${TAU:-6.3}
DFLASH_TOKENS=${DFLASH_TOKENS:-32}
DFLASH_WARMUP=${DFLASH_WARMUP:-4}
FULL_MODEL=${FULL_MODEL:-1}
CONFIG=benches/models/qwen3-30b-a3b.toml
CKPT=$WORK/ckpt-${LAYERS}l-seed$SEED

log() { printf 'run_gpu_bench: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Directories holding libnvrtc.so.13 (system CUDA, or the wheel PyTorch brought), one a line.
nvrtc_dirs() {
  {
    ls -d /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib 2>/dev/null || true
    "$PYTHON" - <<'EOF' 2>/dev/null || true
import glob, site, sys
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for lib in glob.glob(base + "/nvidia/*/lib") + glob.glob(base + "/nvidia/cu13/lib"):
        print(lib)
EOF
  } | while read -r d; do
    if [[ -e $d/libnvrtc.so.13 ]]; then echo "$d"; fi
  done | awk '!seen[$0]++'
}

print_env() {
  local dirs
  dirs=$(nvrtc_dirs | paste -sd: -)
  if [[ -z $dirs ]]; then
    log "warning: no libnvrtc.so.13 found; kernels must come from artifacts' CUBINs"
    return
  fi
  printf 'export LD_LIBRARY_PATH=%q\n' "$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

# The shared checkpoint (a machine handed back loses /tmp, so each phase makes it if missing).
checkpoint() {
  [[ -x $MIMO ]] || die "$MIMO not found: run ../shared/tools/gpu-stage on the Rust machine first"
  mkdir -p "$WORK"
  if [[ ! -f $CKPT/config.json ]]; then
    log "writing a random $LAYERS-layer Qwen3-30B-A3B checkpoint with MXFP4 experts to $CKPT"
    "$MIMO" random-checkpoint --config "$CONFIG" --layers "$LAYERS" --mxfp4-experts --seed "$SEED" \
      -o "$CKPT" --quiet
  fi
}

phase_mimo() {
  checkpoint
  log "mimo: $LAYERS layers from the checkpoint, context $CONTEXT"
  "$MIMO" bench --model "$CKPT" --device cuda --tokens "$TOKENS" --context "$CONTEXT" \
    --warmup "$WARMUP" --json >"$WORK/mimo.json"
  log "mimo: $(summary "$WORK/mimo.json")"
  keep "$WORK/mimo.json"
  if [[ $FULL_MODEL != 1 ]]; then
    log "mimo: FULL_MODEL=$FULL_MODEL: no 48-layer run"
    return 0
  fi
  log "mimo: the full 48-layer model from in-memory random weights (seed $SEED)"
  "$MIMO" bench --model "$CONFIG" --random --seed "$SEED" --device cuda --tokens "$TOKENS" \
    --context "$CONTEXT" --warmup "$WARMUP" --json >"$WORK/mimo-full.json"
  log "mimo (48 layers): $(summary "$WORK/mimo-full.json")"
  keep "$WORK/mimo-full.json"
}

phase_dflash() {
  [[ -x $MIMO ]] || die "$MIMO not found: run ../shared/tools/gpu-stage on the Rust machine first"
  mkdir -p "$WORK"
  local draft=(--draft-layers "$DRAFT_LAYERS")
  if [[ -n $DRAFT ]]; then draft=(--draft "$DRAFT"); fi
  log "dflash: the full 48-layer model (in-memory random weights, seed $SEED), draft ${DRAFT:-random $DRAFT_LAYERS layers}, blocks $BLOCKS, tau $TAU, context $CONTEXT"
  local args=(bench --model "$CONFIG" --random --seed "$SEED" --device cuda --dflash "${draft[@]}"
    --blocks "$BLOCKS" --tau "$TAU" --context "$CONTEXT" --tokens "$DFLASH_TOKENS"
    --warmup "$DFLASH_WARMUP" --json)
  # The draft on the megakernel first; if that fails, the draft on the host (the projection
  # then says `roofline-estimate`), so one sitting still measures the verify steps.
  if ! "$MIMO" "${args[@]}" >"$WORK/dflash.json"; then
    log "dflash: the draft failed on the GPU; again with --host-draft"
    "$MIMO" "${args[@]}" --host-draft >"$WORK/dflash.json"
  fi
  log "dflash: $(dflash_summary "$WORK/dflash.json")"
  keep "$WORK/dflash.json"
}

dflash_summary() {
  "$PYTHON" - "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
blocks = ", ".join("B=%d %.3f ms (%.1f experts/layer)" % (b["tokens"], b["verify_ms"], b["distinct_experts_mean"]) for b in d["blocks"])
r, p = d.get("verify_ratio") or {}, d["projection"]
print("verify %s; verify(%s)/verify(1) %.2fx; PROJECTED %.0f tokens/s at tau %s (draft %.3f ms, %s)" % (
    blocks, r.get("block", "?"), r.get("ratio", float("nan")), p["tokens_per_second"], p["tau"], p["draft_ms"], p["draft_source"]))
EOF
}

phase_torch() {
  checkpoint
  log "torch: $LAYERS layers from the same checkpoint, context $CONTEXT"
  rm -f "$WORK/torch.json"
  PYTHONUNBUFFERED=1 timeout "$TORCH_TIMEOUT" "$PYTHON" benches/torch_baseline.py --model "$CKPT" \
    --tokens "$TOKENS" --context "$CONTEXT" --warmup "$WARMUP" --json "$WORK/torch.json" \
    >/dev/null 2>"$WORK/torch.log" ||
    log "torch baseline failed or timed out (exit $?): $(tail -n 3 "$WORK/torch.log")"
  keep "$WORK/torch.log"
  if [[ -f $WORK/torch.json ]]; then
    log "torch: $(summary "$WORK/torch.json")"
    keep "$WORK/torch.json"
  fi
  return 0
}

summary() {
  "$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.3f ms/step, %.1f tokens/s, %.0f GB/s = %.1f%% of %.0f GB/s copy" % (d["ms_per_step"], d["tokens_per_second"], d["achieved_gbs"], 100*d["bandwidth_fraction"], d["copy_bandwidth_gbs"]))' "$1"
}

phase_merge() {
  [[ -f $WORK/mimo.json ]] || die "no $WORK/mimo.json: run the mimo phase first"
  mkdir -p "$RESULTS"
  local out
  out=$("$PYTHON" - "$WORK" "$RESULTS" "$LAYERS" <<'EOF'
import json, os, re, sys
work, results, layers = sys.argv[1], sys.argv[2], int(sys.argv[3])
load = lambda n: json.load(open(os.path.join(work, n))) if os.path.exists(os.path.join(work, n)) else None
mimo, full, torch = load("mimo.json"), load("mimo-full.json"), load("torch.json")
dflash = load("dflash.json")
r = dict(mimo)
r["torch_tokens_per_second"] = torch["tokens_per_second"] if torch else None
r["torch_ms_per_step"] = torch["ms_per_step"] if torch else None
r["speedup_vs_torch"] = mimo["tokens_per_second"] / torch["tokens_per_second"] if torch else None
r["torch"] = torch or {"error": "the PyTorch baseline did not finish; see its log"}
r["full_model"] = full
r["dflash"] = dflash
r["plan"] = (
    f"{layers} layers of the full Qwen3-30B-A3B layer shapes from one random checkpoint with MXFP4 "
    "experts: mimo runs the FP4 codes, PyTorch the same values decoded to bf16 (61 GB of bf16 weights "
    "for 48 layers fit neither the disk nor beside PyTorch's compile memory); full_model is mimo alone "
    "on all 48 layers (weights synthesised in memory, same generator). See benches/run_gpu_bench.sh."
)
name = (torch or {}).get("device") or re.sub(r"^cuda:\d+ \(([^,]*),.*$", r"\1", mimo["device"])
slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
path = os.path.join(results, f"{mimo['date'][:10]}-{slug}.json")
with open(path, "w") as f:
    json.dump(r, f, indent=2)
    f.write("\n")
print(path)
EOF
)
  log "wrote $out"
  keep "$out"
}

# Copies a file to $OUT when set (the device tool brings back what is there).
keep() {
  if [[ -n ${OUT:-} && -f $1 ]]; then
    mkdir -p "$OUT"
    cp "$1" "$OUT/"
  fi
}

phase=${1:-all}
case $phase in
  env) print_env ;;
  mimo)
    eval "$(print_env)"
    phase_mimo
    ;;
  dflash)
    eval "$(print_env)"
    phase_dflash
    ;;
  torch) phase_torch ;;
  merge) phase_merge ;;
  all)
    eval "$(print_env)"
    phase_mimo
    phase_dflash
    phase_torch
    phase_merge
    ;;
  *) die "unknown phase $phase (all, env, mimo, dflash, torch, merge)" ;;
esac
