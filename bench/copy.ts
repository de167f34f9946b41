// Segmented-copy experiments (the memory's acceptance task): 24 random symbols, '|', the same 24
// again, in segments of 8 tokens; the copied half is 3 segments after its source, so only the
// memory can carry it. Prints the loss on the copied half and, now and then, greedy token accuracy
// (teacher-forced) on fresh samples. Fresh samples every step. --easy-until S: periodic samples
// (the 24 symbols are 8 repeated) with a probability falling to 0 at step S.
// Best so far (2026-11-23, seed 0): --positional rope --lr 1e-3 --easy-until 3000 --steps 10000 → 79.6% token
// accuracy and still rising; sinusoidal or lr 3e-3 stayed at chance.
// Usage: npx tsx bench/copy.ts [--mem-slots 8] [--steps 3000] [--lr 3e-3] [--positional rope|sinusoidal] [--easy-until S]
import { parseArgs } from 'node:util';

import * as mg from '../lib/index.js';
import { yieldToEventLoop } from '../lib/cli/train.js';
import { presets } from '../lib/nn/config.js';
import { segmentedCopyCorpus, segmentedCopyLayout } from '../lib/data/index.js';
import { Decoder } from '../lib/infer/single-decoder.js';
import { MemGPT } from '../lib/nn/model.js';
import { Rng } from '../lib/core/random.js';
import { applyInitOverrides } from './init-overrides.js';

const { values: f } = parseArgs({
  options: {
    'mem-slots': { type: 'string', default: '8' }, steps: { type: 'string', default: '3000' }, lr: { type: 'string', default: '3e-3' },
    positional: { type: 'string', default: 'sinusoidal' }, init: { type: 'string', default: '' }, bias: { type: 'string', default: '' },
    seed: { type: 'string', default: '0' }, 'batch-size': { type: 'string', default: '32' }, 'log-every': { type: 'string', default: '100' },
    heads: { type: 'string', default: '2' }, layers: { type: 'string', default: '2' }, dmodel: { type: 'string', default: '64' },
    alphabet: { type: 'string', default: '16' }, 'easy-until': { type: 'string', default: '0' },
  },
});
const num = (k: keyof typeof f) => Number(f[k]);
const [memSlots, steps, lr, seed, B] = (['mem-slots', 'steps', 'lr', 'seed', 'batch-size'] as const).map(num);
const layout = segmentedCopyLayout({ alphabet: num('alphabet') });
const { segmentLen: T, segments: K, sampleLen: N } = layout;
const model = MemGPT.init({
  ...presets.tiny, segmentLen: T, memSlots, nHeads: num('heads'), nLayers: num('layers'), dModel: num('dmodel'), dFF: 4 * num('dmodel'),
  positional: f.positional as 'rope' | 'sinusoidal',
}, { seed });
applyInitOverrides(model, f.init!, f.bias!, seed);

// easiness e in [0, 1]: with probability e a sample is periodic (its 24 symbols are 8 repeated,
// so the last segment written holds everything the copy needs), a curriculum like the pass key's.
function batchOf(count: number, dataSeed: number, e = 0): { tokens: Int32Array; mask: Float32Array } {
  const corpus = segmentedCopyCorpus(count, dataSeed, { alphabet: layout.alphabet });
  const tokens = new Int32Array(count * (N + 1));
  const mask = new Float32Array(count * N);
  const rng = new Rng(dataSeed + 5);
  for (let j = 0; j < count; j++) {
    tokens.set(corpus.tokens.subarray(j * N, j * N + N + 1), j * (N + 1));
    if (rng.uniform() < e) {
      const row = tokens.subarray(j * (N + 1), (j + 1) * (N + 1));
      const s = layout.symbols, p = layout.padding;
      for (let i = T; i < s; i++) row[p + i] = row[p + (i % T)];
      for (let i = 0; i < s; i++) row[p + s + 1 + i] = row[p + i];
    }
    for (let i = 0; i < N; i++) mask[j * N + i] = corpus.lossMask![j * N + i + 1];
  }
  return { tokens, mask };
}

/** Greedy, teacher-forced token accuracy on the copied half of fresh samples. */
function accuracy(count: number, dataSeed: number): number {
  const { tokens, mask } = batchOf(count, dataSeed);
  let right = 0, total = 0;
  for (let j = 0; j < count; j++) {
    const decoder = new Decoder(model);
    try {
      for (let i = 0; i < N; i++) {
        decoder.feed(tokens[j * (N + 1) + i]);
        if (!mask[j * N + i]) continue;
        const dist = decoder.distribution();
        let best = 0;
        for (let v = 1; v < dist.length; v++) if (dist[v] > dist[best]) best = v;
        right += best === tokens[j * (N + 1) + i + 1] ? 1 : 0;
        total++;
      }
    } finally {
      decoder.dispose();
    }
  }
  return right / total;
}

const params = [...model.params.values()];
const optimizer = new mg.AdamW(params, { lr, weightDecay: 0.01, betas: [0.9, 0.95] });
const start = performance.now();
for (let step = 1; step <= steps; step++) {
  const { tokens, mask } = batchOf(B, seed * 1_000_003 + step, Math.max(0, 1 - step / num('easy-until')));
  let loss = 0;
  let diagnostics: unknown;
  mg.tidy(() => {
    const r = model.forward(tokens, B, K, mask, { diagnostics: step % num('log-every') === 0 });
    loss = r.loss.item();
    diagnostics = r.diagnostics?.map((d) => [d.readGate, d.writeGate, d.pointerEntropy].map((x) => +x.toFixed(3)));
    r.loss.backward();
  });
  mg.clipGradNorm(params, 1);
  optimizer.step(step < 50 ? (lr * step) / 50 : lr * (0.1 + 0.45 * (1 + Math.cos((Math.PI * step) / steps))));
  optimizer.zeroGrad();
  if (step % num('log-every') === 0 || step === steps) {
    const acc = step % (num('log-every') * 5) === 0 || step === steps ? { acc: accuracy(50, 999_999 + seed) } : {};
    console.log(JSON.stringify({ step, s: Math.round((performance.now() - start) / 1000), loss: +loss.toFixed(4), memory: diagnostics, ...acc }));
  }
  await yieldToEventLoop();
}
optimizer.dispose();
model.dispose();
