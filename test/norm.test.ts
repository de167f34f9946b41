// The "norm" family (layerNorm, embedding, rope, sinusoidalPositions) on every backend:
// forward against the float64 loops of reference_norm.ts (structured inputs first, then
// random ones with odd sizes), backward by finite differences, determinism of the
// reductions over rows, long positions, bad input and leaks.
import { describe, expect, it } from 'vitest';

import * as mg from '../lib/index.js';
import { expectClose, expectNoLeaks, forEachDevice, randomArray, values } from './helpers.js';
import { refEmbedding, refEmbeddingGrad, refLayerNorm, refLayerNormBackward, refRope, refSinusoidal } from './reference_norm.js';

const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

forEachDevice((device) => {
  const opts = { device };

  describe('layerNorm', () => {
    it('normalises arange rows and a constant row (structured)', () => {
      mg.tidy(() => {
        const x = mg.tensor([0, 1, 2, 3, 4, 5, 5, 5, 5, 5], [2, 5], opts);
        const w = mg.ones([5], opts), b = mg.zeros([5], opts);
        const y = values(mg.layerNorm(x, w, b));
        // Row 0: mean 2, biased variance 2.
        const s = 1 / Math.sqrt(2 + 1e-5);
        expectClose(y.slice(0, 5), [-2 * s, -s, 0, s, 2 * s], 1e-6, 1e-6);
        // A constant row has zero variance: the output is the bias.
        expectClose(y.slice(5), [0, 0, 0, 0, 0], 1e-6, 0);
      });
    });

    for (const shape of [[3, 7], [2, 5, 33], [1, 1, 768]]) {
      it(`matches the reference on random ${JSON.stringify(shape)}`, () => {
        mg.tidy(() => {
          const d = shape[shape.length - 1];
          const xv = randomArray(size(shape), 1, -3, 3), wv = randomArray(d, 2), bv = randomArray(d, 3);
          const y = mg.layerNorm(mg.tensor(xv, shape, opts), mg.tensor(wv, [d], opts), mg.tensor(bv, [d], opts));
          expect(y.shape).toEqual(shape);
          expectClose(y.toArray(), refLayerNorm(xv, wv, bv, d), 2e-5, 2e-5);
        });
      });
    }

    it('rows longer than a block keeps in registers (2051 wide: the uncached kernels) match float64 both ways', () => {
      mg.tidy(() => {
        const [rows, d] = [3, 2051];
        const xv = randomArray(rows * d, 8, -3, 3), wv = randomArray(d, 9), bv = randomArray(d, 10), gv = randomArray(rows * d, 11);
        const x = mg.tensor(xv, [rows, d], { ...opts, requiresGrad: true });
        const w = mg.tensor(wv, [d], { ...opts, requiresGrad: true }), b = mg.tensor(bv, [d], { ...opts, requiresGrad: true });
        const y = mg.layerNorm(x, w, b);
        expectClose(y.toArray(), refLayerNorm(xv, wv, bv, d), 2e-5, 2e-5);
        y.backward(mg.tensor(gv, [rows, d], opts));
        const ref = refLayerNormBackward(xv, wv, gv, d);
        expectClose(x.grad!.toArray(), ref.dx, 1e-4, 1e-4);
        expectClose(w.grad!.toArray(), ref.dw, 1e-4, 1e-4);
        expectClose(b.grad!.toArray(), ref.db, 1e-4, 1e-4);
      });
    });

    it('stays accurate when the mean is large against the spread (two-pass variance)', () => {
      mg.tidy(() => {
        const xv = randomArray(4 * 64, 4, 999, 1001);
        const w = mg.ones([64], opts), b = mg.zeros([64], opts);
        const y = mg.layerNorm(mg.tensor(xv, [4, 64], opts), w, b);
        // Inputs near 1000 carry ~3e-5 of rounding each; divided by a spread of ~0.6.
        expectClose(y.toArray(), refLayerNorm(xv, new Float64Array(64).fill(1), new Float64Array(64), 64), 2e-4, 0);
      });
    });

    it('gradients of x, weight and bias match finite differences', () => {
      mg.tidy(() => {
        for (const shape of [[3, 7], [2, 3, 5]]) {
          const d = shape[shape.length - 1];
          const x = mg.tensor(randomArray(size(shape), 5, -2, 2), shape, opts);
          const w = mg.tensor(randomArray(d, 6, 0.5, 1.5), [d], opts), b = mg.tensor(randomArray(d, 7), [d], opts);
          mg.assertGradients((a, c, e) => mg.layerNorm(a, c, e), [x, w, b]);
        }
      });
    });

    it('reduces dweight and dbias in an order that does not depend on the thread count', () => {
      const grads = (threads: number) => {
        mg.setNumThreads(threads);
        return mg.tidy(() => {
          const x = mg.tensor(randomArray(301 * 37, 8), [301, 37], { ...opts, requiresGrad: true });
          const w = mg.tensor(randomArray(37, 9), [37], { ...opts, requiresGrad: true });
          const b = mg.tensor(randomArray(37, 10), [37], { ...opts, requiresGrad: true });
          mg.layerNorm(x, w, b).backward(mg.tensor(randomArray(301 * 37, 11), [301, 37], opts));
          return [x, w, b].map((t) => values(t.grad!));
        });
      };
      const before = mg.numThreads();
      try {
        const one = grads(1), two = grads(2), three = grads(3);
        expect(two).toEqual(one);
        expect(three).toEqual(one);
      } finally {
        mg.setNumThreads(before);
      }
    });

    it('computes bfloat16 in float32', () => {
      mg.tidy(() => {
        const bf = { ...opts, dtype: 'bfloat16' as const };
        const x = mg.tensor(randomArray(3 * 16, 12, -2, 2), [3, 16], bf);
        const w = mg.tensor(randomArray(16, 13), [16], bf), b = mg.tensor(randomArray(16, 14), [16], bf);
        const y = mg.layerNorm(x, w, b);
        expect(y.dtype).toBe('bfloat16');
        // Inputs as rounded to bfloat16; the output is rounded once more (8 bits of mantissa).
        expectClose(y.toArray(), refLayerNorm(x.toArray(), w.toArray(), b.toArray(), 16), 1e-2, 1e-2);
      });
    });

    it('rejects bad shapes, dtypes and eps with clear errors', () => {
      mg.tidy(() => {
        const x = mg.zeros([2, 3, 32], opts);
        expect(() => mg.layerNorm(x, mg.ones([64], opts), mg.zeros([32], opts))).toThrow(
          'layerNorm: weight [64] does not match the last dim of x [2,3,32]',
        );
        expect(() => mg.layerNorm(x, mg.ones([32], opts), mg.zeros([1, 32], opts))).toThrow(/layerNorm: bias \[1,32\] does not match/);
        expect(() => mg.layerNorm(mg.zeros([2, 32], { ...opts, dtype: 'int32' }), mg.ones([32], opts), mg.zeros([32], opts))).toThrow(
          /layerNorm: tensor 'x' has dtype int32/,
        );
        expect(() => mg.layerNorm(x, mg.ones([32], { ...opts, dtype: 'bfloat16' }), mg.zeros([32], opts))).toThrow(/dtypes differ/);
        expect(() => mg.layerNorm(x, mg.ones([32], opts), mg.zeros([32], opts), -1)).toThrow(/eps must be a finite non-negative/);
      });
    });

    it('frees everything it made, forward and backward', () => {
      expectNoLeaks(device, () => {
        const w = mg.parameter(mg.ones([9], opts)), b = mg.parameter(mg.zeros([9], opts));
        mg.tidy(() => {
          const x = mg.tensor(randomArray(4 * 9, 15), [4, 9], { ...opts, requiresGrad: true });
          mg.sum(mg.mul(mg.layerNorm(x, w, b), mg.layerNorm(x, w, b))).backward();
          x.zeroGrad();
        });
        // A forward whose graph is dropped without backward frees its saved statistics too.
        mg.tidy(() => {
          mg.layerNorm(mg.ones([2, 9], opts), w, b);
        });
        w.zeroGrad();
        b.zeroGrad();
        w.dispose();
        b.dispose();
      });
    });
  });

  describe('embedding', () => {
    it('picks rows (structured)', () => {
      mg.tidy(() => {
        const table = mg.reshape(mg.arange(15, opts), [5, 3]);
        const ids = mg.tensor([4, 0, 2, 2], [2, 2], { ...opts, dtype: 'int32' });
        expect(mg.embedding(ids, table).toNested()).toEqual([[[12, 13, 14], [0, 1, 2]], [[6, 7, 8], [6, 7, 8]]]);
      });
    });

    it('matches the reference forward and backward with repeated ids', () => {
      mg.tidy(() => {
        const V = 11, D = 5, shape = [3, 7];
        const idv = Array.from({ length: 21 }, (_, i) => (i * 7) % 4 === 0 ? 3 : (i * 5) % V);
        const ids = mg.tensor(idv, shape, { ...opts, dtype: 'int32' });
        const tv = randomArray(V * D, 20);
        const table = mg.tensor(tv, [V, D], { ...opts, requiresGrad: true });
        const out = mg.embedding(ids, table);
        expect(out.shape).toEqual([3, 7, D]);
        expectClose(out.toArray(), refEmbedding(idv, tv, D), 0, 0);
        const gv = randomArray(21 * D, 21);
        out.backward(mg.tensor(gv, [3, 7, D], opts));
        // Rows never picked get an explicit zero gradient.
        expectClose(table.grad!.toArray(), refEmbeddingGrad(idv, gv, V, D), 1e-6, 1e-6);
        mg.assertGradients((t) => mg.embedding(ids, t), [mg.tensor(tv, [V, D], opts)]);
      });
    });

    it('says which token id is outside the vocabulary', () => {
      mg.tidy(() => {
        const table = mg.zeros([256, 4], opts);
        const bad = mg.tensor([1, 2, 3, 4, 5, 300, 7], [7], { ...opts, dtype: 'int32' });
        expect(() => mg.embedding(bad, table)).toThrow('embedding: token id 300 at position 5 is outside the vocabulary (256)');
        const negative = mg.tensor([0, -1], [1, 2], { ...opts, dtype: 'int32' });
        expect(() => mg.embedding(negative, table)).toThrow(/embedding: token id -1 at position 1 is outside the vocabulary \(256\)/);
      });
    });

    it('rejects float ids and a table that is not a matrix', () => {
      mg.tidy(() => {
        expect(() => mg.embedding(mg.zeros([3], opts), mg.zeros([4, 2], opts))).toThrow(/embedding: ids must be int32 token ids \(got float32\)/);
        const ids = mg.zeros([3], { ...opts, dtype: 'int32' });
        expect(() => mg.embedding(ids, mg.zeros([8], opts))).toThrow(/embedding: table must be \[vocab, width\] \(got \[8\]\)/);
      });
    });

    it('frees everything it made, forward and backward', () => {
      expectNoLeaks(device, () => {
        const table = mg.parameter(mg.randn([6, 4], { ...opts, seed: 3 }));
        mg.tidy(() => {
          const ids = mg.tensor([5, 0, 5], [3], { ...opts, dtype: 'int32' });
          mg.sum(mg.embedding(ids, table)).backward();
        });
        table.zeroGrad();
        table.dispose();
      });
    });
  });

  describe('rope', () => {
    it('leaves position 0 unchanged and rotates ones by the reference angles (structured)', () => {
      mg.tidy(() => {
        const y = mg.rope(mg.ones([1, 3, 8], opts), 2);
        expectClose(values(y).slice(0, 8), new Array(8).fill(1), 0, 0);
        expectClose(y.toArray(), refRope(new Float64Array(24).fill(1), 1, 3, 8, 2), 1e-6, 1e-6);
      });
    });

    for (const [shape, heads, offset] of [[[2, 5, 12], 3, 0], [[3, 7, 12], 2, 7], [[1, 9, 6], 1, 123]] as [number[], number, number][]) {
      it(`matches the reference on ${JSON.stringify(shape)}, ${heads} heads, offset ${offset}`, () => {
        mg.tidy(() => {
          const xv = randomArray(size(shape), 30);
          const y = mg.rope(mg.tensor(xv, shape, opts), heads, offset);
          expectClose(y.toArray(), refRope(xv, shape[0], shape[1], shape[2], heads, offset), 1e-6, 1e-5);
        });
      });
    }

    it('stays accurate at long positions (offset 100000)', () => {
      mg.tidy(() => {
        const xv = randomArray(2 * 3 * 32, 31);
        const y = mg.rope(mg.tensor(xv, [2, 3, 32], opts), 2, 100000);
        // A float32 angle p·θ near 1e5 radians would be off by ~4e-3; double angles keep float32 rounding.
        expectClose(y.toArray(), refRope(xv, 2, 3, 32, 2, 100000), 1e-6, 1e-5);
        // Many positions in one call (the angles of later tokens are stepped from the first one's).
        const long = randomArray(515 * 8, 34);
        expectClose(mg.rope(mg.tensor(long, [1, 515, 8], opts), 1, 100000).toArray(), refRope(long, 1, 515, 8, 1, 100000), 1e-6, 1e-5);
      });
    });

    it('gradient (the inverse rotation) matches finite differences', () => {
      mg.tidy(() => {
        const x = mg.tensor(randomArray(2 * 3 * 12, 32), [2, 3, 12], opts);
        mg.assertGradients((t) => mg.rope(t, 3, 5), [x]);
        mg.assertGradients((t) => mg.rope(t, 2, 100000), [x]);
      });
    });

    it('rejects odd head widths, heads that do not divide the width, and bad shapes', () => {
      mg.tidy(() => {
        expect(() => mg.rope(mg.zeros([1, 2, 6], opts), 2)).toThrow(/rope: the head width 3 .* must be even/);
        expect(() => mg.rope(mg.zeros([1, 2, 6], opts), 4)).toThrow(/rope: nHeads 4 does not divide the width of x \[1,2,6\]/);
        expect(() => mg.rope(mg.zeros([2, 6], opts), 1)).toThrow(/rope: x must be \[batch, tokens, width\] \(got \[2,6\]\)/);
        expect(() => mg.rope(mg.zeros([1, 2, 6], opts), 1, -3)).toThrow(/rope: positionOffset must be a non-negative integer/);
      });
    });

    it('frees everything it made, forward and backward', () => {
      expectNoLeaks(device, () => {
        mg.tidy(() => {
          const x = mg.tensor(randomArray(24, 33), [1, 3, 8], { ...opts, requiresGrad: true });
          mg.sum(mg.rope(x, 2, 3)).backward();
          x.zeroGrad();
        });
      });
    });
  });

  describe('sinusoidalPositions', () => {
    it('row 0 alternates sin 0 and cos 0; rows match the reference', () => {
      mg.tidy(() => {
        const p = mg.sinusoidalPositions(5, 6, { device });
        expect(p.shape).toEqual([5, 6]);
        expect(p.requiresGrad).toBe(false);
        expect(values(p).slice(0, 6)).toEqual([0, 1, 0, 1, 0, 1]);
        expectClose(p.toArray(), refSinusoidal(5, 6), 1e-7, 1e-6);
      });
    });

    it('stays accurate at long positions (offset 100000)', () => {
      mg.tidy(() => {
        const p = mg.sinusoidalPositions(3, 64, { device, positionOffset: 100000 });
        expectClose(p.toArray(), refSinusoidal(3, 64, 100000), 1e-7, 1e-6);
      });
    });

    it('rejects an odd width and bad sizes', () => {
      expect(() => mg.sinusoidalPositions(4, 7, { device })).toThrow(/sinusoidalPositions: the width D = 7 must be even/);
      expect(() => mg.sinusoidalPositions(-1, 8, { device })).toThrow(/sinusoidalPositions: T must be a non-negative integer/);
      expect(() => mg.sinusoidalPositions(4, 8, { device, positionOffset: 0.5 })).toThrow(/positionOffset must be a non-negative integer/);
    });
  });
});
