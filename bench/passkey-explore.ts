// Pass-key exploration (the lab notebook behind lib/tasks/passkey.ts's recipe): trains a tiny model
// with its own loop on fresh documents every step, with knobs the library does not have — segment
// count and length, key placement (--key-at random|end|fill), curricula (--easy sentence|blank|
// digits|digits-all|distance with --easy-until STEP), initial std / bias overrides by parameter-name
// regex (--init, --bias) — and prints the answer-digit loss (ln 10 = 2.30 is chance), each layer's
// read gate / write gate / pointer entropy, and now and then greedy accuracy. What each knob did is
// in the closing notes of the sessions that used it; bench/passkey.ts is the acceptance run through the library.
// Usage: npx tsx bench/passkey-explore.ts --seg-len 32 --segments 2 --eval-segments 2 --steps 4000 --lr 3e-3 --easy-until 2000 --easy digits
import { parseArgs } from 'node:util';

import * as mg from '../lib/index.js';
import { yieldToEventLoop } from '../lib/cli/train.js';
import { presets } from '../lib/nn/config.js';
import { passkeyDocument } from '../lib/data/index.js';
import { passkeyAccuracy } from '../lib/tasks/passkey.js';
import { MemGPT } from '../lib/nn/model.js';
import { applyInitOverrides } from './init-overrides.js';
import { Rng } from '../lib/core/random.js';

const { values: f } = parseArgs({
  options: {
    'mem-slots': { type: 'string', default: '8' }, steps: { type: 'string', default: '2000' }, lr: { type: 'string', default: '1e-3' },
    segments: { type: 'string', default: '4' }, 'filler-weight': { type: 'string', default: '0' }, positional: { type: 'string', default: 'rope' },
    init: { type: 'string', default: '' }, bias: { type: 'string', default: '' }, seed: { type: 'string', default: '0' },
    'batch-size': { type: 'string', default: '16' }, 'eval-segments': { type: 'string', default: '4' }, 'log-every': { type: 'string', default: '100' },
    'seg-len': { type: 'string', default: '64' }, heads: { type: 'string', default: '2' }, layers: { type: 'string', default: '2' }, 'key-at': { type: 'string', default: 'random' },
    'easy-until': { type: 'string', default: '0' }, easy: { type: 'string', default: 'sentence' },
  },
});
const num = (k: keyof typeof f) => Number(f[k]);
const [memSlots, steps, lr, segments, fillerWeight, seed, B] = (['mem-slots', 'steps', 'lr', 'segments', 'filler-weight', 'seed', 'batch-size'] as const).map(num);
const T = num('seg-len');
const model = MemGPT.init({ ...presets.tiny, segmentLen: T, memSlots, nHeads: num('heads'), nLayers: num('layers'), positional: f.positional as 'rope' | 'sinusoidal' }, { seed });
applyInitOverrides(model, f.init!, f.bias!, seed);
const params = [...model.params.values()];
const optimizer = new mg.AdamW(params, { lr, weightDecay: 0.01, betas: [0.9, 0.95] });
const dataRng = new Rng(seed);
const N = segments * T;
const start = performance.now();
// --key-at end: the key's digits are the last 5 bytes of segment 0 (same in-segment offsets as the answer).
// --easy-until S: a curriculum; at step s < S a document is "easy" with probability 1 − s/S: its
// first segment is the key sentence repeated, so the memory sees the key wherever it points.
let currentStep = 0;
function makeDocument(): { text: string; answerStart: number } {
  if (f.easy === 'distance' && currentStep < num('easy-until')) {
    // The key moves from the segment next to the question (e = 1) to the first (e = 0); with
    // probability e its segment is the key digits repeated.
    const e = 1 - currentStep / num('easy-until');
    const s = dataRng.int(Math.ceil(e * (segments - 2)) + 1);
    const d = passkeyDocument(dataRng, { segments: segments - s, segmentLen: T });
    const pad = passkeyDocument(dataRng, { segments: 4, segmentLen: T }).text.slice(T, T + s * T);
    const key = d.text.slice(-5);
    const phase = dataRng.int(5);
    const keyPart = dataRng.uniform() < e ? key.repeat(Math.ceil(T / 5) + 1).slice(phase, phase + T) : d.text.slice(0, T);
    return { text: pad + keyPart + d.text.slice(T), answerStart: N + 1 - 5 };
  }
  if (f.easy === 'digits-all' && currentStep < num('easy-until')) {
    // Each segment but the last is the key digits with probability e (the easiness), independently.
    const e = 1 - currentStep / num('easy-until');
    const d = passkeyDocument(dataRng, { segments, segmentLen: T });
    const key = d.text.slice(-5);
    let text = '';
    for (let s = 0; s < segments - 1; s++) {
      const phase = dataRng.int(5);
      text += dataRng.uniform() < e ? key.repeat(Math.ceil(T / 5) + 1).slice(phase, phase + T) : d.text.slice(s * T, (s + 1) * T);
    }
    return { text: text + d.text.slice((segments - 1) * T), answerStart: d.answerStart };
  }
  if (currentStep < num('easy-until') && dataRng.uniform() < 1 - currentStep / num('easy-until')) {
    const d = passkeyDocument(dataRng, { segments, segmentLen: T });
    const key = d.text.slice(-5);
    if (f.easy === 'blank') return { text: d.text.slice(0, T).replace(/[^0-9]/g, ' ').replace(/^ *[0-9]/, (m) => m) + d.text.slice(T), answerStart: d.answerStart };
    const sentence = f.easy === 'digits' ? key : `The pass key is ${key}. `;
    const shift = dataRng.int(sentence.length);
    return { text: sentence.repeat(Math.ceil(T / sentence.length) + 1).slice(shift, shift + T) + d.text.slice(T), answerStart: d.answerStart };
  }
  if (f['key-at'] === 'fill') {
    const d = passkeyDocument(dataRng, { segments: 4, segmentLen: T });
    const key = d.text.slice(-5);
    return { text: key.repeat(T).slice(0, T) + d.text.slice(T, 3 * T).slice(0, (segments - 2) * T) + d.text.slice(3 * T), answerStart: N + 1 - 5 };
  }
  if (f['key-at'] !== 'end') return passkeyDocument(dataRng, { segments, segmentLen: T });
  const d = passkeyDocument(dataRng, { segments: 4, segmentLen: T });
  const key = d.text.slice(-5);
  const text = d.text.slice(T, 2 * T - 21) + 'The pass key is ' + key + d.text.slice(T, 3 * T).slice(0, (segments - 2) * T) + d.text.slice(3 * T);
  return { text, answerStart: N + 1 - 5 };
}
for (let step = 1; step <= steps; step++) {
  currentStep = step;
  const tokens = new Int32Array(B * (N + 1));
  const weights = new Float32Array(B * N).fill(fillerWeight);
  for (let b = 0; b < B; b++) {
    const doc = makeDocument();
    for (let i = 0; i <= N; i++) tokens[b * (N + 1) + i] = doc.text.charCodeAt(i);
    weights.fill(1, b * N + doc.answerStart - 1, b * N + N);
  }
  let loss = 0;
  mg.tidy(() => {
    const r = model.forward(tokens, B, segments, weights);
    loss = r.loss.item();
    r.loss.backward();
  });
  mg.clipGradNorm(params, 1);
  optimizer.step(step < 50 ? (lr * step) / 50 : lr);
  optimizer.zeroGrad();
  if (step % num('log-every') === 0 || step === steps) {
    const mask = new Float32Array(B * N);
    for (let b = 0; b < B; b++) mask.fill(1, b * N + N - 5, b * N + N);
    const out = mg.noGrad(() => mg.tidy(() => {
      const r = model.forward(tokens, B, segments, mask, { diagnostics: true });
      r.loss.dispose();
      return { answerLoss: +(r.nllSum / r.tokens).toFixed(4), memory: r.diagnostics?.map((d) => [d.readGate, d.writeGate, d.pointerEntropy].map((x) => +x.toFixed(3))) };
    }));
    const acc = step % (num('log-every') * 5) === 0 || step === steps ? { acc: passkeyAccuracy(model, { segments: num('eval-segments'), segmentLen: T }, 50, seed + 1_000_003).exact } : {};
    console.log(JSON.stringify({ step, s: Math.round((performance.now() - start) / 1000), loss: +loss.toFixed(4), ...out, ...acc }));
  }
  await yieldToEventLoop();
}
optimizer.dispose();
model.dispose();
