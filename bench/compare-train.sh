#!/usr/bin/env bash
# Side-by-side training throughput, in one run on one machine: memgpt
# (bench/train.ts) and the plain PyTorch implementation of SPEC.md
# (bench/torch_memgpt.py), same preset, batch, segments, clipping and AdamW.
# Usage: bash bench/compare-train.sh [preset] [batch] [segments] [steps] [device] > result.json
#   CPU: needs Debian's python3-torch and libopenblas0-pthread (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-small} batch=${2:-8} segments=${3:-4} steps=${4:-5} device=${5:-cpu}
python=${PYTHON:-/usr/bin/python3}
threads=$(node -e "console.log(require('os').availableParallelism())")
# On the GPU both sides train in mixed precision: bf16 matmuls, fp32 master weights (autocast for PyTorch).
precision=float32 extra=()
[ "$device" = cuda ] && precision=bfloat16 && extra+=(--bf16)
ours=$(MEMGPT_QUIET=1 node bin/memgpt.js bench train --preset "$preset" --batch-size "$batch" --segments "$segments" --steps "$steps" --device "$device" --precision "$precision" --json)
theirs=$("$python" bench/torch_memgpt.py --preset "$preset" --batch-size "$batch" --segments "$segments" --steps "$steps" --device "$device" --threads "$threads" --json "${extra[@]}")
node -e '
const [ours, theirs] = process.argv.slice(1).map((s) => JSON.parse(s));
const cpu = require("os").cpus()[0]?.model ?? "unknown";
console.log(JSON.stringify({ date: new Date().toISOString(), cpu, threads: require("os").availableParallelism(),
  memgpt: ours, pytorch: theirs, speedup: ours.tokensPerSecond / theirs.tokensPerSecond }, null, 2));
' "$ours" "$theirs"
