// What the memory costs a training step: the tiny (or another) preset with its memory against the same model with
// memSlots = 0, timed in one process with the two models' steps interleaved (so that a machine whose speed drifts
// — a shared VM — slows both alike), median of many steps, one thread by default. Results in
// bench/results/memory-cost-cpu.json. The target of the memory-on-real-text work: at most 1.15×.
// Usage: MEMGPT_NUM_THREADS=1 npx tsx bench/memory-cost.ts [--preset tiny] [--steps 200] [--json]
import { parseArgs } from 'node:util';
import { cpus } from 'node:os';

import * as mg from '../lib/index.js';
import { presets, type ModelConfig, type PresetName } from '../lib/nn/config.js';
import { MemGPT } from '../lib/nn/model.js';
import { recipeFor } from '../lib/train/trainer.js';
import { flopsPerToken } from '../lib/cli/bench/flops.js';

const { values: f } = parseArgs({ options: { preset: { type: 'string', default: 'tiny' }, steps: { type: 'string', default: '200' }, json: { type: 'boolean', default: false } } });
const preset = f.preset as PresetName;
const recipe = recipeFor(preset);
const B = recipe.batchSize, K = recipe.segments;
const variants: [string, Partial<ModelConfig>][] = [
  ['memSlots 0', { memSlots: 0 }], ['SPEC v2 memory', { specVersion: 2 }], ['SPEC v1 memory', { specVersion: 1 }],
];
const runs = variants.map(([name, over]) => {
  const cfg = { ...presets[preset], ...over };
  const model = MemGPT.init(cfg, { seed: 0 });
  const params = [...model.params.values()];
  const optimizer = new mg.AdamW(params, { lr: 1e-3, weightDecay: 0.1 });
  const N = K * cfg.segmentLen;
  const rng = new mg.Rng(1);
  const tokens = Int32Array.from({ length: B * (N + 1) }, () => rng.int(cfg.vocabSize));
  return { name, cfg, model, params, optimizer, tokens, times: [] as number[], tokensPerStep: B * N };
});
const step = (r: (typeof runs)[number]) => {
  const t0 = performance.now();
  mg.tidy(() => r.model.forward(r.tokens, B, K).loss.backward());
  mg.clipGradNorm(r.params, 1);
  r.optimizer.step();
  r.optimizer.zeroGrad();
  return performance.now() - t0;
};
const steps = Number(f.steps);
for (let i = 0; i < steps + 10; i++) {
  for (const r of runs) {
    const ms = step(r);
    if (i >= 10) r.times.push(ms);
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const base = median(runs[0].times);
const result = {
  preset, batch: B, segments: K, steps, threads: mg.numThreads(), machine: cpus()[0]?.model ?? 'unknown CPU', date: new Date().toISOString(),
  runs: runs.map((r) => ({
    name: r.name, memSlots: r.cfg.memSlots, specVersion: r.cfg.specVersion, medianStepMs: median(r.times),
    tokensPerSecond: (r.tokensPerStep / median(r.times)) * 1000, costOverMemSlots0: median(r.times) / base,
    flopsPerToken: flopsPerToken(r.cfg).trainPerToken, flopsOverMemSlots0: flopsPerToken(r.cfg).trainPerToken / flopsPerToken(runs[0].cfg).trainPerToken,
  })),
};
for (const r of runs) { r.optimizer.dispose(); r.model.dispose(); }
if (f.json) console.log(JSON.stringify(result, null, 1));
else for (const r of result.runs) console.log(`${r.name.padEnd(16)} ${r.medianStepMs.toFixed(2)} ms/step  ${r.tokensPerSecond.toFixed(0)} tok/s  ${r.costOverMemSlots0.toFixed(3)}× time  ${r.flopsOverMemSlots0.toFixed(3)}× FLOPs`);
