#!/usr/bin/env bash
# The one GPU window: ONE device call of at most 8 minutes that tells the most about the CUDA kernels. It runs in
# stages, the most valuable first; each has its own time limit and appends its result to $OUT/summary.txt the
# moment it ends, so a timeout still returns everything before it (raw logs beside it, to commit under
# bench/results/ with the GPU's name and driver).
#   1. the GPU's name, the driver, memgpt doctor                                   20 s
#   2. every CUDA op test case on the GPU (each against the CPU reference)         150 s
#   3. the tiny preset's losses, CPU against CUDA float32 and bfloat16, 20 steps   60 s
#   4. kernel timings beside PyTorch's at the base shapes                          60 s
#   5. the base preset's training step against PyTorch bf16 + SDPA, 5 steps, MFU   70 s
#   6. compute-sanitizer: memcheck on a reduced set, racecheck on attention        80 s
#   7. NCCL (data parallel on CUDA): one rank all-reduces device tensors           20 s
#   8. decoding on CUDA: greedy tokens/s at batch 1 and 16, float32 and bf16       30 s
#
# On the CPU machine first: npm install && npm run build:cuda && bash ../shared/gpu/pack.sh
# Device call: carry [".gpu", "prebuilds", "dist"], command: source .gpu/env.sh && bash bench/gpu/check.sh
# Dry run here, against the emulated CUDA addon (npm run build:cuda-emu), so that no GPU minute goes to a typo:
#   MEMGPT_GPU_CHECK_DRY=1 bash bench/gpu/check.sh
# (smaller shapes; the stages that need nvidia-smi, a CUDA PyTorch or compute-sanitizer say they are skipped.)
# MEMGPT_GPU_CHECK_STAGES="3 4" runs only those stages (a rerun of what failed).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
summary="$out/summary.txt"
dry=${MEMGPT_GPU_CHECK_DRY:-}
scale=1  # the stages' limits are the GPU's; the emulator on a CPU gets more time (MEMGPT_GPU_CHECK_LIMIT_SCALE)
if [ -n "$dry" ]; then
  scale=${MEMGPT_GPU_CHECK_LIMIT_SCALE:-6}
  export MEMGPT_CUDA_ADDON=${MEMGPT_CUDA_ADDON:-$PWD/build-cuda-emu/memgpt_cuda_emu.node}
  [ -f "$MEMGPT_CUDA_ADDON" ] || { echo "dry run: $MEMGPT_CUDA_ADDON is missing (npm run build:cuda-emu)" >&2; exit 2; }
  echo "DRY RUN on the emulated CUDA addon ($MEMGPT_CUDA_ADDON): shapes reduced" > "$summary"
else
  : > "$summary"
fi
export MEMGPT_QUIET=1
vitest="node node_modules/vitest/vitest.mjs"
torch_cuda=0
python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null && torch_cuda=1
export out summary dry vitest torch_cuda  # the stages run in child shells (under timeout)

# stage NAME SECONDS COMMAND…: runs COMMAND (a shell function) under its own time limit, then appends its
# outcome (and whatever the function appended) to the summary at once.
stage() {
  local name=$1 limit=$(($2 * scale))
  shift 2
  if [ -n "${MEMGPT_GPU_CHECK_STAGES:-}" ] && [[ " $MEMGPT_GPU_CHECK_STAGES " != *" ${name%%.*} "* ]]; then return 0; fi
  local start=$SECONDS
  echo "== $name (limit ${limit}s)" | tee -a "$summary"
  timeout --kill-after=5 "$limit" bash -c "$(declare -f "$@"); $*"
  local rc=$?
  local took=$((SECONDS - start))
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "   TIMED OUT after ${took}s" | tee -a "$summary"
  else
    echo "   exit $rc after ${took}s" | tee -a "$summary"
  fi
}

gpu_info() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader | tee "$out/gpu.txt" | sed 's/^/   /' >> "$summary"
  else
    echo "   nvidia-smi: not here (skipped)" >> "$summary"
  fi
  MEMGPT_QUIET= node bin/memgpt.js doctor > "$out/doctor.txt" 2>&1
  grep -iE "cuda|device|gpu" "$out/doctor.txt" | head -n 6 | sed 's/^/   /' >> "$summary"
}

op_tests() {
  MEMGPT_DEVICE=cuda $vitest run -t "on cuda" test/ops.test.ts test/norm.test.ts test/linear.test.ts test/attention.test.ts \
    test/memwrite.test.ts test/classifier.test.ts test/optim.test.ts test/memory.test.ts test/autograd.test.ts test/decode.test.ts \
    > "$out/test-cuda.log" 2>&1
  local rc=$?
  sed 's/\x1b\[[0-9;]*m//g' "$out/test-cuda.log" | grep -E "Test Files|Tests |FAIL" | head -n 12 | sed 's/^/   /' >> "$summary"
  return $rc
}

loss_parity() {
  local steps=20
  [ -n "$dry" ] && steps=3  # about 10 s a step on the emulator
  printf 'The quick brown fox jumps over the lazy dog. %.0s' $(seq 1 400) > "$out/parity.txt"
  for run in cpu:float32 cuda:float32 cuda:bfloat16; do
    local dev=${run%%:*} prec=${run##*:}
    rm -rf "$out/parity-$dev-$prec"
    node bin/memgpt.js train --preset tiny --data "$out/parity.txt" --out "$out/parity-$dev-$prec" --steps $steps --device "$dev" \
      --precision "$prec" --order sequential --log-every 1 --json > "$out/parity-$dev-$prec.jsonl" 2> "$out/parity-$dev-$prec.err" || return 1
  done
  node -e '
const fs = require("fs"), out = process.argv[1];
const read = (r) => fs.readFileSync(`${out}/parity-${r}.jsonl`, "utf8").trim().split("\n").map((l) => JSON.parse(l)).filter((r) => r.loss !== undefined);
const cpu = read("cpu-float32");
for (const r of ["cuda-float32", "cuda-bfloat16"]) {
  const g = read(r);
  const worst = cpu.reduce((w, c, i) => Math.max(w, Math.abs(c.loss - g[i].loss) / Math.abs(c.loss)), 0);
  console.log(`   ${r} vs cpu-float32: ${g.length}/${cpu.length} steps, worst relative loss difference ${worst.toExponential(2)}, last ${g.at(-1).loss.toFixed(4)} vs ${cpu.at(-1).loss.toFixed(4)}`);
}' "$out" >> "$summary"
}

kernel_timings() {
  local args=(--preset base)
  [ -n "$dry" ] && args=(--preset small --only layerNorm)
  node bin/memgpt.js bench kernels --device cuda "${args[@]}" --json > "$out/kernels-cuda.json" 2> "$out/kernels-cuda.err" || return 1
  node -e '
const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
for (const row of r.rows) console.log(`   ${row.op}: ${row.microseconds.toFixed(1)} µs, ${row.percentOfCeiling.toFixed(1)}% of ceiling`);
' "$out/kernels-cuda.json" >> "$summary"
  if [ $torch_cuda = 1 ]; then
    python3 bench/torch_kernels.py --json > "$out/torch-kernels.json" 2> "$out/torch-kernels.err" || return 1
    echo "   PyTorch: $out/torch-kernels.json" >> "$summary"
  else
    echo "   PyTorch with CUDA: not here (skipped)" >> "$summary"
  fi
}

train_step() {
  if [ $torch_cuda = 1 ]; then
    bash bench/compare-train.sh base 16 2 5 cuda > "$out/train-base-cuda.json" 2> "$out/train-base-cuda.err" || return 1
    # MFU against the H100/H200 SXM dense bf16 peak (989.4 TFLOP/s).
    node -e '
const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
console.log(`   memgpt ${r.memgpt.tokensPerSecond.toFixed(0)} tok/s, PyTorch ${r.pytorch.tokensPerSecond.toFixed(0)} tok/s, speedup ${r.speedup.toFixed(2)}x, MFU ${(100 * r.memgpt.achievedTflops / 989.4).toFixed(1)}% of 989.4 TFLOP/s`);
' "$out/train-base-cuda.json" >> "$summary"
  else
    local preset=base steps=5
    [ -n "$dry" ] && preset=tiny steps=2
    node bin/memgpt.js bench train --preset $preset --batch-size 2 --segments 2 --steps $steps --device cuda --json > "$out/train-cuda.json" 2> "$out/train-cuda.err" || return 1
    node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); console.log(`   memgpt ${r.preset}: ${r.tokensPerSecond.toFixed(0)} tok/s, losses ${r.losses.map((l) => l.toFixed(3)).join(" ")} (PyTorch with CUDA: not here, skipped)`)' "$out/train-cuda.json" >> "$summary"
  fi
}

sanitizer() {
  if ! command -v compute-sanitizer >/dev/null; then
    echo "   compute-sanitizer: not here (skipped)" >> "$summary"
    return 0
  fi
  MEMGPT_DEVICE=cuda compute-sanitizer --tool memcheck --target-processes all --print-limit 20 \
    $vitest run -t "on cuda" test/norm.test.ts test/memwrite.test.ts test/optim.test.ts > "$out/sanitizer-memcheck.log" 2>&1
  grep -E "ERROR SUMMARY|Tests " "$out/sanitizer-memcheck.log" | tail -n 3 | sed 's/^/   memcheck: /' >> "$summary"
  MEMGPT_DEVICE=cuda compute-sanitizer --tool racecheck --target-processes all --print-limit 20 \
    $vitest run -t "on cuda" test/attention.test.ts > "$out/sanitizer-racecheck.log" 2>&1
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Tests " "$out/sanitizer-racecheck.log" | tail -n 3 | sed 's/^/   racecheck: /' >> "$summary"
}

# The decoder replays each step's recorded kernels (no host wait per layer: test/decode.test.ts counts them); here is
# what that gives at batch 1 and whether batch 16 reaches 5x batch 1's tokens/s (the small preset; tiny when dry).
decode_speed() {
  local preset=small tokens=128
  [ -n "$dry" ] && preset=tiny tokens=16
  for precision in float32 bfloat16; do
    node bin/memgpt.js bench decode --device cuda --preset $preset --batches 16 --tokens $tokens --repeats 2 \
      --precision $precision --json > "$out/decode-cuda-$precision.json" 2> "$out/decode-cuda-$precision.err" || return 1
    node -e '
const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
const [one, sixteen] = r.rows;
console.log(`   ${r.precision}: batch 1 ${one.tokensPerSecond} tokens/s, batch 16 ${sixteen.tokensPerSecond} (${(sixteen.tokensPerSecond / one.tokensPerSecond).toFixed(1)}x batch 1)`);
' "$out/decode-cuda-$precision.json" >> "$summary"
  done
}

nccl_smoke() {
  # PyTorch's wheels carry NCCL (nvidia-nccl-cu12): point the addon at it unless MEMGPT_NCCL_LIBRARY already does.
  if [ -z "${MEMGPT_NCCL_LIBRARY:-}" ]; then
    local lib
    lib=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null)
    [ -n "$lib" ] && [ -f "$lib" ] && export MEMGPT_NCCL_LIBRARY=$lib
  fi
  node --input-type=module -e 'const m = await import("./dist/parallel/nccl.js"); const s = m.ncclStatus(); console.log(s.detail); process.exit(s.available ? 0 : 3);' \
    > "$out/nccl-status.txt" 2>&1
  local found=$?
  sed 's/^/   /' "$out/nccl-status.txt" >> "$summary"
  if [ $found -ne 0 ] && [ -z "$dry" ]; then return 1; fi  # on a GPU, NCCL not loading is a failure, not a skip
  MEMGPT_DEVICE=cuda $vitest run -t "NCCL on cuda" test/parallel.test.ts > "$out/nccl.log" 2>&1
  local rc=$?
  sed 's/\x1b\[[0-9;]*m//g' "$out/nccl.log" | grep -E "Test Files|Tests |FAIL" | head -n 6 | sed 's/^/   /' >> "$summary"
  return $rc
}

stage "1. GPU, driver, doctor" 20 gpu_info
stage "2. every CUDA op test case on the GPU" 150 op_tests
stage "3. tiny preset losses: CPU vs CUDA float32 and bfloat16, 20 steps" 60 loss_parity
stage "4. kernel timings beside PyTorch's" 60 kernel_timings
stage "5. base preset training step vs PyTorch bf16 + SDPA, 5 steps" 70 train_step
stage "6. compute-sanitizer: memcheck (reduced set), racecheck (attention)" 80 sanitizer
stage "7. NCCL: one rank all-reduces device tensors" 20 nccl_smoke
stage "8. decoding on CUDA: tokens/s at batch 1 and 16" 30 decode_speed
cat "$summary"
