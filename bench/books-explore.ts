// Books exploration (the lab notebook behind the books benchmark's recipe and SPEC v2): trains one model on a
// books corpus with its own loop and knobs the library does not have — init overrides by parameter-name regex (--init 'mem.init=1', --bias 'mem.update.bias=-1'), per-group
// learning-rate multipliers (--lr-mult 'mem|ptr=3') — then scores the held-out documents in stream mode
// and prints one JSON line: bits/byte, the loss by position in the document, gates, tokens/s.
// Design variants on top of SPEC v1 (--spec-version 1): --read joint|positional, --ptr-bias STRENGTH, --ptr-pos
// STD, --gate-pos, --cheat-write (the memory forced to hold the last S tokens: does the read use it at all?).
// --read positional --ptr-bias 8 on v1 is SPEC v2, which the model computes itself with --spec-version 2.
// Usage: npx tsx bench/books-explore.ts --corpus kjv --mem-slots 8 --seg-len 32 --segments 4 --steps 3000 --probe
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import * as mg from '../lib/index.js';
import { presets, type PresetName } from '../lib/nn/config.js';
import { ensureBookCorpus, type BookCorpusName } from '../lib/cli/bench/books/corpora.js';
import { bucketLosses, memoryProbe, scoreDocument } from '../lib/cli/bench/books/score.js';
import { loadCorpus, getTokenizer, BatchSampler } from '../lib/data/index.js';
import { learningRate } from '../lib/train/trainer.js';
import { MemGPT, restartShiftRegister } from '../lib/nn/model.js';
import { applyInitOverrides } from './init-overrides.js';

const { values: f } = parseArgs({
  options: {
    corpus: { type: 'string', default: 'kjv' }, preset: { type: 'string', default: 'tiny' },
    'mem-slots': { type: 'string' }, 'seg-len': { type: 'string' }, segments: { type: 'string', default: '4' },
    'batch-size': { type: 'string', default: '8' }, steps: { type: 'string', default: '3000' }, lr: { type: 'string', default: '1e-3' },
    seed: { type: 'string', default: '0' },
    init: { type: 'string', default: '' }, bias: { type: 'string', default: '' }, 'lr-mult': { type: 'string', default: '' },
    'weight-decay': { type: 'string', default: '0.1' }, warmup: { type: 'string', default: '100' }, 'eval-tokens': { type: 'string', default: '0' },
    'log-every': { type: 'string', default: '500' }, probe: { type: 'boolean', default: false }, tag: { type: 'string', default: '' },
    'ptr-pos': { type: 'string', default: '0' }, 'gate-pos': { type: 'boolean', default: false }, 'cheat-write': { type: 'boolean', default: false },
    read: { type: 'string', default: 'gated' }, 'ptr-pos-init': { type: 'string', default: '' }, 'ptr-bias': { type: 'string', default: '' }, 'spec-version': { type: 'string', default: '2' },
  },
});
const num = (k: keyof typeof f) => Number(f[k]);
const preset = presets[f.preset as PresetName];
const cfg = {
  ...preset, memSlots: f['mem-slots'] !== undefined ? num('mem-slots') : preset.memSlots, segmentLen: f['seg-len'] !== undefined ? num('seg-len') : preset.segmentLen,
  specVersion: num('spec-version') as 1 | 2,
};
if (cfg.specVersion === 2 && (f.read !== 'gated' || f['ptr-bias'] !== '' || f['cheat-write'])) throw new Error('the design variants start from SPEC v1: add --spec-version 1');
const [segments, B, steps, lr, seed] = [num('segments'), num('batch-size'), num('steps'), num('lr'), num('seed')];
const corpus = ensureBookCorpus(f.corpus as BookCorpusName);
const tokenizer = getTokenizer('byte');
const train = loadCorpus(`${corpus.dir}/train`, tokenizer);
const model = MemGPT.init(cfg, { seed });
applyInitOverrides(model, f.init!, f.bias!, seed);
// --ptr-pos-init STRENGTH:SLOTS (SPEC v2): only the last SLOTS slots start as the shift register, the rest unbiased.
if (f['ptr-pos-init']) {
  const [strength, slots] = f['ptr-pos-init'].split(':').map(Number);
  restartShiftRegister(model, slots, strength);
}
// Design variants, as extra parameters beside the model's: a learned position table added to the write candidates
// (--ptr-pos STD: the pointer can address positions; the candidates say where they came from), and a learned read-gate
// bias per position and head (--gate-pos).
const extra = new Map<string, mg.Parameter>();
const xrng = new mg.Rng(seed + 5);
for (let l = 0; l < cfg.nLayers && cfg.memSlots > 0; l++) {
  if (num('ptr-pos') > 0) {
    const v = new Float32Array(cfg.segmentLen * cfg.dModel);
    xrng.fillNormal(v, 0, num('ptr-pos'));
    extra.set(`layers.${l}.ptr.pos`, mg.parameter(mg.tensor(v, [cfg.segmentLen, cfg.dModel]), `layers.${l}.ptr.pos`));
  }
  if (f['ptr-bias'] !== '') {
    // The pointer's positional bias [S, T], starting as a shift register: slot s prefers token T − S + s by ptr-bias.
    const v = new Float32Array(cfg.memSlots * cfg.segmentLen);
    for (let j = 0; j < cfg.memSlots; j++) { const t = cfg.segmentLen - cfg.memSlots + j; if (t >= 0) v[j * cfg.segmentLen + t] = num('ptr-bias'); }
    extra.set(`layers.${l}.ptr.bias`, mg.parameter(mg.tensor(v, [cfg.memSlots, cfg.segmentLen]), `layers.${l}.ptr.bias`));
  }
  if (f['gate-pos']) extra.set(`layers.${l}.mem.gate.pos`, mg.parameter(mg.zeros([cfg.segmentLen, cfg.nHeads]), `layers.${l}.mem.gate.pos`));
}
if (extra.size || f['cheat-write'] || f.read !== 'gated') {
  const modelAny = model as unknown as { segment: MemGPT['segment'] };
  modelAny.segment = (x, memory) => variantSegment(x, memory);
}
function variantSegment(x: mg.Tensor, memory: mg.Tensor[]): { hf: mg.Tensor; memory: mg.Tensor[] } {
  const { dModel: D, nHeads: H, memSlots: S } = cfg;
  const T = x.shape[1];
  const W = (n: string) => model.params.get(n)!;
  let h = mg.embedding(x, W('tok_emb'));
  const next: mg.Tensor[] = [];
  for (let l = 0; l < cfg.nLayers; l++) {
    const P = (n: string) => W(`layers.${l}.${n}`);
    const u = mg.layerNorm(h, P('ln1.weight'), P('ln1.bias'));
    const qkv = mg.linear(u, P('attn.qkv.weight'), P('attn.qkv.bias'));
    const M = memory[l];
    const mkv = mg.linear(mg.layerNorm(M, P('mem.ln.weight'), P('mem.ln.bias')), P('mem.kv.weight'), P('mem.kv.bias'));
    let gateLogits = mg.linear(u, P('mem.gate.weight'), P('mem.gate.bias'));
    const gpos = extra.get(`layers.${l}.mem.gate.pos`);
    if (gpos) gateLogits = mg.add(gateLogits, T === cfg.segmentLen ? gpos : sliceRows(gpos, T));
    const o = mg.attention(qkv, { nHeads: H, rope: true, memKV: mkv, gateLogits, memoryRead: f.read as mg.MemoryRead });
    h = mg.add(h, mg.linear(o, P('attn.out.weight'), P('attn.out.bias')));
    const z = mg.linear(mg.layerNorm(h, P('ln2.weight'), P('ln2.bias')), P('ffn.fc1.weight'), P('ffn.fc1.bias'), { activation: 'gelu' });
    h = mg.add(h, mg.linear(z, P('ffn.fc2.weight'), P('ffn.fc2.bias')));
    let c = mg.layerNorm(h, P('ptr.ln.weight'), P('ptr.ln.bias'));
    const ppos = extra.get(`layers.${l}.ptr.pos`);
    if (ppos) c = mg.add(c, T === cfg.segmentLen ? ppos : sliceRows(ppos, T));
    if (f['cheat-write']) {
      // Diagnostic: the memory becomes the last S tokens' write candidates c, as if the pointer were a perfect shift register.
      const sel = new Float32Array(S * T);
      for (let s = 0; s < S && s < T; s++) sel[s * T + (T - 1 - s)] = 1;
      next.push(mg.matmul(mg.tensor(sel, [S, T]), c));
      continue;
    }
    const mq = mg.linear(M, P('ptr.q.weight'), null);
    next.push(mg.memoryWrite(M, mq, mg.linear(c, P('ptr.k.weight'), null), mg.linear(c, P('ptr.v.weight'), null), P('mem.update.weight'), P('mem.update.bias'),
      { pointerBias: extra.get(`layers.${l}.ptr.bias`) }));
    void S;
  }
  return { hf: mg.layerNorm(h, W('ln_f.weight'), W('ln_f.bias')), memory: next };
}
// The first rows of a table (no gradient: only the stream's last, partial segment takes this path).
function sliceRows(t: mg.Tensor, rows: number): mg.Tensor {
  const a = t.toArray() as Float32Array;
  return mg.tensor(a.slice(0, rows * t.shape[1]), [rows, t.shape[1]]);
}
const params = [...model.params.values(), ...extra.values()];
const groups = f['lr-mult']!.split(',').filter(Boolean).map((kv) => kv.split('=')).map(([k, v]) => [new RegExp(k), Number(v)] as const);
const noDecay = [...model.params, ...extra].filter(([n, p]) => p.rank < 2 || n.endsWith('mem.init')).map(([, p]) => p);
// One AdamW per learning-rate multiplier, so that groups can move at their own rate.
const byMult = new Map<number, mg.Parameter[]>();
for (const [name, p] of [...model.params, ...extra]) {
  const mult = groups.find(([re]) => re.test(name))?.[1] ?? 1;
  byMult.set(mult, [...(byMult.get(mult) ?? []), p]);
}
const optimizers = [...byMult].map(([mult, ps]) => ({ mult, opt: new mg.AdamW(ps, { lr, weightDecay: num('weight-decay'), betas: [0.9, 0.95], eps: 1e-8, noDecay: noDecay.filter((p) => ps.includes(p)) }) }));
const T = cfg.segmentLen, N = segments * T;
const schedule = { lr, warmup: num('warmup'), steps, schedule: 'cosine' as const, minLrRatio: 0.1 };
const windows = new BatchSampler(train, { batchSize: B, segments, segmentLen: T, order: 'random', seed });
const gates: unknown[] = [];
const t0 = performance.now();
let lossAvg = 0;
for (let step = 0; step < steps; step++) {
  const batch = windows.next();
  const diag = step % num('log-every') === 0 || step === steps - 1;
  const out = mg.tidy(() => {
    const r = model.forward(batch.tokens, B, segments, batch.mask ?? undefined, { diagnostics: diag });
    r.loss.backward();
    return { loss: r.nllSum / r.tokens, diagnostics: r.diagnostics };
  });
  lossAvg = step === 0 ? out.loss : 0.98 * lossAvg + 0.02 * out.loss;
  mg.clipGradNorm(params, 1);
  const rate = learningRate(schedule, step);
  for (const { mult, opt } of optimizers) { opt.step(rate * mult); opt.zeroGrad(); }
  if (diag) {
    gates.push({ step, loss: +lossAvg.toFixed(4), memory: out.diagnostics?.map((d) => ({ r: +d.readGate.toFixed(3), w: +d.writeGate.toFixed(3), h: +d.pointerEntropy.toFixed(3) })) });
    console.error(`${f.tag} step ${step} loss ${lossAvg.toFixed(4)} ${JSON.stringify(gates.at(-1))} ${((step + 1) * B * N / ((performance.now() - t0) / 1000)).toFixed(0)} tok/s`);
  }
}
const trainSeconds = (performance.now() - t0) / 1000;
const evalTokens = num('eval-tokens') || undefined;
const docs = corpus.heldOut.map((d) => tokenizer.encode(readFileSync(d.path)));
const scores = docs.map((d) => scoreDocument(model, d, { maxTokens: evalTokens }));
const nll = scores.reduce((a, s) => a + s.nllSum, 0), toks = scores.reduce((a, s) => a + s.tokens, 0);
const result: Record<string, unknown> = {
  tag: f.tag, corpus: f.corpus, config: cfg, segments, batch: B, steps, lr, seed, init: f.init, bias: f.bias, lrMult: f['lr-mult'], ptrPos: num('ptr-pos'), gatePos: f['gate-pos'], cheatWrite: f['cheat-write'], read: f.read, ptrBias: f['ptr-bias'],
  bitsPerByte: nll / toks / Math.LN2, buckets: bucketLosses(scores).map((b) => ({ ...b, bpb: +(b.loss / Math.LN2).toFixed(4) })),
  byOffset: scores[0].offsetNll.map((_, t) => +(scores.reduce((a, s) => a + s.offsetNll[t], 0) / scores.reduce((a, s) => a + s.offsetTokens[t], 0) / Math.LN2).toFixed(3)),
  trainTokensPerSecond: (steps * B * N) / trainSeconds, gates,
};
if (f.probe && cfg.memSlots > 0) {
  const order = docs.map((d, i) => [d.length, i]).sort((a, b) => b[0] - a[0]);
  const a = docs[order[0][1]];
  const b = docs.length > 1 ? docs[order[1][1]] : tokenizer.encode(readFileSync(corpus.train[0].path));
  result.probe = memoryProbe(model, a, b, 32, Math.min(a.length - 1, 32 * T + 128 * T));
}
console.log(JSON.stringify(result));
