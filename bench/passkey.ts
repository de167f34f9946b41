// Pass-key experiments (issue 4's acceptance task): trains the tiny model on
// 4 segments of 64 bytes with the key in the first and the question in the
// last, and prints the answer-digit loss (ln 10 = 2.30 is chance) and each
// layer's memory diagnostics (read gate / write gate / pointer entropy).
// Usage: npx tsx bench/passkey.ts [--mem-slots 8] [--steps 2000] [--lr 1e-3] [--gate-bias -2]
//          [--positional rope|sinusoidal] [--answer-weight 20] [--seed 0]
import { parseArgs } from 'node:util';

import * as mg from '../lib/index.js';
import { yieldToEventLoop } from '../lib/commands.js';
import { presets } from '../lib/config.js';
import { BatchSampler, passkeyCorpus } from '../lib/data/index.js';
import { MemGPT } from '../lib/model.js';

const { values: f } = parseArgs({
  options: {
    'mem-slots': { type: 'string', default: '8' }, steps: { type: 'string', default: '2000' }, lr: { type: 'string', default: '1e-3' },
    'gate-bias': { type: 'string', default: '-2' }, positional: { type: 'string', default: 'rope' },
    'answer-weight': { type: 'string', default: '20' }, seed: { type: 'string', default: '0' },
  },
});
const [memSlots, steps, lr, gateBias, answerWeight, seed] = ['mem-slots', 'steps', 'lr', 'gate-bias', 'answer-weight', 'seed'].map((k) => Number(f[k as keyof typeof f]));
const shape = { segments: 4, segmentLen: 64 };
const model = MemGPT.init({ ...presets.tiny, segmentLen: 64, memSlots, positional: f.positional as 'rope' | 'sinusoidal' }, { seed });
for (const [name, p] of model.params) {
  if (name.endsWith('mem.gate.bias') || name.endsWith('mem.update.bias')) p.storage.backend.copyFromHost(p.handle, 0, new Float32Array(p.size).fill(gateBias));
}
const params = [...model.params.values()];
const optimizer = new mg.AdamW(params, { lr, weightDecay: 0.01, betas: [0.9, 0.95] });
const sampler = new BatchSampler(passkeyCorpus(4096, seed, shape), { batchSize: 16, segments: 4, segmentLen: 64, order: 'random', seed });
for (let step = 1; step <= steps; step++) {
  const batch = sampler.next();
  // Full language modelling of the filler, with the answer digits weighted up.
  const weights = Float32Array.from(batch.mask!, (m) => (m ? answerWeight : 1));
  mg.tidy(() => model.forward(batch.tokens, 16, 4, weights).loss.backward());
  mg.clipGradNorm(params, 1);
  optimizer.step(step < 30 ? (lr * step) / 30 : lr);
  optimizer.zeroGrad();
  if (step % 100 === 0 || step === steps) {
    const out = mg.noGrad(() => mg.tidy(() => {
      const r = model.forward(batch.tokens, 16, 4, batch.mask!, { diagnostics: true });
      r.loss.dispose();
      return { answerLoss: r.nllSum / r.tokens, memory: r.diagnostics };
    }));
    console.log(JSON.stringify({ step, memSlots, positional: f.positional, gateBias, lr, ...out }));
  }
  await yieldToEventLoop();
}
optimizer.dispose();
model.dispose();
