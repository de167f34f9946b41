// The whole model (SPEC.md §3) computed with the native ops: its loss equals the
// plain-loops float64 reference for every structural variant, and its gradient
// — memory carried across 3 segments — agrees with finite differences.
import { describe, expect, it } from 'vitest';

import * as mg from '../lib/index.js';
import { resolveConfig, type ModelConfig } from '../lib/nn/config.js';
import { MemGPT, restartShiftRegister, setWriteGateBias } from '../lib/nn/model.js';
import { expectNoLeaks } from './helpers.js';
import { referenceSampleNLL, type RefParams } from './reference_model.js';
import { randomModel, refParams, randomTokens } from './models.js';

const small: Partial<ModelConfig> = { vocabSize: 256, dModel: 16, nHeads: 2, dFF: 24, nLayers: 2, segmentLen: 5, memSlots: 3 };

describe('the whole model on the CPU', () => {
  const variants: Partial<ModelConfig>[] = [];
  for (const positional of ['rope', 'sinusoidal'] as const) {
    for (const copyHead of [true, false]) {
      for (const memSlots of [0, 3]) variants.push({ ...small, positional, copyHead, memSlots });
    }
    // SPEC v1 (the gated read, no pointer bias), which checkpoints of format "1" compute.
    variants.push({ ...small, positional, specVersion: 1 });
  }
  // More slots than tokens: the shift-register start of the pointer bias leaves the extra slots unbiased.
  variants.push({ ...small, memSlots: 7 });

  for (const variant of variants) {
    it(`loss equals the plain reference: ${variant.positional}, copyHead ${variant.copyHead ?? true}, memSlots ${variant.memSlots}, SPEC v${variant.specVersion ?? 2}`, () => {
      const cfg = resolveConfig(variant);
      const [batch, segments] = [2, 3];
      const N = segments * cfg.segmentLen;
      const model = randomModel(cfg, 7);
      try {
        const tokens = randomTokens(batch * (N + 1), 11);
        const params = refParams(model);
        let refSum = 0;
        for (let b = 0; b < batch; b++) {
          for (const v of referenceSampleNLL(cfg, params, tokens.subarray(b * (N + 1), (b + 1) * (N + 1)), segments)) refSum += v;
        }
        const refLoss = refSum / (batch * N);
        const out = mg.noGrad(() => model.forward(tokens, batch, segments));
        const loss = out.loss.item();
        out.loss.dispose();
        expect(out.tokens).toBe(batch * N);
        expect(Math.abs(loss - refLoss)).toBeLessThanOrEqual(2e-6 * Math.abs(refLoss));
      } finally {
        model.dispose();
      }
    });
  }

  it('a mask restricts the loss to the chosen tokens', () => {
    const cfg = resolveConfig(small);
    const model = randomModel(cfg, 3);
    try {
      const N = 2 * cfg.segmentLen;
      const tokens = randomTokens(N + 1, 5);
      const mask = new Float32Array(N);
      mask[3] = 1;
      mask[N - 1] = 1;
      const nll = referenceSampleNLL(cfg, refParams(model), tokens, 2);
      const out = mg.noGrad(() => model.forward(tokens, 1, 2, mask));
      expect(out.tokens).toBe(2);
      expect(out.loss.item()).toBeCloseTo((nll[3] + nll[N - 1]) / 2, 5);
      out.loss.dispose();
      expect(() => model.forward(tokens, 1, 2, new Float32Array(N))).toThrow(/the mask selects no token/);
    } finally {
      model.dispose();
    }
  });

  it('every parameter gradient agrees with finite differences, memory carried across 3 segments', () => {
    const cfg = resolveConfig(small);
    const [batch, segments] = [2, 3];
    const tokens = randomTokens(batch * (segments * cfg.segmentLen + 1), 21);
    const model = randomModel(cfg, 9);
    try {
      expectNoLeaks('cpu', () => {
        mg.tidy(() => model.forward(tokens, batch, segments).loss.backward());
        const lossAt = () => mg.noGrad(() => mg.tidy(() => model.forward(tokens, batch, segments).loss.item()));
        const rng = new mg.Rng(5);
        const eps = 1e-2;
        const failures: string[] = [];
        for (const [name, p] of model.params) {
          // A random direction per parameter tensor: the directional derivative g·r against a central difference.
          const r = Float32Array.from({ length: p.size }, () => (rng.uniform() < 0.5 ? -1 : 1) / Math.sqrt(p.size));
          const g = p.grad!.toArray();
          let analytic = 0;
          for (let i = 0; i < p.size; i++) analytic += g[i] * r[i];
          const base = p.toArray() as Float32Array;
          const write = (s: number) => p.storage.backend.copyFromHost(p.handle, 0, base.map((v, i) => v + s * eps * r[i]));
          write(1);
          const up = lossAt();
          write(-1);
          const down = lossAt();
          p.storage.backend.copyFromHost(p.handle, 0, base);
          const numeric = (up - down) / (2 * eps);
          if (!(Math.abs(analytic - numeric) <= 2e-4 + 2e-2 * Math.abs(numeric))) failures.push(`${name}: analytic ${analytic} numeric ${numeric}`);
          // The memory's initial state reaches the loss only through the memory: its gradient must not vanish.
          if (name.endsWith('mem.init')) expect(Math.abs(analytic)).toBeGreaterThan(1e-6);
        }
        expect(failures).toEqual([]);
        for (const p of model.params.values()) p.zeroGrad();
      });
    } finally {
      model.dispose();
    }
  });

  it('bfloat16 precision: the loss stays near the float64 reference and the float32 weights get nearly the same gradients', () => {
    const cfg = resolveConfig({ ...small, memSlots: 3, copyHead: true });
    const [batch, segments] = [2, 3];
    const N = segments * cfg.segmentLen;
    const model = randomModel(cfg, 5);
    const tokens = randomTokens(batch * (N + 1), 9);
    const run = () => {
      const out = model.forward(tokens, batch, segments);
      const loss = out.loss.item();
      out.loss.backward();
      out.loss.dispose();
      const grads = new Map([...model.params].map(([name, p]) => {
        expect(p.grad!.dtype).toBe('float32'); // master weights and their gradients stay float32
        const g = p.grad!.toArray() as Float32Array;
        p.zeroGrad();
        return [name, g];
      }));
      return { loss, grads };
    };
    try {
      const params = refParams(model);
      let refSum = 0;
      for (let b = 0; b < batch; b++) {
        for (const v of referenceSampleNLL(cfg, params, tokens.subarray(b * (N + 1), (b + 1) * (N + 1)), segments)) refSum += v;
      }
      const ref = refSum / (batch * N);
      const f32 = run();
      model.precision = 'bfloat16';
      const bf16 = run();
      // bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2%); the linear layers' inputs and weights
      // are rounded once each, through 2 layers and 3 segments: 1% of the loss bounds that with room, and the
      // float32 run shows it is the bf16 path that ran (it matches the reference 1000 times closer).
      expect(Math.abs(bf16.loss - ref)).toBeLessThan(0.01 * ref);
      expect(Math.abs(bf16.loss - ref)).toBeGreaterThan(10 * Math.abs(f32.loss - ref));
      let dot = 0, a2 = 0, b2 = 0;
      for (const [name, g] of f32.grads) {
        const h = bf16.grads.get(name)!;
        for (let i = 0; i < g.length; i++) { dot += g[i] * h[i]; a2 += g[i] * g[i]; b2 += h[i] * h[i]; }
      }
      expect(dot / Math.sqrt(a2 * b2)).toBeGreaterThan(0.999);
    } finally {
      model.dispose();
    }
  });

  it('rejects bad batches with clear errors', () => {
    const model = MemGPT.init(small, { device: 'cpu' });
    try {
      expect(() => model.forward(new Int32Array(10), 1, 2)).toThrow(/10 tokens given; 1 samples of 2×5\+1 need 11/);
      expect(() => model.forward(new Int32Array(11).fill(300), 1, 2)).toThrow(/token id 300 at index 0 is outside the vocabulary \(256\)/);
      expect(() => model.forward(new Int32Array(11), 0, 2)).toThrow(/must be positive integers/);
      expect(() => MemGPT.init({ ...small, nHeads: 3 })).toThrow(/dModel 16 is not divisible by nHeads 3/);
    } finally {
      model.dispose();
    }
  });

  it('a mask entry outside [0, 1] (NaN) is refused before the graph is built; a failed init frees what it made', () => {
    const model = MemGPT.init(small, { device: 'cpu' });
    try {
      const tokens = new Int32Array(2 * 11).fill(3);
      for (const bad of [NaN, -1, 2, Infinity]) {
        const mask = new Float32Array(2 * 10).fill(1);
        mask[3] = bad;
        // A NaN used to fail after the graph was built and leak all of it (about 200 tensors a call).
        expectNoLeaks('cpu', () => expect(() => model.forward(tokens, 2, 2, mask)).toThrow(`forward: mask entry 3 is ${bad}; a mask holds weights in [0, 1]`));
      }
    } finally {
      model.dispose();
    }
    // Init failing part-way (here: the fifth random fill; in practice, out of memory) frees the parameters made.
    const fill = mg.Rng.prototype.fillNormal;
    let calls = 0;
    mg.Rng.prototype.fillNormal = function (this: mg.Rng, ...args: Parameters<typeof fill>) {
      if (++calls === 5) throw new RangeError('Array buffer allocation failed');
      return fill.apply(this, args);
    };
    try {
      expectNoLeaks('cpu', () => expect(() => MemGPT.init(small, { device: 'cpu' })).toThrow(/^MemGPT.init: cannot allocate the parameters of this config \(Array buffer allocation failed\)$/));
    } finally {
      mg.Rng.prototype.fillNormal = fill;
    }
  });

  it("ptr.pos starts as a shift register of ⌈S/2⌉ slots; the init ablations set another count, or the write-gate bias", () => {
    const cfg = { ...small, memSlots: 4, segmentLen: 6 };
    const model = MemGPT.init(cfg, { device: 'cpu' });
    // slot j prefers token T − S + j by 8 nats when it is a register slot (the last `count` slots), else nothing
    const expected = (count: number) => Array.from({ length: 4 * 6 }, (_, i) => (Math.floor(i / 6) >= 4 - count && i % 6 === 6 - 4 + Math.floor(i / 6) ? 8 : 0));
    try {
      const pos = (l: number) => Array.from(model.params.get(`layers.${l}.ptr.pos`)!.toArray());
      expect(pos(0)).toEqual(expected(2));
      restartShiftRegister(model, 0);
      for (let l = 0; l < 2; l++) expect(pos(l)).toEqual(expected(0));
      restartShiftRegister(model, 4);
      for (let l = 0; l < 2; l++) expect(pos(l)).toEqual(expected(4));
      for (const bad of [-1, 5, 1.5]) expect(() => restartShiftRegister(model, bad)).toThrow(`register slots must be an integer in 0…4, got ${bad}`);
      setWriteGateBias(model, -2);
      for (let l = 0; l < 2; l++) expect(Array.from(model.params.get(`layers.${l}.mem.update.bias`)!.toArray())).toEqual(new Array(cfg.dModel).fill(-2));
    } finally {
      model.dispose();
    }
  });
});
