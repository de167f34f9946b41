// The memory write (memoryWrite): forward against the float64 loops of test/reference_memwrite.ts on structured
// inputs (uniform pointers, a closed or open gate) and then random ones over odd shapes; all six gradients
// against central differences (of the float64 reference, and mg.assertGradients in float32); diagnostics;
// bad arguments; leaks.
import { describe, expect, it } from 'vitest';

import * as mg from '../lib/index.js';
import { expectClose, expectNoLeaks, forEachDevice, randomArray, values } from './helpers.js';
import { refMemoryWrite, refMemoryWriteGradients, type MemwriteInputs } from './reference_memwrite.js';

function randomInputs(B: number, S: number, T: number, D: number, seed: number): MemwriteInputs {
  return {
    B, S, T, D,
    M: randomArray(B * S * D, seed + 1),
    // Wider than the rest so that the pointer is far from uniform.
    mq: randomArray(B * S * D, seed + 2, -2, 2),
    ck: randomArray(B * T * D, seed + 3, -2, 2),
    cv: randomArray(B * T * D, seed + 4),
    w: randomArray(D * 2 * D, seed + 5, -0.8, 0.8),
    b: randomArray(D, seed + 6, -0.5, 0.5),
  };
}

forEachDevice((device) => {
  const opts = { device };

  /** The six input tensors of a case. */
  function tensorsOf(x: MemwriteInputs): mg.Tensor[] {
    const { B, S, T, D } = x;
    return [
      mg.tensor(x.M, [B, S, D], opts), mg.tensor(x.mq, [B, S, D], opts), mg.tensor(x.ck, [B, T, D], opts),
      mg.tensor(x.cv, [B, T, D], opts), mg.tensor(x.w, [D, 2 * D], opts), mg.tensor(x.b, [D], opts),
    ];
  }

  const write = (...t: mg.Tensor[]) => mg.memoryWrite(t[0], t[1], t[2], t[3], t[4], t[5]);

  describe('memoryWrite', () => {
    it('with equal keys points uniformly, and a zero gate layer blends half and half (structured)', () => {
      mg.tidy(() => {
        const B = 2, S = 3, T = 5, D = 4;
        const M = mg.reshape(mg.arange(B * S * D, opts), [B, S, D]);
        const mq = mg.reshape(mg.scale(mg.arange(B * S * D, opts), 0.1), [B, S, D]);
        const ck = mg.ones([B, T, D], opts);
        const cv = mg.reshape(mg.arange(B * T * D, opts), [B, T, D]);
        const w = mg.zeros([D, 2 * D], opts), b = mg.zeros([D], opts);
        const r = mg.memoryWrite(M, mq, ck, cv, w, b, { stats: true });
        // Z[b,s,d] = mean over t of cv[b,t,d] = (b·T + (T−1)/2)·D + d; out = (M + Z) / 2.
        const expected: number[] = [];
        for (let bi = 0; bi < B; bi++) {
          for (let s = 0; s < S; s++) {
            for (let d = 0; d < D; d++) expected.push(((bi * S + s) * D + d + (bi * T + (T - 1) / 2) * D + d) / 2);
          }
        }
        expectClose(r.M.toArray(), expected, 1e-5, 1e-6);
        expect(r.meanGate).toBeCloseTo(0.5, 7);
        expect(r.pointerEntropy).toBeCloseTo(Math.log(T), 6);
      });
    });

    it('a saturated gate keeps the memory or takes the candidates (structured)', () => {
      mg.tidy(() => {
        const B = 1, S = 2, T = 3, D = 4;
        const M = mg.reshape(mg.arange(S * D, opts), [B, S, D]);
        const mq = mg.zeros([B, S, D], opts); // zero queries: uniform pointer
        const ck = mg.reshape(mg.arange(T * D, opts), [B, T, D]);
        const cv = mg.reshape(mg.scale(mg.arange(T * D, opts), -1), [B, T, D]);
        const w = mg.zeros([D, 2 * D], opts);
        const z = [-4, -5, -6, -7, -4, -5, -6, -7]; // −(mean over t of arange rows)
        const closed = mg.memoryWrite(M, mq, ck, cv, w, mg.full([D], -40, opts), { stats: true });
        expectClose(closed.M.toArray(), M.toArray(), 1e-15, 1e-15); // σ(−40) ≈ 4e-18 of Z still gets in
        expect(closed.meanGate).toBeLessThan(1e-15);
        const open = mg.memoryWrite(M, mq, ck, cv, w, mg.full([D], 40, opts), { stats: true });
        expectClose(open.M.toArray(), z, 1e-6, 1e-6);
        expect(open.meanGate).toBeCloseTo(1, 12);
      });
    });

    it('a peaked pointer copies one token; the gate reads M through its first D columns (structured)', () => {
      mg.tidy(() => {
        const B = 1, S = 2, T = 4, D = 4;
        // Slot 0 queries token 2 and slot 1 token 0 with scores 50 apart: α is one-hot to float32 precision.
        const mqv = new Float32Array(S * D), ckv = new Float32Array(T * D);
        mqv[0 * D + 2] = 100;
        mqv[1 * D + 0] = 100;
        for (let t = 0; t < T; t++) ckv[t * D + t] = 1;
        const cvv = Float32Array.from({ length: T * D }, (_, i) => 10 * Math.floor(i / D) + (i % D));
        // Gate pre-activation = M[d] (identity on the M half), so U = σ(M).
        const wv = new Float32Array(D * 2 * D);
        for (let d = 0; d < D; d++) wv[d * 2 * D + d] = 1;
        const mv = Float32Array.from([0, 1, -1, 2, 0.5, -2, 3, 0]);
        const inputs = { B, S, T, D, M: mv, mq: mqv, ck: ckv, cv: cvv, w: wv, b: new Float32Array(D) };
        const r = mg.memoryWrite(...(tensorsOf(inputs) as [mg.Tensor, mg.Tensor, mg.Tensor, mg.Tensor, mg.Tensor, mg.Tensor]), { stats: true });
        const sig = (v: number) => 1 / (1 + Math.exp(-v));
        const expected = Array.from(mv, (m, i) => {
          const s = Math.floor(i / D), d = i % D, token = s === 0 ? 2 : 0;
          const g = sig(m);
          return (1 - g) * m + g * (10 * token + d);
        });
        expectClose(r.M.toArray(), expected, 1e-5, 1e-5);
        expect(r.pointerEntropy).toBeLessThan(1e-6);
        expectClose(r.M.toArray(), refMemoryWrite(inputs).out, 1e-5, 1e-5);
      });
    });

    // Every shape of the grid: forward, diagnostics and all six gradients against the float64 reference.
    for (const B of [1, 2]) {
      for (const S of [1, 3, 8]) {
        for (const T of [1, 5, 17]) {
          for (const D of [4, 6]) {
            it(`B ${B} S ${S} T ${T} D ${D}: values, diagnostics and gradients (random)`, () => {
              mg.tidy(() => {
                const inputs = randomInputs(B, S, T, D, 10 * (B + S + T + D));
                const leaves = tensorsOf(inputs);
                leaves.forEach((t) => (t.requiresGrad = true));
                const r = mg.memoryWrite(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], { stats: true });
                expect(r.M.shape).toEqual([B, S, D]);
                const ref = refMemoryWrite(inputs);
                // float32 with O(1) values and sums of ≤ 2D·T terms: errors ~1e-6; 1e-5 leaves room, catches any bug.
                expectClose(r.M.toArray(), ref.out, 1e-5, 1e-5);
                expect(r.meanGate).toBeCloseTo(ref.meanGate, 6);
                expect(r.pointerEntropy).toBeCloseTo(ref.pointerEntropy, 5);
                const proj = randomArray(B * S * D, 99);
                mg.sum(mg.mul(r.M, mg.tensor(proj, [B, S, D], opts))).backward();
                const grads = refMemoryWriteGradients(inputs, proj);
                (['M', 'mq', 'ck', 'cv', 'w', 'b'] as const).forEach((name, i) => {
                  expect(leaves[i].grad, name).not.toBeNull();
                  expectClose(leaves[i].grad!.toArray(), grads[name], 2e-5, 1e-4);
                });
                leaves.forEach((t) => t.zeroGrad());
              });
            });
          }
        }
      }
    }

    // SPEC v2's positional bias of the pointer, end-aligned to shorter segments (cols ≥ T).
    for (const [B, S, T, D, cols] of [[1, 1, 1, 4, 1], [2, 3, 5, 4, 5], [2, 8, 17, 6, 17], [2, 3, 5, 6, 9], [1, 4, 1, 4, 6]]) {
      it(`pointer bias: B ${B} S ${S} T ${T} D ${D} over ${cols} columns: values and all seven gradients (random)`, () => {
        mg.tidy(() => {
          const inputs = { ...randomInputs(B, S, T, D, 3 * (B + S + T + D + cols)), pb: randomArray(S * cols, 77, -3, 3), pbCols: cols };
          const leaves = [...tensorsOf(inputs), mg.tensor(inputs.pb, [S, cols], opts)];
          leaves.forEach((t) => (t.requiresGrad = true));
          const out = mg.memoryWrite(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], { pointerBias: leaves[6] });
          const ref = refMemoryWrite(inputs);
          expectClose(out.toArray(), ref.out, 1e-5, 1e-5);
          const proj = randomArray(B * S * D, 98);
          mg.sum(mg.mul(out, mg.tensor(proj, [B, S, D], opts))).backward();
          const grads = refMemoryWriteGradients(inputs, proj);
          (['M', 'mq', 'ck', 'cv', 'w', 'b', 'pb'] as const).forEach((name, i) => expectClose(leaves[i].grad!.toArray(), grads[name], 2e-5, 1e-4));
          // The columns before cols − T are not used: their gradient is exactly 0.
          const g = leaves[6].grad!.toArray();
          for (let s = 0; s < S; s++) for (let c = 0; c < cols - T; c++) expect(g[s * cols + c]).toBe(0);
          leaves.forEach((t) => t.zeroGrad());
        });
      });
    }

    // The value weight (SPEC's α·(c·Wpvᵀ) reassociated to (α·c)·Wpvᵀ), alone and with the pointer bias.
    for (const [B, S, T, D, withBias] of [[1, 1, 1, 4, 0], [2, 3, 5, 4, 1], [2, 8, 17, 6, 1], [1, 4, 3, 6, 0]]) {
      it(`value weight: B ${B} S ${S} T ${T} D ${D}${withBias ? ' with the pointer bias' : ''}: values and every gradient (random)`, () => {
        mg.tidy(() => {
          const base = randomInputs(B, S, T, D, 5 * (B + S + T + D));
          const inputs = { ...base, wv: randomArray(D * D, 55, -0.6, 0.6), ...(withBias ? { pb: randomArray(S * T, 56, -2, 2), pbCols: T } : {}) };
          const leaves = [...tensorsOf(inputs), ...(withBias ? [mg.tensor(inputs.pb!, [S, T], opts)] : []), mg.tensor(inputs.wv, [D, D], opts)];
          leaves.forEach((t) => (t.requiresGrad = true));
          const out = mg.memoryWrite(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], { pointerBias: withBias ? leaves[6] : undefined, valueWeight: leaves[leaves.length - 1] });
          expectClose(out.toArray(), refMemoryWrite(inputs).out, 1e-5, 1e-5);
          const proj = randomArray(B * S * D, 97);
          mg.sum(mg.mul(out, mg.tensor(proj, [B, S, D], opts))).backward();
          const grads = refMemoryWriteGradients(inputs, proj);
          const names = ['M', 'mq', 'ck', 'cv', 'w', 'b', ...(withBias ? ['pb'] : []), 'wv'] as const;
          names.forEach((name, i) => expectClose(leaves[i].grad!.toArray(), grads[name as keyof typeof grads], 2e-5, 1e-4));
          leaves.forEach((t) => t.zeroGrad());
        });
      });
    }

    // The model's write as one op: the pointer's layer norm, the slot queries and memoryWrite, against those three ops.
    for (const [B, S, T, D, v] of [[1, 1, 1, 4, 1], [2, 3, 5, 4, 2], [2, 8, 17, 6, 2], [1, 4, 3, 6, 1]]) {
      it(`memoryWriteFromHidden equals layer norm, M·pq and memoryWrite: B ${B} S ${S} T ${T} D ${D} (SPEC v${v}), values and every gradient`, () => {
        mg.tidy(() => {
          const leaf = (n: number, seed: number, shape: number[], lo = -1, hi = 1) => {
            const t = mg.tensor(randomArray(n, seed, lo, hi), shape, opts);
            t.requiresGrad = true;
            return t;
          };
          const M = leaf(B * S * D, 1, [B, S, D]), h = leaf(B * T * D, 2, [B, T, D], -2, 2);
          const lnW = leaf(D, 3, [D], 0.5, 1.5), lnB = leaf(D, 4, [D], -0.3, 0.3);
          const pq = leaf(D * D, 5, [D, D]), wv = leaf(D * D, 6, [D, D], -0.6, 0.6);
          const w = leaf(D * 2 * D, 7, [D, 2 * D], -0.8, 0.8), b = leaf(D, 8, [D], -0.5, 0.5);
          const pb = v >= 2 ? leaf(S * (T + 2), 9, [S, T + 2], -2, 2) : undefined;
          const leaves = [M, h, lnW, lnB, pq, wv, w, b, ...(pb ? [pb] : [])];
          const proj = mg.tensor(randomArray(B * S * D, 95), [B, S, D], opts);
          const run = (fused: boolean) => {
            const out = fused
              ? mg.memoryWriteFromHidden(M, h, lnW, lnB, pq, wv, w, b, { pointerBias: pb, stats: true })
              : (() => {
                  const c = mg.layerNorm(h, lnW, lnB);
                  return mg.memoryWrite(M, mg.matmul(M, pq), c, c, w, b, { pointerBias: pb, valueWeight: wv, stats: true });
                })();
            mg.sum(mg.mul(out.M, proj)).backward();
            const grads = leaves.map((t) => Array.from(t.grad!.toArray() as Float32Array));
            leaves.forEach((t) => t.zeroGrad());
            return { out: Array.from(out.M.toArray() as Float32Array), gate: out.meanGate, entropy: out.pointerEntropy, grads };
          };
          const fused = run(true), apart = run(false);
          expectClose(fused.out, apart.out, 1e-6, 1e-6);
          expect(fused.gate).toBeCloseTo(apart.gate, 6);
          expect(fused.entropy).toBeCloseTo(apart.entropy, 6);
          fused.grads.forEach((g, i) => expectClose(g, apart.grads[i], 1e-5, 1e-5));
        });
      });
    }

    it('memoryWriteFromHidden rejects weights of the wrong shape', () => {
      mg.tidy(() => {
        const M = mg.zeros([1, 3, 4], opts), h = mg.zeros([1, 5, 4], opts), v4 = mg.zeros([4], opts), m44 = mg.zeros([4, 4], opts);
        const w = mg.zeros([4, 8], opts);
        expect(() => mg.memoryWriteFromHidden(M, h, v4, v4, mg.zeros([4, 5], opts), m44, w, v4)).toThrow(/pointerQuery \[4,5\] must be \[D, D\] = \[4,4\]/);
        expect(() => mg.memoryWriteFromHidden(M, h, mg.zeros([5], opts), v4, m44, m44, w, v4)).toThrow(/lnWeight \[5\] must be \[4\]/);
        expect(() => mg.memoryWriteFromHidden(M, h, v4, v4, m44, m44, w, v4, { pointerBias: mg.zeros([3, 4], opts) })).toThrow(/pointerBias \[3,4\] must be \[S, ≥ T\]/);
        expect(() => mg.memoryWriteFromHidden(M, mg.zeros([2, 5, 4], opts), v4, v4, m44, m44, w, v4)).toThrow(/must be \[1,T,4\]/);
      });
    });

    it('a strong pointer bias makes slot j copy the token it points at (structured)', () => {
      mg.tidy(() => {
        const B = 1, S = 2, T = 4, D = 4;
        const pb = new Float32Array(S * T);
        pb[0 * T + 2] = 60; // slot 0 → token 2, slot 1 → token 3, whatever the content scores
        pb[1 * T + 3] = 60;
        const cv = mg.reshape(mg.arange(T * D, opts), [B, T, D]);
        const out = mg.memoryWrite(mg.zeros([B, S, D], opts), mg.ones([B, S, D], opts), mg.ones([B, T, D], opts), cv,
          mg.zeros([D, 2 * D], opts), mg.full([D], 40, opts), { pointerBias: mg.tensor(pb, [S, T], opts) });
        expectClose(out.toArray(), [8, 9, 10, 11, 12, 13, 14, 15], 1e-5, 1e-6);
      });
    });

    it('rejects a pointer bias or a value weight of the wrong shape', () => {
      mg.tidy(() => {
        const [M, mq, ck, cv, w, b] = tensorsOf(randomInputs(1, 3, 5, 4, 1));
        expect(() => mg.memoryWrite(M, mq, ck, cv, w, b, { pointerBias: mg.zeros([3, 4], opts) })).toThrow(/pointerBias \[3,4\] must be \[S, ≥ T\] = \[3, ≥ 5\]/);
        expect(() => mg.memoryWrite(M, mq, ck, cv, w, b, { pointerBias: mg.zeros([2, 5], opts) })).toThrow(/pointerBias \[2,5\]/);
        expect(() => mg.memoryWrite(M, mq, ck, cv, w, b, { valueWeight: mg.zeros([4, 5], opts) })).toThrow(/valueWeight \[4,5\] must be \[D, D\] = \[4,4\]/);
      });
    });

    it('passes finite-difference gradient checks for all six inputs', () => {
      mg.tidy(() => {
        for (const [B, S, T, D] of [[1, 3, 5, 4], [2, 2, 3, 6]]) {
          const inputs = randomInputs(B, S, T, D, 7 * B + D);
          // float32 central differences with eps 1e-2: truncation ~eps²·|f'''| ≈ 1e-4, rounding ~1e-7/eps ≈ 1e-5.
          mg.assertGradients(write, tensorsOf(inputs), { eps: 1e-2, atol: 1e-3, rtol: 1e-2 });
        }
      });
    });

    it('is deterministic: the same inputs give the same bits', () => {
      mg.tidy(() => {
        const inputs = randomInputs(2, 8, 17, 6, 3);
        const run = () => {
          const leaves = tensorsOf(inputs);
          leaves.forEach((t) => (t.requiresGrad = true));
          const out = write(...leaves);
          mg.sum(mg.mul(out, out)).backward();
          return [values(out), ...leaves.map((t) => values(t.grad!))];
        };
        expect(run()).toEqual(run());
      });
    });

    it('rejects mismatched shapes and dtypes with clear errors', () => {
      mg.tidy(() => {
        const [M, mq, ck, cv, w, b] = tensorsOf(randomInputs(2, 3, 5, 4, 1));
        const call = (...t: mg.Tensor[]) => () => mg.memoryWrite(t[0], t[1], t[2], t[3], t[4], t[5]);
        expect(call(M, mq, mg.zeros([1, 5, 4], opts), cv, w, b)).toThrow(/memoryWrite: ck \[1,5,4\] must be \[2,T,4\]/);
        expect(call(M, mq, mg.zeros([2, 5, 6], opts), cv, w, b)).toThrow(/memoryWrite: ck \[2,5,6\] must be \[2,T,4\]/);
        expect(call(M, mq, ck, mg.zeros([2, 4, 4], opts), w, b)).toThrow(/memoryWrite: cv \[2,4,4\] must have ck's shape \[2,5,4\]/);
        expect(call(M, mg.zeros([2, 3, 5], opts), ck, cv, w, b)).toThrow(/memoryWrite: mq \[2,3,5\] must have M's shape \[2,3,4\]/);
        expect(call(M, mq, ck, cv, mg.zeros([4, 4], opts), b)).toThrow(/memoryWrite: updateWeight \[4,4\] must be \[D, 2D\] = \[4,8\]/);
        expect(call(M, mq, ck, cv, mg.zeros([8, 4], opts), b)).toThrow(/updateWeight \[8,4\] must be \[D, 2D\]/);
        expect(call(M, mq, ck, cv, w, mg.zeros([8], opts))).toThrow(/memoryWrite: updateBias \[8\] must be \[4\]/);
        expect(call(mg.zeros([3, 4], opts), mq, ck, cv, w, b)).toThrow(/memoryWrite: M must be \[B,S,D\], got \[3,4\]/);
        expect(call(M, mq, mg.zeros([2, 0, 4], opts), mg.zeros([2, 0, 4], opts), w, b)).toThrow(/sizes must be at least 1/);
        expect(call(mg.cast(M, 'bfloat16'), mq, ck, cv, w, b)).toThrow(/memoryWrite: tensor 'M' has dtype bfloat16; expected float32/);
        expect(call(M, mq, ck, cv, w, b)).not.toThrow();
      });
    });

    it('frees everything it made once forward and backward are done', () => {
      const params = tensorsOf(randomInputs(2, 3, 5, 4, 2)).map((t) => mg.parameter(t));
      expectNoLeaks(device, () => {
        mg.tidy(() => {
          const r = mg.memoryWrite(params[0], params[1], params[2], params[3], params[4], params[5], { stats: true });
          mg.sum(r.M).backward();
        });
        mg.tidy(() => {
          write(...params); // recorded, never run backward: the graph goes with its output
        });
        params.forEach((p) => p.zeroGrad());
      });
      params.forEach((p) => p.dispose());
    });
  });
});
