// tokenNLL (the fused output head): forward against plain float64 loops of SPEC §3 with the full softmax,
// with and without the copy head, tiles that do not divide the rows or the vocabulary, structured copy
// cases, finite-difference gradients of every differentiable input, bad input and leaks.
import { describe, expect, it } from 'vitest';

import * as mg from '../lib/index.js';
import { forEachDevice, expectClose, expectNoLeaks, randomArray, values } from './helpers.js';
import { refTokenNLL } from './reference_classifier.js';

function ids(n: number, vocab: number, seed: number): Int32Array {
  const rng = new mg.Rng(seed);
  return Int32Array.from({ length: n }, () => rng.int(vocab));
}

forEachDevice((device) => {
  const opts = { device };
  const intOpts = { device, dtype: 'int32' as const };

  // Host arrays and tensors of one problem; inputs drawn from a small id range so that copies happen.
  function problem(B: number, T: number, D: number, V: number, seed: number, scale = 1) {
    const host = {
      hf: randomArray(B * T * D, seed, -scale, scale),
      emb: randomArray(V * D, seed + 1, -scale, scale),
      targets: ids(B * T, Math.min(V, 4), seed + 2),
      cq: randomArray(B * T * D, seed + 3, -scale, scale),
      ck: randomArray(B * T * D, seed + 4, -scale, scale),
      gen: randomArray(B * T, seed + 5, -2, 2),
      inputs: ids(B * T, Math.min(V, 4), seed + 6),
    };
    const t = {
      hf: mg.tensor(host.hf, [B, T, D], opts),
      emb: mg.tensor(host.emb, [V, D], opts),
      targets: mg.tensor(host.targets, [B, T], intOpts),
      cq: mg.tensor(host.cq, [B, T, D], opts),
      ck: mg.tensor(host.ck, [B, T, D], opts),
      gen: mg.tensor(host.gen, [B, T], opts),
      inputs: mg.tensor(host.inputs, [B, T], intOpts),
    };
    const copyOf = () => ({ cq: t.cq, ck: t.ck, genLogit: t.gen, inputs: t.inputs });
    return { host, t, copyOf };
  }

  describe('tokenNLL forward', () => {
    it('structured: equal logits give log V; a one-hot hf picks its token', () => {
      mg.tidy(() => {
        const V = 5, D = 3;
        const zeros = mg.zeros([1, 2, D], opts);
        const emb = mg.tensor(randomArray(V * D, 1), [V, D], opts);
        const targets = mg.tensor(Int32Array.of(0, 4), [1, 2], intOpts);
        expectClose(values(mg.tokenNLL(zeros, emb, targets)), [Math.log(V), Math.log(V)], 1e-6, 1e-6);
        // emb = arange rows; hf = e_0 scaled: logits[v] = 10·emb[v, 0].
        const embA = mg.reshape(mg.arange(V * D, opts), [V, D]);
        const hf = mg.tensor([0.1, 0, 0], [1, 1, D], opts);
        const t = mg.tensor(Int32Array.of(2), [1, 1], intOpts);
        const logits = Array.from({ length: V }, (_, v) => 0.1 * v * D);
        const lse = Math.log(logits.reduce((s, l) => s + Math.exp(l), 0));
        expectClose(values(mg.tokenNLL(hf, embA, t)), [lse - logits[2]], 1e-6, 1e-6);
      });
    });

    for (const V of [5, 11, 300]) {
      for (const B of [1, 2]) {
        for (const T of [1, 4, 9]) {
          for (const D of [3, 8]) {
            it(`V ${V}, B ${B}, T ${T}, D ${D}: plain and copy, default and odd tiles`, () => {
              mg.tidy(() => {
                const { host, t, copyOf } = problem(B, T, D, V, V + 10 * B + 100 * T + 1000 * D);
                const plainRef = refTokenNLL(host.hf, host.emb, host.targets, B, T, D, V);
                const copyRef = refTokenNLL(host.hf, host.emb, host.targets, B, T, D, V, {
                  cq: host.cq, ck: host.ck, genLogit: host.gen, inputs: host.inputs,
                });
                for (const chunk of [undefined, { rows: 4, vocab: 7 }, { rows: 1, vocab: 1 }]) {
                  const plain = mg.tokenNLL(t.hf, t.emb, t.targets, { chunk });
                  expect(plain.shape).toEqual([B, T]);
                  expectClose(values(plain), plainRef, 2e-5, 2e-5);
                  expectClose(values(mg.tokenNLL(t.hf, t.emb, t.targets, { copy: copyOf(), chunk })), copyRef, 2e-5, 2e-5);
                }
              });
            });
          }
        }
      }
    }

    it('large logits stay finite (online logsumexp across vocabulary tiles)', () => {
      mg.tidy(() => {
        const { host, t } = problem(2, 3, 8, 300, 77, 6);
        const ref = refTokenNLL(host.hf, host.emb, host.targets, 2, 3, 8, 300);
        expectClose(values(mg.tokenNLL(t.hf, t.emb, t.targets, { chunk: { rows: 4, vocab: 64 } })), ref, 1e-4, 1e-5);
      });
    });
  });

  describe('tokenNLL copy head: structured cases', () => {
    // One segment, T 5: inputs [1, 2, 3, 1, 4]; position p's copy candidates are inputs[0..p].
    const B = 1, T = 5, D = 4, V = 6;
    function run(targetIds: number[], gen: number, copy = true): number[] {
      return mg.tidy(() => {
        const hf = mg.tensor(randomArray(T * D, 3), [B, T, D], opts);
        const emb = mg.tensor(randomArray(V * D, 4), [V, D], opts);
        const targets = mg.tensor(Int32Array.from(targetIds), [B, T], intOpts);
        const c = {
          cq: mg.tensor(randomArray(T * D, 5), [B, T, D], opts),
          ck: mg.tensor(randomArray(T * D, 6), [B, T, D], opts),
          genLogit: mg.full([B, T], gen, opts),
          inputs: mg.tensor(Int32Array.of(1, 2, 3, 1, 4), [B, T], intOpts),
        };
        return values(mg.tokenNLL(hf, emb, targets, copy ? { copy: c } : {}));
      });
    }
    const softplus = (x: number) => Math.log1p(Math.exp(x));

    it('a target never seen earlier has no copy term: nll = plain + softplus(−g)', () => {
      const targets = [5, 5, 0, 5, 0];
      const plain = run(targets, 0, false);
      const mixed = run(targets, 0.7);
      expectClose(mixed, plain.map((n) => n + softplus(-0.7)), 1e-5, 1e-5);
    });

    it('a target seen at or before p gets copy mass; one seen only later does not', () => {
      // p 0: y 1 = inputs[0] (the position itself); p 1: y 4 appears only at p' 4 > 1; p 3: y 3 at p' 2.
      const targets = [1, 4, 5, 3, 2];
      const plain = run(targets, 0, false);
      const mixed = run(targets, 0);
      const genOnly = plain.map((n) => n + softplus(0));
      expect(mixed[0]).toBeLessThan(genOnly[0] - 1e-3);
      expectClose([mixed[1], mixed[2]], [genOnly[1], genOnly[2]], 1e-5, 1e-5);
      expect(mixed[3]).toBeLessThan(genOnly[3] - 1e-3);
      expect(mixed[4]).toBeLessThan(genOnly[4] - 1e-3);
      // p 0 has a single candidate (itself), so β = 1 there: P = ½·softmax_y + ½.
      expectClose([mixed[0]], [-Math.log(0.5 * Math.exp(-plain[0]) + 0.5)], 1e-5, 1e-5);
    });

    it('pgen → 1 recovers the plain softmax loss', () => {
      const targets = [1, 2, 3, 1, 4];
      expectClose(run(targets, 30), run(targets, 0, false), 1e-5, 1e-6);
    });
  });

  describe('tokenNLL gradients', () => {
    // eps 1e-2 on O(1) inputs: central-difference error ~ eps²·f''' ≈ 1e-4, float32 noise in the
    // objective ~ 1e-7·Σ|out| / eps ≈ 1e-4: within atol 1e-3 + rtol 1e-2.
    for (const [B, T, D, V] of [[1, 4, 3, 5], [2, 3, 4, 7]]) {
      it(`B ${B}, T ${T}, D ${D}, V ${V}: plain (hf, tokEmb)`, () => {
        mg.tidy(() => {
          const { t } = problem(B, T, D, V, 31);
          mg.assertGradients((h, e) => mg.tokenNLL(h, e, t.targets, { chunk: { rows: 3, vocab: 2 } }), [t.hf, t.emb]);
          mg.assertGradients((h, e) => mg.tokenNLL(h, e, t.targets), [t.hf, t.emb]);
        });
      });

      it(`B ${B}, T ${T}, D ${D}, V ${V}: copy (hf, tokEmb, cq, ck, genLogit)`, () => {
        mg.tidy(() => {
          const { t } = problem(B, T, D, V, 41);
          const fn = (h: mg.Tensor, e: mg.Tensor, cq: mg.Tensor, ck: mg.Tensor, g: mg.Tensor) =>
            mg.tokenNLL(h, e, t.targets, { copy: { cq, ck, genLogit: g, inputs: t.inputs }, chunk: { rows: 3, vocab: 4 } });
          mg.assertGradients(fn, [t.hf, t.emb, t.cq, t.ck, t.gen]);
        });
      });
    }

    it('gradients only where asked, and the same bits on a second run and with other thread counts', () => {
      mg.tidy(() => {
        const { t } = problem(2, 9, 8, 300, 51);
        const cq = mg.parameter(mg.clone(t.cq)), emb = mg.parameter(mg.clone(t.emb));
        const grads = () => {
          const nll = mg.tokenNLL(t.hf, emb, t.targets, { copy: { cq, ck: t.ck, genLogit: t.gen, inputs: t.inputs }, chunk: { rows: 5, vocab: 64 } });
          mg.mean(nll).backward();
          const out = [values(emb.grad!), values(cq.grad!)];
          emb.zeroGrad();
          cq.zeroGrad();
          return out;
        };
        const first = grads();
        expect(grads()).toEqual(first);
        expect(t.hf.grad).toBeNull();
        // The same bits whatever the thread count (no reduction depends on how work is split).
        if (device === 'cpu') {
          const threads = mg.numThreads();
          try {
            for (const n of [1, 3]) {
              mg.setNumThreads(n);
              expect(grads()).toEqual(first);
            }
          } finally {
            mg.setNumThreads(threads);
          }
        }
        cq.dispose();
        emb.dispose();
      });
    });
  });

  describe('tokenNLL bad input and memory', () => {
    it('rejects bad ids, shapes and dtypes with clear errors', () => {
      mg.tidy(() => {
        const { t, copyOf } = problem(2, 3, 4, 5, 61);
        const badTarget = mg.tensor(Int32Array.of(0, 1, 2, 3, 4, 5), [2, 3], intOpts);
        expect(() => mg.tokenNLL(t.hf, t.emb, badTarget)).toThrow(/tokenNLL.*target id 5 at flat position 5 is outside the vocabulary \[0, 5\)/);
        const negTarget = mg.tensor(Int32Array.of(0, -1, 2, 3, 4, 1), [2, 3], intOpts);
        expect(() => mg.tokenNLL(t.hf, t.emb, negTarget)).toThrow(/target id -1 at flat position 1/);
        const badInputs = { ...copyOf(), inputs: badTarget };
        expect(() => mg.tokenNLL(t.hf, t.emb, t.targets, { copy: badInputs })).toThrow(/input id 5 at flat position 5 is outside/);
        expect(() => mg.tokenNLL(t.hf, mg.zeros([5, 3], opts), t.targets)).toThrow(/tokEmb \[5,3\] should be \[V, 4\] to match hf \[2,3,4\]/);
        expect(() => mg.tokenNLL(mg.zeros([6, 4], opts), t.emb, t.targets)).toThrow(/hf \[6,4\] should be \[B, T, D\]/);
        expect(() => mg.tokenNLL(t.hf, t.emb, mg.zeros([3, 2], intOpts))).toThrow(/targets \[3,2\] should be \[2,3\]/);
        expect(() => mg.tokenNLL(t.hf, t.emb, mg.zeros([2, 3], opts))).toThrow(/targets must be int32/);
        expect(() => mg.tokenNLL(t.hf, t.emb, t.targets, { copy: { ...copyOf(), ck: mg.zeros([2, 3, 5], opts) } })).toThrow(/copy.ck \[2,3,5\] should be \[2,3,4\]/);
        expect(() => mg.tokenNLL(t.hf, t.emb, t.targets, { copy: { ...copyOf(), genLogit: mg.zeros([2, 3, 1], opts) } })).toThrow(/copy.genLogit \[2,3,1\] should be \[2,3\]/);
        expect(() => mg.tokenNLL(t.hf, t.emb, t.targets, { copy: { ...copyOf(), inputs: mg.zeros([2, 3], opts) } })).toThrow(/copy.inputs must be int32/);
        expect(() => mg.tokenNLL(t.hf, t.emb, t.targets, { chunk: { rows: 0 } })).toThrow(/chunk.rows must be a positive integer/);
      });
    });

    it('frees everything after forward and backward (plain and copy)', () => {
      const { t, copyOf } = problem(2, 4, 3, 11, 71);
      const hf = mg.parameter(mg.clone(t.hf)), emb = mg.parameter(mg.clone(t.emb)), gen = mg.parameter(mg.clone(t.gen));
      expectNoLeaks(device, () => {
        for (const copy of [undefined, { ...copyOf(), genLogit: gen }]) {
          mg.tidy(() => mg.mean(mg.tokenNLL(hf, emb, t.targets, { copy })).backward());
          for (const p of [hf, emb, gen]) p.zeroGrad();
        }
        // A failed call leaves nothing behind.
        const bad = mg.tensor(Int32Array.from({ length: 8 }, () => 11), [2, 4], intOpts);
        expect(() => mg.tokenNLL(hf, emb, bad)).toThrow(/outside the vocabulary/);
        bad.dispose();
      });
      for (const x of [hf, emb, gen, ...Object.values(t)]) x.dispose();
    });
  });
});
