#!/usr/bin/env bash
# GPU checks of the Hopper bf16 path of native/cuda/linear.cu (TMA + wgmma, gemm_bf16_wgmma_kernel) on an
# H100/H200, in one device call: parity of test/linear.test.ts with the path's tile width and split-K forced
# each way and with it off (MEMGPT_LINEAR_WGMMA, see linear.cu), compute-sanitizer on it, and bf16 timings of
# linear forward/backward at the base preset's shapes, wgmma vs mma.sync, beside torch.matmul (cuBLAS).
# (`memgpt bench kernels --device cuda` times bf16 linear too, with the automatic plan only.)
# Needs node_modules and the CUDA addon (npm run build:cuda; carry prebuilds/, not build-cuda/); PyTorch only for the cuBLAS column.
#   bash bench/gpu/linear-wgmma.sh      (logs and a summary under $OUT, else /tmp/linear-wgmma)
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/linear-wgmma}
mkdir -p "$out"
step() { echo "== $1" | tee -a "$out/summary.txt"; }

step "GPU"
nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader | tee -a "$out/summary.txt"
command -v cuobjdump > /dev/null &&
  cuobjdump --dump-sass prebuilds/linux-x64-cuda/memgpt_cuda.node 2> /dev/null | grep -c HGMMA | sed 's/^/HGMMA instructions in the addon: /' |
  tee -a "$out/summary.txt"

# "" = automatic; 128/192/256 = tile width; WxS = width and K splits; 0 = the mma.sync path.
for setting in "" 128 192 256 128x3 192x2 256x5 0; do
  step "linear tests, MEMGPT_LINEAR_WGMMA=${setting:-auto}"
  MEMGPT_LINEAR_WGMMA=$setting MEMGPT_DEVICE=cuda timeout 600 npx vitest run test/linear.test.ts \
    > "$out/test-${setting:-auto}.log" 2>&1
  grep -E "Tests |FAIL|✗|×" "$out/test-${setting:-auto}.log" | tail -n 5 | tee -a "$out/summary.txt"
done

for tool in memcheck racecheck synccheck; do
  step "compute-sanitizer $tool, linear tests (automatic plan)"
  MEMGPT_DEVICE=cuda timeout 900 compute-sanitizer --tool "$tool" --target-processes all --print-limit 20 \
    npx vitest run test/linear.test.ts > "$out/sanitizer-$tool.log" 2>&1
  grep -E "ERROR SUMMARY|Tests " "$out/sanitizer-$tool.log" | tail -n 3 | tee -a "$out/summary.txt"
done

# bf16 timings: each sample is 10 calls between two synchronizations; median of 15 samples.
cat > "$out/linear-bf16.ts" <<TS
import * as mg from '$PWD/lib/index.js';
import { synchronize } from '$PWD/lib/native/backend.js';

const m = 16 * 512; // the base preset's batch · T
const layers: [string, number, number][] = [['qkv', 3 * 768, 768], ['proj', 768, 768], ['fc1', 3072, 768], ['fc2', 768, 3072]];
const bf = { device: 'cuda' as const, dtype: 'bfloat16' as const };
const time = (fn: () => void): number => {
  fn();
  synchronize('cuda');
  const samples: number[] = [];
  for (let s = 0; s < 15; s++) {
    const t0 = performance.now();
    for (let r = 0; r < 10; r++) fn();
    synchronize('cuda');
    samples.push((performance.now() - t0) / 10);
  }
  return samples.sort((a, b) => a - b)[7];
};
const rows: object[] = [];
for (const [name, n, k] of layers) {
  const x = mg.randn([m, k], { ...bf, seed: 1, requiresGrad: true });
  const w = mg.parameter(mg.randn([n, k], { ...bf, seed: 2, std: 0.02 }));
  const b = mg.parameter(mg.randn([n], { ...bf, seed: 3, std: 0.02 }));
  const dy = mg.randn([m, n], { ...bf, seed: 4 });
  const fwd = time(() => mg.noGrad(() => mg.linear(x, w, b).dispose()));
  const y = mg.linear(x, w, b);
  const bwd = time(() => {
    y.backward(dy, { retainGraph: true });
    for (const t of [x, w, b]) t.zeroGrad();
  });
  const flops = 2 * m * n * k;
  rows.push({ layer: name, shape: \`[\${m},\${k}]·[\${n},\${k}]ᵀ\`, forwardMs: fwd, forwardTflops: flops / fwd / 1e9,
    backwardMs: bwd, backwardTflops: (2 * flops) / bwd / 1e9 });
  for (const t of [y, dy, x, w, b]) t.dispose();
}
console.log(JSON.stringify({ wgmma: process.env.MEMGPT_LINEAR_WGMMA ?? 'auto', rows }));
TS
for setting in "" 0; do
  step "bf16 linear timings, MEMGPT_LINEAR_WGMMA=${setting:-auto}"
  MEMGPT_LINEAR_WGMMA=$setting MEMGPT_QUIET=1 npx tsx "$out/linear-bf16.ts" > "$out/timing-${setting:-auto}.json" 2> "$out/timing-${setting:-auto}.err"
  node -e 'for (const r of JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).rows)
    console.log(`${r.layer.padEnd(5)} fwd ${r.forwardMs.toFixed(3)} ms ${r.forwardTflops.toFixed(0)} TFLOP/s   bwd ${r.backwardMs.toFixed(3)} ms ${r.backwardTflops.toFixed(0)} TFLOP/s`)' \
    "$out/timing-${setting:-auto}.json" 2>&1 | tee -a "$out/summary.txt"
done

step "torch.matmul (cuBLAS) bf16 at the same shapes"
python3 bench/torch_kernels.py --json > "$out/torch-kernels.json" 2> "$out/torch-kernels.err" &&
  python3 - "$out/torch-kernels.json" <<'PY' | tee -a "$out/summary.txt"
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    if "matmul" in r["op"]:
        print(f"{r['op']:28s} {r['shape']:24s} {r['ms']:.3f} ms {r['tflops']:.0f} TFLOP/s")
PY

cat "$out/summary.txt"
