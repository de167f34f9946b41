// End-to-end training throughput: forward over k segments with the memory
// carried, backward, global-norm clipping and AdamW — the same work as
// bench/torch_memgpt.py does in PyTorch, timed the same way (median step).
// Usage: npx tsx bench/train.ts [--preset small] [--batch 8] [--segments 4] [--steps 5] [--json]
import { parseArgs } from 'node:util';
import { cpus } from 'node:os';

import * as mg from '../lib/index.js';
import { presets, type PresetName } from '../lib/config.js';
import { MemGPT } from '../lib/model.js';
import { synchronize } from '../lib/backend.js';

const { values: flags } = parseArgs({
  options: {
    preset: { type: 'string', default: 'small' },
    batch: { type: 'string', default: '8' },
    segments: { type: 'string', default: '4' },
    steps: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '1' },
    device: { type: 'string' },
    json: { type: 'boolean' },
  },
});
const preset = flags.preset as PresetName;
if (!(preset in presets)) throw new Error(`unknown preset ${preset}`);
const [batch, segments, steps, warmup] = [flags.batch, flags.segments, flags.steps, flags.warmup].map(Number);
const device = (flags.device as mg.Device | undefined) ?? mg.defaultDevice();
const cfg = presets[preset];

const model = MemGPT.init(cfg, { seed: 0, device });
const params = [...model.params.values()];
const optimizer = new mg.AdamW(params, { lr: 3e-4, weightDecay: 0.1 });
const N = segments * cfg.segmentLen;
const rng = new mg.Rng(1);
const tokens = Int32Array.from({ length: batch * (N + 1) }, () => rng.int(cfg.vocabSize));

function step(): number {
  const loss = mg.tidy(() => {
    const out = model.forward(tokens, batch, segments);
    out.loss.backward();
    return out.loss.item();
  });
  mg.clipGradNorm(params, 1.0);
  optimizer.step();
  optimizer.zeroGrad();
  return loss;
}

for (let i = 0; i < warmup; i++) step();
synchronize(device);
mg.resetPeakMemory(device);
const times: number[] = [];
const losses: number[] = [];
for (let i = 0; i < steps; i++) {
  const t0 = performance.now();
  losses.push(step());
  synchronize(device);
  times.push((performance.now() - t0) / 1000);
}
times.sort((a, b) => a - b);
const median = times[times.length >> 1];
const result = {
  impl: 'memgpt',
  device,
  machine: device === 'cpu' ? `${cpus()[0]?.model ?? 'unknown CPU'}, ${mg.numThreads()} threads` : mg.cudaStatus().reason,
  preset,
  batch,
  segments,
  parameters: model.parameterCount(),
  medianStepSeconds: median,
  tokensPerSecond: (batch * N) / median,
  peakBytes: mg.memory(device).peakBytes,
  losses,
};
optimizer.dispose();
model.dispose();
console.log(flags.json ? JSON.stringify(result) : Object.entries(result).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.map((x) => x.toFixed(4)).join(' ') : v}`).join('\n'));
