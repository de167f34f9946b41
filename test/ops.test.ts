// Every op of the foundation, forward against plain-loop references and backward
// against finite differences, on every backend; structured inputs first
// (arange, ones) to expose indexing bugs, then random ones with odd shapes.
import { describe, expect, it } from 'vitest';

import * as mg from '../lib/index.js';
import { forEachDevice, expectClose, randomArray, values } from './helpers.js';
import { broadcastIndex, refMatmul, refSoftmax, refSum } from './reference.js';

const binaryCases: [number[], number[]][] = [
  [[2, 3], [2, 3]],
  [[2, 3], [3]],
  [[5, 7], [5, 1]],
  [[3, 1, 4], [2, 4]],
  [[17], []],
  [[2, 3, 4, 5], [1, 3, 1, 5]],
];

const binaryOps = {
  add: { fn: mg.add, ref: (a: number, b: number) => a + b },
  sub: { fn: mg.sub, ref: (a: number, b: number) => a - b },
  mul: { fn: mg.mul, ref: (a: number, b: number) => a * b },
  div: { fn: mg.div, ref: (a: number, b: number) => a / b },
};

function size(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

forEachDevice((device) => {
  const opts = { device };

  describe('elementwise', () => {
    it('adds arange tensors with a broadcast row (structured)', () => {
      mg.tidy(() => {
        const a = mg.reshape(mg.arange(6, opts), [2, 3]);
        const b = mg.tensor([10, 20, 30], [3], opts);
        expect(mg.add(a, b).toNested()).toEqual([[10, 21, 32], [13, 24, 35]]);
        expect(mg.mul(a, b).toNested()).toEqual([[0, 20, 60], [30, 80, 150]]);
      });
    });

    for (const [name, { fn, ref }] of Object.entries(binaryOps)) {
      for (const [sa, sb] of binaryCases) {
        it(`${name} ${JSON.stringify(sa)} with ${JSON.stringify(sb)}: values and gradient`, () => {
          mg.tidy(() => {
            const av = randomArray(size(sa), 1);
            const bv = randomArray(size(sb), 2, name === 'div' ? 0.5 : -1, name === 'div' ? 2 : 1);
            const a = mg.tensor(av, sa, opts), b = mg.tensor(bv, sb, opts);
            const out = fn(a, b);
            const outShape = mg.add(a, b).shape as number[];
            expect(out.shape).toEqual(outShape);
            const expected = Array.from({ length: size(outShape) }, (_, i) =>
              ref(av[broadcastIndex(outShape, sa, i)], bv[broadcastIndex(outShape, sb, i)]),
            );
            expectClose(out.toArray(), expected, 1e-6, 1e-6);
            mg.assertGradients(fn, [a, b]);
          });
        });
      }
    }

    it('scale, addScalar and neg', () => {
      mg.tidy(() => {
        const x = mg.tensor([1, -2, 3.5], [3], opts);
        expect(values(mg.scale(x, 2))).toEqual([2, -4, 7]);
        expect(values(mg.addScalar(x, 1))).toEqual([2, -1, 4.5]);
        expect(values(mg.neg(x))).toEqual([-1, 2, -3.5]);
        mg.assertGradients((t) => mg.scale(mg.addScalar(t, 3), -1.5), [x]);
      });
    });

    it('computes bfloat16 in float32 and rounds once', () => {
      mg.tidy(() => {
        const av = randomArray(37, 3), bv = randomArray(37, 4);
        const a = mg.tensor(av, [37], { ...opts, dtype: 'bfloat16' });
        const b = mg.tensor(bv, [37], { ...opts, dtype: 'bfloat16' });
        const ar = a.toArray(), br = b.toArray();
        const out = mg.mul(a, b);
        expect(out.dtype).toBe('bfloat16');
        // Exact product of the bf16 inputs, rounded once to bf16: within half a bf16 ulp (2^-9 relative).
        expectClose(out.toArray(), Array.from(ar, (v, i) => v * br[i]), 0, 2 ** -8);
      });
    });
  });

  describe('matmul', () => {
    it('multiplies small structured matrices', () => {
      mg.tidy(() => {
        const a = mg.reshape(mg.arange(6, opts), [2, 3]);
        const b = mg.ones([3, 2], opts);
        expect(mg.matmul(a, b).toNested()).toEqual([[3, 3], [12, 12]]);
        expect(mg.matmul(a, a, { transB: true }).toNested()).toEqual([[5, 14], [14, 50]]);
        expect(mg.matmul(a, a, { transA: true }).toNested()).toEqual([[9, 12, 15], [12, 17, 22], [15, 22, 29]]);
      });
    });

    // Sizes chosen to cross the CPU kernel's blocks (MR 6, NR 16, KC 256, MC 120) with ragged edges.
    const shapes = [
      { batch: [], m: 7, n: 19, k: 13 },
      { batch: [2, 3], m: 5, n: 17, k: 33 },
      { batch: [], m: 131, n: 50, k: 300 },
      { batch: [4], m: 1, n: 1, k: 1 },
      { batch: [3], m: 64, n: 40, k: 0 },
    ];
    for (const { batch, m, n, k } of shapes) {
      for (const transA of [false, true]) {
        for (const transB of [false, true]) {
          it(`[${batch}] ${m}x${k} @ ${k}x${n} transA=${transA} transB=${transB}`, () => {
            mg.tidy(() => {
              const nb = size(batch);
              const av = randomArray(nb * m * k, 5), bv = randomArray(nb * k * n, 6);
              const a = mg.tensor(av, [...batch, ...(transA ? [k, m] : [m, k])], opts);
              const b = mg.tensor(bv, [...batch, ...(transB ? [n, k] : [k, n])], opts);
              const c = mg.matmul(a, b, { transA, transB });
              expect(c.shape).toEqual([...batch, m, n]);
              expectClose(c.toArray(), refMatmul(av, bv, nb, m, n, k, transA, transB), 1e-5, 1e-5);
            });
          });
        }
      }
    }

    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        it(`gradients, transA=${transA} transB=${transB}, batched, shared weight and shared input`, () => {
          mg.tidy(() => {
            const [m, n, k] = [3, 5, 4];
            const aShape = transA ? [k, m] : [m, k], bShape = transB ? [n, k] : [k, n];
            const a3 = mg.tensor(randomArray(2 * m * k, 7), [2, ...aShape], opts);
            const b3 = mg.tensor(randomArray(2 * k * n, 8), [2, ...bShape], opts);
            const a2 = mg.tensor(randomArray(m * k, 9), aShape, opts);
            const b2 = mg.tensor(randomArray(k * n, 10), bShape, opts);
            const f = (x: mg.Tensor, y: mg.Tensor) => mg.matmul(x, y, { transA, transB });
            mg.assertGradients(f, [a3, b3]);
            mg.assertGradients(f, [a3, b2]);
            mg.assertGradients(f, [a2, b3]);
            mg.assertGradients(f, [a2, b2]);
          });
        });
      }
    }

    it('shares a weight across a batch of one with a leading dim', () => {
      mg.tidy(() => {
        const a = mg.tensor(randomArray(12, 11), [1, 3, 4], opts);
        const w = mg.tensor(randomArray(8, 12), [4, 2], opts);
        mg.assertGradients((x, y) => mg.matmul(x, y), [a, w]);
      });
    });

    it('takes bfloat16 inputs with float32 accumulation', () => {
      mg.tidy(() => {
        const [m, n, k] = [9, 21, 70];
        const a = mg.tensor(randomArray(m * k, 13), [m, k], { ...opts, dtype: 'bfloat16' });
        const b = mg.tensor(randomArray(k * n, 14), [k, n], { ...opts, dtype: 'bfloat16' });
        const c = mg.matmul(a, b);
        expect(c.dtype).toBe('bfloat16');
        // The exact product of the rounded inputs, then one bf16 rounding of the output.
        expectClose(c.toArray(), refMatmul(a.toArray(), b.toArray(), 1, m, n, k, false, false), 1e-3, 2 ** -8);
      });
    });
  });

  describe('sum and mean', () => {
    const shape = [3, 4, 5];
    const cases: (number[] | undefined)[] = [undefined, [0], [1], [2], [0, 2], [0, 1], [1, 2], [-1]];
    for (const axes of cases) {
      it(`sum over ${axes ? JSON.stringify(axes) : 'all axes'}`, () => {
        mg.tidy(() => {
          const xv = randomArray(60, 15);
          const x = mg.tensor(xv, shape, opts);
          const norm = (axes ?? [0, 1, 2]).map((a) => (a < 0 ? a + 3 : a));
          const kept = mg.sum(x, axes, true);
          expect(kept.shape).toEqual(shape.map((d, i) => (norm.includes(i) ? 1 : d)));
          expectClose(kept.toArray(), refSum(xv, shape, norm), 1e-5, 1e-5);
          expect(mg.sum(x, axes).shape).toEqual(shape.filter((_, i) => !norm.includes(i)));
          mg.assertGradients((t) => mg.sum(t, axes), [x]);
        });
      });
    }

    it('sums arange exactly and takes the mean', () => {
      mg.tidy(() => {
        const x = mg.reshape(mg.arange(12, opts), [3, 4]);
        expect(mg.sum(x).item()).toBe(66);
        expect(values(mg.sum(x, 0))).toEqual([12, 15, 18, 21]);
        expect(values(mg.mean(x, 1))).toEqual([1.5, 5.5, 9.5]);
        mg.assertGradients((t) => mg.mean(t, [0]), [x]);
      });
    });
  });

  describe('softmax', () => {
    for (const [rows, cols] of [[1, 1], [4, 7], [33, 130], [2, 1000]]) {
      it(`${rows}x${cols}: values and gradient`, () => {
        mg.tidy(() => {
          const xv = randomArray(rows * cols, 16, -4, 4);
          const x = mg.tensor(xv, [rows, cols], opts);
          expectClose(mg.softmax(x).toArray(), refSoftmax(xv, rows, cols), 1e-6, 1e-5);
          if (rows * cols <= 1000) mg.assertGradients((t) => mg.softmax(t), [x]);
        });
      });
    }

    it('rows wider than one warp handles (3x1500: the block kernels) match float64 both ways', () => {
      mg.tidy(() => {
        const [rows, cols] = [3, 1500];
        const xv = randomArray(rows * cols, 17, -4, 4), gv = randomArray(rows * cols, 18);
        const x = mg.tensor(xv, [rows, cols], { ...opts, requiresGrad: true });
        const y = mg.softmax(x);
        const yRef = refSoftmax(xv, rows, cols);
        expectClose(y.toArray(), yRef, 1e-6, 1e-5);
        y.backward(mg.tensor(gv, [rows, cols], opts));
        // dx = y·(g − Σ g·y) row by row.
        const dx = new Float64Array(rows * cols);
        for (let r = 0; r < rows; r++) {
          let dot = 0;
          for (let c = 0; c < cols; c++) dot += gv[r * cols + c] * yRef[r * cols + c];
          for (let c = 0; c < cols; c++) dx[r * cols + c] = yRef[r * cols + c] * (gv[r * cols + c] - dot);
        }
        expectClose(x.grad!.toArray(), dx, 1e-7, 1e-4);
      });
    });

    it('is stable for large logits', () => {
      mg.tidy(() => {
        const y = mg.softmax(mg.tensor([1000, 1000, -1000], [1, 3], opts));
        expectClose(y.toArray(), [0.5, 0.5, 0], 1e-7, 0);
      });
    });
  });

  describe('shape ops', () => {
    it('reshape shares memory; permute and transpose copy', () => {
      mg.tidy(() => {
        const x = mg.reshape(mg.arange(24, opts), [2, 3, 4]);
        expect(mg.reshape(x, [6, -1]).shape).toEqual([6, 4]);
        const before = mg.memory(device).liveStorages;
        mg.reshape(x, [4, 6]);
        expect(mg.memory(device).liveStorages).toBe(before);
        const p = mg.permute(x, [2, 0, 1]);
        expect(p.shape).toEqual([4, 2, 3]);
        expect((p.toNested() as number[][][])[1][1][2]).toBe(12 + 2 * 4 + 1);
        expect(mg.transpose(mg.reshape(mg.arange(6, opts), [2, 3])).toNested()).toEqual([[0, 3], [1, 4], [2, 5]]);
        mg.assertGradients((t) => mg.permute(t, [1, 2, 0]), [mg.tensor(randomArray(24, 17), [2, 3, 4], opts)]);
      });
    });

    it('broadcastTo and its gradient', () => {
      mg.tidy(() => {
        const x = mg.tensor([1, 2, 3], [3, 1], opts);
        expect(mg.broadcastTo(x, [2, 3, 2]).toNested()).toEqual([[[1, 1], [2, 2], [3, 3]], [[1, 1], [2, 2], [3, 3]]]);
        mg.assertGradients((t) => mg.broadcastTo(t, [2, 3, 4]), [x]);
      });
    });

    it('casts between float32, bfloat16 and int32', () => {
      mg.tidy(() => {
        const x = mg.tensor([1.00390625, -2.5, 3.7, 65504, 1e-3], [5], opts);
        const b = mg.cast(x, 'bfloat16');
        // bf16 keeps 8 bits of mantissa: 1.00390625 = 1 + 2^-8 rounds to even (1), 3.7 to 3.703125.
        expect(values(b)).toEqual([1, -2.5, 3.703125, 65536, 0.00099945068359375]);
        expect(values(mg.cast(x, 'int32'))).toEqual([1, -2, 3, 65504, 0]);
        expect(mg.cast(mg.tensor(new Int32Array([7, -3]), [2], opts), 'float32').toArray()).toEqual(new Float32Array([7, -3]));
        // The gradient of a cast is the identity, cast back (finite differences would only see bf16 steps).
        const leaf = mg.tensor([0.5, 0.25], [2], { ...opts, requiresGrad: true });
        mg.sum(mg.mul(mg.cast(leaf, 'bfloat16'), mg.tensor([3, -1], [2], { ...opts, dtype: 'bfloat16' }))).backward();
        expect(leaf.grad!.dtype).toBe('float32');
        expect(values(leaf.grad!)).toEqual([3, -1]);
        leaf.grad!.dispose();
      });
    });

    it('casts long arrays to bfloat16 with round-to-nearest-even, NaN and infinities kept (the vector loops and their tails)', () => {
      mg.tidy(() => {
        const n = 1037;  // not a multiple of any vector width
        const f = randomArray(n, 23, -3, 3);
        f.set([NaN, Infinity, -Infinity, 0, -0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.4e38, 1e-40], 500);
        const bits = new Uint32Array(f.buffer);
        // float32 → bfloat16 as native/common/common.h defines it: NaN stays a quiet NaN, else round to nearest even.
        const expected = Float32Array.from(bits, (u) => {
          const h = (u & 0x7fffffff) > 0x7f800000 ? (u >>> 16) | 0x40 : ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
          return new Float32Array(new Uint32Array([h << 16]).buffer)[0];
        });
        const b = mg.cast(mg.tensor(f, [n], opts), 'bfloat16');
        expect(b.toArray()).toEqual(expected);
        expect(mg.cast(b, 'float32').toArray()).toEqual(expected);  // widening is exact
      });
    });

    it('copyRowsInto writes rows of a larger tensor and nothing else', () => {
      mg.tidy(() => {
        const dst = mg.zeros([4, 3], opts);
        mg.copyRowsInto(mg.tensor([1, 2, 3, 4, 5, 6], [2, 3], opts), dst, 1, 3);
        expect(dst.toNested()).toEqual([[0, 0, 0], [1, 2, 3], [4, 5, 6], [0, 0, 0]]);
        expect(() => mg.copyRowsInto(mg.zeros([2, 3], opts), dst, 3, 3)).toThrow(/copyRowsInto: 6 elements at row 3 of 3 do not fit \[4,3\]/);
        expect(() => mg.copyRowsInto(mg.zeros([3], { ...opts, dtype: 'bfloat16' }), dst, 0, 3)).toThrow(/copyRowsInto: dtypes differ/);
      });
    });

    it('moves between devices and clones', () => {
      mg.tidy(() => {
        const x = mg.tensor([1, 2, 3], [3], opts);
        const onCpu = mg.to(x, 'cpu');
        expect(onCpu.device).toBe('cpu');
        expect(values(onCpu)).toEqual([1, 2, 3]);
        const c = mg.clone(x);
        expect(c.device).toBe(device);
        expect(values(c)).toEqual([1, 2, 3]);
        mg.assertGradients((t) => mg.scale(mg.to(t, 'cpu'), 2), [x]);
      });
    });
  });

  describe('bad arguments', () => {
    it('names the op and the shapes', () => {
      mg.tidy(() => {
        const a = mg.zeros([2, 3], opts), b = mg.zeros([4], opts);
        expect(() => mg.add(a, b)).toThrow(/add: shapes \[2,3\] and \[4\] cannot be broadcast/);
        expect(() => mg.matmul(a, mg.zeros([2, 2], opts))).toThrow(/matmul: inner dimensions differ, 3 vs 2 \(\[2,3\] @ \[2,2\]\)/);
        expect(() => mg.matmul(mg.zeros([2, 2, 3], opts), mg.zeros([3, 3, 2], opts))).toThrow(/matmul: batch dims \[2\] and \[3\] differ/);
        expect(() => mg.matmul(mg.zeros([3], opts), a)).toThrow(/at least 2 dims/);
        expect(() => mg.softmax(a, 0)).toThrow(/only the last axis/);
        expect(() => mg.sum(a, 2)).toThrow(/axis 2 is out of range/);
        expect(() => mg.reshape(a, [4, 2])).toThrow(/\[2,3\] \(6 elements\) cannot become \[4,2\]/);
        expect(() => mg.permute(a, [0, 0])).toThrow(/not a permutation/);
        expect(() => mg.broadcastTo(a, [3, 3])).toThrow(/cannot be broadcast/);
      });
    });

    it('rejects wrong dtypes, mixed dtypes and disposed tensors', () => {
      mg.tidy(() => {
        const i = mg.tensor(new Int32Array([1, 2]), [2], opts);
        const f = mg.zeros([2], opts), h = mg.zeros([2], { ...opts, dtype: 'bfloat16' });
        expect(() => mg.add(i, i)).toThrow(/add: tensor 'a' has dtype int32; expected float32 or bfloat16/);
        expect(() => mg.mul(f, h)).toThrow(/mul: dtypes differ \(float32 and bfloat16\)/);
        const gone = mg.ones([2], opts);
        gone.dispose();
        expect(() => mg.add(f, gone)).toThrow(/add: tensor 'b' \[2\] was disposed/);
        expect(() => gone.toArray()).toThrow(/was disposed/);
        expect(() => mg.add(f, 3 as unknown as mg.Tensor)).toThrow(/argument 'b' is not a tensor/);
      });
    });

    it('rejects bad creation arguments', () => {
      expect(() => mg.tensor([1, 2, 3], [2, 2], opts)).toThrow(/3 values do not fill shape \[2,2\]/);
      expect(() => mg.zeros([2, -1], opts)).toThrow(/bad shape/);
      expect(() => mg.zeros([1.5], opts)).toThrow(/bad shape/);
      expect(() => mg.tensor([[1, 2], [3]], undefined, opts)).toThrow(/ragged/);
      expect(() => mg.tensor([1.5], [1], { ...opts, dtype: 'int32' })).toThrow(/not a 32-bit integer/);
      expect(() => mg.zeros([2], { ...opts, dtype: 'float16' as mg.DType })).toThrow(/unknown dtype 'float16'/);
    });
  });
});

describe('errors from the addon', () => {
  it('a raw Error of a host copy (a device fault) becomes one MemgptError naming the op and tensor', () => {
    const t = mg.keep(mg.zeros([2, 3]));
    const backend = t.storage.backend as unknown as { copyToHost: (...a: unknown[]) => void; copyFromHost: (...a: unknown[]) => void };
    const [toHost, fromHost] = [backend.copyToHost, backend.copyFromHost];
    backend.copyToHost = () => { throw new Error('device lost'); };
    backend.copyFromHost = () => { throw new Error('device lost'); };
    try {
      expect(() => t.toArray()).toThrow(new mg.MemgptError('toArray: copying [2,3] float32 to or from cpu failed: device lost'));
      const before = mg.memory('cpu').liveTensors;
      expect(() => mg.tensor([1, 2, 3])).toThrow(/^tensor: copying \[3\] float32 to or from cpu failed: device lost$/);
      expect(mg.memory('cpu').liveTensors).toBe(before);
    } finally {
      backend.copyToHost = toHost;
      backend.copyFromHost = fromHost;
      t.dispose();
    }
  });
});
