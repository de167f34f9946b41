// The linear family: act(x·Wᵀ + b) with the bias and GELU fused into the GEMM, against float64
// loops (structured inputs first, then random ones of odd shapes that cross the GEMM's tiles and
// K panels), its gradients by finite differences and against the reference, determinism, leaks, bad input.
import { describe, expect, it } from 'vitest';

import * as mg from '../lib/index.js';
import { expectClose, expectNoLeaks, forEachDevice, randomArray } from './helpers.js';
import { refGelu, refGeluGrad, refLinear, refLinearBackward } from './reference_linear.js';

const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

forEachDevice((device) => {
  const opts = { device };

  describe('linear forward', () => {
    it('arange input, identity-like weight, bias (structured)', () => {
      mg.tidy(() => {
        const x = mg.reshape(mg.arange(6, opts), [2, 3]);
        const w = mg.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], undefined, opts);
        const b = mg.tensor([10, 20, 30, 40], [4], opts);
        expect(mg.linear(x, w, b).toNested()).toEqual([[10, 21, 32, 43], [13, 24, 35, 52]]);
        expect(mg.linear(x, w, null).toNested()).toEqual([[0, 1, 2, 3], [3, 4, 5, 12]]);
        const g = mg.linear(x, w, null, { activation: 'gelu' });
        expectClose(g.toArray(), [0, 1, 2, 3, 3, 4, 5, 12].map(refGelu), 1e-6, 1e-6);
      });
    });

    // [x shape, N]: tiny, odd, more rows/cols than one 6x16 tile, K over one 256-wide panel, a plain vector; then
    // decoding's few rows: on the CPU, up to 3 rows take the GEMV path (groups of 3, then 2 or 1; columns past its
    // 8-wide tiles and past a 64-column task; K not a multiple of 8), and 4 to 16 rows the panel path (Aᵀ 8 or 16
    // wide; 6-column tiles, their 1-5-column tails, and 48-column tasks).
    const cases: [number[], number][] = [[[3, 5, 7], 9], [[2, 13, 37], 70], [[50, 300], 33], [[11], 5], [[1, 1], 1],
      [[1, 37], 70], [[2, 1, 300], 45], [[3, 40], 20], [[16, 130], 67], [[5, 33], 53], [[3, 3, 20], 100], [[8, 264], 17],
      [[4, 7], 16]];
    for (const [xShape, n] of cases) {
      for (const activation of ['none', 'gelu'] as const) {
        for (const withBias of [true, false]) {
          it(`x ${JSON.stringify(xShape)} → ${n}, ${activation}${withBias ? ', bias' : ''}: matches float64`, () => {
            mg.tidy(() => {
              const k = xShape[xShape.length - 1], m = size(xShape) / k;
              const xv = randomArray(m * k, 1, -2, 2), wv = randomArray(n * k, 2, -0.5, 0.5), bv = randomArray(n, 3);
              const x = mg.tensor(xv, xShape, opts), w = mg.tensor(wv, [n, k], opts);
              const b = withBias ? mg.tensor(bv, [n], opts) : null;
              const y = mg.linear(x, w, b, { activation });
              expect(y.shape).toEqual([...xShape.slice(0, -1), n]);
              const ref = refLinear(xv, wv, withBias ? bv : null, m, n, k, activation === 'gelu');
              expectClose(y.toArray(), ref.y, 2e-5, 1e-5);
            });
          });
        }
      }
    }

    it('GELU is accurate to float32 rounding over [-12, 12] (vectorised and scalar columns)', () => {
      mg.tidy(() => {
        // 17 output columns: 16 go through the 8-wide path, the last through the scalar one.
        const zs = Float32Array.from({ length: 2401 }, (_, i) => -12 + i / 100);
        const x = mg.tensor(zs, [zs.length, 1], { ...opts, requiresGrad: true });
        const w = mg.ones([17, 1], opts);
        const y = mg.linear(x, w, null, { activation: 'gelu' });
        // Relative error within a few float32 roundings times GELU's condition number κ = |z·gelu'(z) / gelu(z)|
        // (κ grows like 2u² in the negative tail, where any float32 evaluation of u loses that much).
        const out = y.toArray();
        zs.forEach((z, i) => {
          const ref = refGelu(z), kappa = Math.abs((z * refGeluGrad(z)) / ref) || 1;
          for (let j = 0; j < 17; j++) {
            const err = Math.abs(out[i * 17 + j] - ref);
            if (!(err <= 1e-6 * Math.max(1, kappa) * Math.abs(ref) + 1e-30)) expect.fail(`gelu(${z}) = ${out[i * 17 + j]}, expected ${ref}`);
          }
        });
        // dx = Σ over the 17 columns of gelu'(z) (dy = 1): 17 equal terms, summed exactly enough for rtol 1e-6.
        mg.sum(y).backward();
        expectClose(x.grad!.toArray(), Array.from(zs, (z) => 17 * refGeluGrad(z)), 1e-6, 1e-6);
        x.zeroGrad();
      });
    });

    it('bfloat16 inputs are computed in float32 and rounded once', () => {
      mg.tidy(() => {
        const xv = randomArray(5 * 40, 4), wv = randomArray(21 * 40, 5), bv = randomArray(21, 6);
        const bf = { ...opts, dtype: 'bfloat16' as const };
        const x = mg.tensor(xv, [5, 40], bf), w = mg.tensor(wv, [21, 40], bf), b = mg.tensor(bv, [21], bf);
        const y = mg.linear(x, w, b, { activation: 'gelu' });
        expect(y.dtype).toBe('bfloat16');
        const ref = refLinear(x.toArray(), w.toArray(), b.toArray(), 5, 21, 40, true);
        expectClose(y.toArray(), ref.y, 1e-2, 8e-3);
      });
    });
  });

  describe('linear in bfloat16 (the tensor-core paths)', () => {
    // The bar for bf16: at most twice the error of a naive bf16 computation (exact math on the
    // bf16 inputs, the result rounded to bf16 once), both against float64, here as RMS over the tensor.
    // Sizes cross 128-wide tiles and 32-deep K steps.
    const toBf16 = (v: ArrayLike<number>) => mg.tensor(Float32Array.from(v), [v.length], { ...opts, dtype: 'bfloat16' }).toArray();
    const rms = (a: ArrayLike<number>, b: ArrayLike<number>) => {
      let s = 0;
      for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
      return Math.sqrt(s / a.length);
    };
    const expectBf16Grade = (got: ArrayLike<number>, ref: ArrayLike<number>, what: string) => {
      const naive = rms(toBf16(ref), ref);
      expect(naive, what).toBeGreaterThan(0);
      expect(rms(got, ref), what).toBeLessThanOrEqual(2 * naive);
    };

    // Tile-aligned (cp.async), then rows of 1030 (not a multiple of 8: the element-wise loads) with few enough
    // tiles that the GEMMs split K; then decoding's few rows (on the CPU the GEMV path, which widens bf16 16 at a time
    // and sums the last k % 16 one by one: 5 rows end in a 1-row group, 4 and 17 columns in single columns, k 15 is
    // all tail; one row alone would make db = dy exact, leaving no naive error to compare with).
    for (const [m, n, k] of [[136, 144, 264], [37, 45, 1030], [2, 70, 1030], [3, 45, 264], [16, 144, 264], [5, 4, 40], [2, 17, 15]]) it(`${m}x${k} · ${k}x${n}: forward with bias and GELU, and dx, dW, db, each within twice a naive bf16 computation's error`, () => {
      mg.tidy(() => {
        const bf = { ...opts, dtype: 'bfloat16' as const };
        const x = mg.tensor(randomArray(m * k, 31, -1, 1), [m, k], { ...bf, requiresGrad: true });
        const w = mg.tensor(randomArray(n * k, 32, -0.1, 0.1), [n, k], { ...bf, requiresGrad: true });
        const b = mg.tensor(randomArray(n, 33), [n], { ...bf, requiresGrad: true });
        const dy = mg.tensor(randomArray(m * n, 34), [m, n], bf);
        const [xv, wv, bv, dyv] = [x, w, b, dy].map((t) => t.toArray()); // the bf16 values, exactly
        const fwd = refLinear(xv, wv, bv, m, n, k, true);
        expectBf16Grade(mg.linear(x, w, b, { activation: 'gelu' }).toArray(), fwd.y, 'y');
        // Backward without an activation: dz = dy is exact in bf16, so the naive computation rounds only the results.
        mg.linear(x, w, b).backward(dy);
        const ref = refLinearBackward(xv, wv, fwd.z, dyv, m, n, k, false);
        expectBf16Grade(x.grad!.toArray(), ref.dx, 'dx');
        expectBf16Grade(w.grad!.toArray(), ref.dw, 'dw');
        expectBf16Grade(b.grad!.toArray(), ref.db, 'db');
        for (const t of [x, w, b]) t.zeroGrad();
      });
    });
  });

  describe('linear backward', () => {
    for (const activation of ['none', 'gelu'] as const) {
      it(`${activation}: gradients of x, weight and bias by finite differences`, () => {
        mg.tidy(() => {
          const x = mg.tensor(randomArray(2 * 3 * 5, 7, -1.5, 1.5), [2, 3, 5], opts);
          const w = mg.tensor(randomArray(4 * 5, 8), [4, 5], opts);
          const b = mg.tensor(randomArray(4, 9), [4], opts);
          // eps 1e-2: the central difference's error (eps²·f'''/6, f''' of GELU is O(1)) stays under 1e-4.
          mg.assertGradients((xi, wi, bi) => mg.linear(xi, wi, bi, { activation }), [x, w, b], { eps: 1e-2, atol: 1e-3, rtol: 1e-2 });
          mg.assertGradients((xi, wi) => mg.linear(xi, wi, null, { activation }), [x, w], { eps: 1e-2, atol: 1e-3, rtol: 1e-2 });
        });
      });

      // The second shape has 600 rows and few output tiles: the weight gradient's GEMM splits K.
      for (const [batch, rows, n, k] of [[3, 47, 70, 300], [3, 200, 24, 20]]) it(`${activation}: dx, dW, db of [${batch}, ${rows}, ${k}] → ${n} match float64`, () => {
        mg.tidy(() => {
          const m = batch * rows;
          const xv = randomArray(m * k, 10, -1, 1), wv = randomArray(n * k, 11, -0.1, 0.1), bv = randomArray(n, 12);
          const dyv = randomArray(m * n, 13);
          const x = mg.tensor(xv, [batch, rows, k], { ...opts, requiresGrad: true });
          const w = mg.parameter(mg.tensor(wv, [n, k], opts));
          const b = mg.parameter(mg.tensor(bv, [n], opts));
          const y = mg.linear(x, w, b, { activation });
          y.backward(mg.tensor(dyv, [batch, rows, n], opts));
          const { z } = refLinear(xv, wv, bv, m, n, k, activation === 'gelu');
          const ref = refLinearBackward(xv, wv, z, dyv, m, n, k, activation === 'gelu');
          expectClose(x.grad!.toArray(), ref.dx, 1e-5, 1e-4);
          expectClose(w.grad!.toArray(), ref.dw, 1e-4, 1e-4);
          expectClose(b.grad!.toArray(), ref.db, 1e-4, 1e-5);
          for (const t of [x, w, b]) t.zeroGrad();
          w.dispose();
          b.dispose();
        });
      });
    }

    it('gives the same bits whatever the thread count (deterministic bias gradient)', () => {
      const run = () => mg.tidy(() => {
        const x = mg.tensor(randomArray(600 * 24, 14), [600, 24], { ...opts, requiresGrad: true });
        const w = mg.tensor(randomArray(40 * 24, 15), [40, 24], { ...opts, requiresGrad: true });
        const b = mg.tensor(randomArray(40, 16), [40], { ...opts, requiresGrad: true });
        mg.sum(mg.linear(x, w, b, { activation: 'gelu' })).backward();
        const out = [x, w, b].map((t) => Array.from(t.grad!.toArray()));
        for (const t of [x, w, b]) t.zeroGrad();
        return out;
      });
      const threads = mg.numThreads();
      const many = run();
      mg.setNumThreads(1);
      try {
        expect(run()).toEqual(many);
      } finally {
        mg.setNumThreads(threads);
      }
    });

    it('frees everything it made (forward + backward, with and without grad)', () => {
      const w = mg.parameter(mg.randn([6, 5], { ...opts, seed: 1 }));
      const b = mg.parameter(mg.randn([6], { ...opts, seed: 2 }));
      expectNoLeaks(device, () => {
        mg.tidy(() => {
          const x = mg.randn([3, 4, 5], { ...opts, seed: 3 });
          mg.sum(mg.linear(x, w, b, { activation: 'gelu' })).backward();
          mg.noGrad(() => mg.linear(x, w, b, { activation: 'gelu' }));
        });
        w.zeroGrad();
        b.zeroGrad();
      });
      w.dispose();
      b.dispose();
    });
  });

  describe('linear bad input', () => {
    it('throws clear errors for wrong shapes, dtypes and options', () => {
      mg.tidy(() => {
        const x = mg.zeros([2, 3, 5], opts), w = mg.zeros([4, 5], opts), b = mg.zeros([4], opts);
        expect(() => mg.linear(x, mg.zeros([4, 6], opts), b)).toThrow(/linear: weight \[4,6\] expects inputs of width 6, but x is \[2,3,5\]/);
        expect(() => mg.linear(x, w, mg.zeros([5], opts))).toThrow(/linear: bias \[5\] does not match the weight's 4 outputs/);
        expect(() => mg.linear(x, mg.zeros([4, 5, 1], opts), b)).toThrow(/linear: weight must be \[out, in\]/);
        expect(() => mg.linear(mg.zeros([2, 5], { ...opts, dtype: 'int32' }), w, b)).toThrow(/linear: tensor 'x' has dtype int32/);
        expect(() => mg.linear(x, mg.zeros([4, 5], { ...opts, dtype: 'bfloat16' }), b)).toThrow(/linear: dtypes differ/);
        expect(() => mg.linear(x, w, b, { activation: 'relu' as 'gelu' })).toThrow(/linear: unknown activation 'relu'/);
        expect(() => mg.linear(x, w, mg.zeros([2, 2], opts))).toThrow(mg.MemgptError);
      });
    });
  });
});
