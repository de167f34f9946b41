#!/usr/bin/env bash
# Everything issue 5 asks to check on a lent GPU, in one device call (../shared/gpu/README.md):
# CUDA op tests against the CPU reference, compute-sanitizer memcheck and racecheck on them, the
# kernel benchmarks beside PyTorch's, tiny-preset CPU/GPU loss parity and base-preset training.
# Here, first: npm install && npm run build:cuda && bash ../shared/gpu/pack.sh
# Device call: carry [".gpu", "prebuilds", "dist"] (prebuilds/ holds both addons; build-cuda/ is too big to carry), command:
#   source .gpu/env.sh && bash bench/gpu/check.sh
# Logs land in $OUT (the raw outputs to commit under bench/results/ with the GPU's name and driver).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
step() { echo "== $1"; echo "== $1" >> "$out/summary.txt"; }

step "GPU"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv | tee "$out/gpu.txt"
node -e 'import("./dist/index.js").then((m) => console.log(JSON.stringify(m.cudaStatus())))' | tee -a "$out/gpu.txt"

step "op tests on cuda (every op against the CPU reference)"
MEMGPT_DEVICE=cuda npx vitest run 2>&1 | tee "$out/test-cuda.log" | tail -n 5 | tee -a "$out/summary.txt"

for tool in memcheck racecheck; do
  step "compute-sanitizer $tool on the op tests"
  MEMGPT_DEVICE=cuda compute-sanitizer --tool "$tool" --target-processes all --print-limit 20 \
    npx vitest run test/ops.test.ts test/norm.test.ts test/linear.test.ts test/attention.test.ts \
    test/memwrite.test.ts test/classifier.test.ts test/optim.test.ts > "$out/sanitizer-$tool.log" 2>&1
  grep -E "ERROR SUMMARY|Tests " "$out/sanitizer-$tool.log" | tail -n 3 | tee -a "$out/summary.txt"
done

step "kernel benchmarks: memgpt (cuda) and PyTorch, same run"
MEMGPT_QUIET=1 node bin/memgpt.js bench kernels --device cuda --preset base --json > "$out/kernels-cuda.json" 2> "$out/kernels-cuda.err"
python3 bench/torch_kernels.py --json > "$out/torch-kernels.json" 2> "$out/torch-kernels.err"
tail -n 3 "$out/kernels-cuda.err" "$out/torch-kernels.err" | tee -a "$out/summary.txt"

step "tiny preset: the same training on cpu (float32) and cuda (float32, then bfloat16)"
printf 'The quick brown fox jumps over the lazy dog. %.0s' $(seq 1 400) > /tmp/parity.txt
for run in cpu:float32 cuda:float32 cuda:bfloat16; do
  dev=${run%%:*} prec=${run##*:}
  node bin/memgpt.js train --preset tiny --data /tmp/parity.txt --out "/tmp/parity-$dev-$prec" --steps 50 --device "$dev" \
    --precision "$prec" --order sequential --log-every 1 --json > "$out/parity-$dev-$prec.jsonl" 2> "$out/parity-$dev-$prec.err"
done
node -e '
const fs = require("fs"), out = process.argv[1];
const read = (r) => fs.readFileSync(`${out}/parity-${r}.jsonl`, "utf8").trim().split("\n").map((l) => JSON.parse(l)).filter((r) => r.loss !== undefined);
const cpu = read("cpu-float32");
for (const r of ["cuda-float32", "cuda-bfloat16"]) {
  const g = read(r);
  const worst = cpu.reduce((w, c, i) => Math.max(w, Math.abs(c.loss - g[i].loss) / Math.abs(c.loss)), 0);
  console.log(`${r} vs cpu-float32: steps ${g.length}/${cpu.length}, worst relative loss difference ${worst.toExponential(2)}`);
}
' "$out" | tee -a "$out/summary.txt"

step "base preset training: memgpt vs PyTorch (bf16 autocast + SDPA), same run"
bash bench/compare-train.sh base 16 2 10 cuda > "$out/train-base-cuda.json" 2> "$out/train-base-cuda.err"
grep -E '"speedup"|tokensPerSecond|achievedTflops' "$out/train-base-cuda.json" | tee -a "$out/summary.txt"
# MFU against the H100/H200 SXM dense bf16 peak (989.4 TFLOP/s).
node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); console.log(`MFU ${(100 * r.memgpt.achievedTflops / 989.4).toFixed(1)}% of 989.4 TFLOP/s`)' "$out/train-base-cuda.json" | tee -a "$out/summary.txt"

cat "$out/summary.txt"
