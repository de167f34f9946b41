// The fused attention op (causal self-attention, RoPE, gated memory read) against the float64 loops of
// test/reference_attention.ts: structured inputs first, then random ones at shapes that are not multiples of
// the kernel's blocks (32 query rows, 64 keys); gradients of qkv, memKV and gateLogits by finite differences;
// causality, determinism across thread counts, bad input and leaks. bfloat16: forward and every gradient against
// float64 computed from the bf16 inputs (test/reference_attention.ts's closed-form backward, itself checked
// against the float32 kernels here), held to twice the error of a naive bf16 computation.
import { describe, expect, it } from 'vitest';

import * as mg from '../lib/index.js';
import { expectClose, expectNoLeaks, forEachDevice, randomArray } from './helpers.js';
import { refAttention, refAttentionBackward, refAttentionGradientsNumeric } from './reference_attention.js';

forEachDevice((device) => {
  const opts = { device };

  /** Random inputs of one case, as host arrays and tensors. */
  function makeCase(B: number, T: number, H: number, d: number, S: number, seed: number) {
    const D = H * d;
    const qkvHost = randomArray(B * T * 3 * D, seed);
    const memHost = S ? randomArray(B * S * 2 * D, seed + 1) : undefined;
    const gateHost = S ? randomArray(B * T * H, seed + 2, -3, 3) : undefined;
    const qkv = mg.tensor(qkvHost, [B, T, 3 * D], opts);
    const memKV = memHost ? mg.tensor(memHost, [B, S, 2 * D], opts) : undefined;
    const gateLogits = gateHost ? mg.tensor(gateHost, [B, T, H], opts) : undefined;
    return { qkvHost, memHost, gateHost, qkv, memKV, gateLogits };
  }

  describe('attention forward', () => {
    it('attends uniformly when all keys are equal (structured): A at p is the mean of v[0..p]', () => {
      mg.tidy(() => {
        const B = 2, T = 7, H = 3, d = 4, D = H * d;
        const host = new Float32Array(B * T * 3 * D);
        for (let b = 0; b < B; b++) {
          for (let t = 0; t < T; t++) {
            for (let c = 0; c < D; c++) {
              const base = (b * T + t) * 3 * D;
              host[base + c] = (c % 5) * 0.1;             // q: anything
              host[base + D + c] = 0.5;                    // k: all equal
              host[base + 2 * D + c] = t + 100 * b + c;    // v: arange-like
            }
          }
        }
        const out = mg.attention(mg.tensor(host, [B, T, 3 * D], opts), { nHeads: H, rope: false }).toArray();
        const expected = new Float64Array(B * T * D);
        for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) for (let c = 0; c < D; c++) expected[(b * T + t) * D + c] = t / 2 + 100 * b + c;
        expectClose(out, expected, 1e-4, 1e-6);
      });
    });

    it('gives the memory value when the gate is fully open and one slot (structured)', () => {
      mg.tidy(() => {
        const B = 2, T = 5, H = 2, d = 4, D = H * d, S = 1;
        const qkv = mg.reshape(mg.scale(mg.arange(B * T * 3 * D, opts), 0.01), [B, T, 3 * D]);
        const memHost = Float32Array.from({ length: B * S * 2 * D }, (_, i) => i);
        const gate = mg.full([B, T, H], 40, opts); // σ(40) = 1 in float32
        const out = mg.attention(qkv, { nHeads: H, rope: true, memKV: mg.tensor(memHost, [B, S, 2 * D], opts), gateLogits: gate }).toArray();
        const expected = new Float64Array(B * T * D);
        for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) for (let c = 0; c < D; c++) expected[(b * T + t) * D + c] = memHost[b * 2 * D + D + c];
        expectClose(out, expected, 1e-5, 1e-6);
      });
    });

    it('matches the reference on arange inputs with rope and memory (structured)', () => {
      mg.tidy(() => {
        const B = 2, T = 7, H = 3, d = 6, D = H * d, S = 5;
        const qkvHost = Float32Array.from({ length: B * T * 3 * D }, (_, i) => ((i % 13) - 6) * 0.1);
        const memHost = Float32Array.from({ length: B * S * 2 * D }, (_, i) => ((i % 7) - 3) * 0.2);
        const gateHost = Float32Array.from({ length: B * T * H }, (_, i) => (i % 5) - 2);
        const out = mg.attention(mg.tensor(qkvHost, [B, T, 3 * D], opts), {
          nHeads: H, rope: true, memKV: mg.tensor(memHost, [B, S, 2 * D], opts), gateLogits: mg.tensor(gateHost, [B, T, H], opts),
        });
        expect(out.shape).toEqual([B, T, D]);
        expectClose(out.toArray(), refAttention({ qkv: qkvHost, B, T, H, d, rope: true, memKV: memHost, gateLogits: gateHost, S }), 1e-5, 1e-4);
      });
    });

    let seed = 10;
    for (const rope of [false, true]) {
      for (const S of [0, 1, 5]) {
        for (const T of [1, 7, 33]) {
          for (const H of [1, 3]) {
            for (const d of [4, 6]) {
              const s = seed++;
              it(`random: rope=${rope} S=${S} B=2 T=${T} H=${H} d=${d}`, () => {
                mg.tidy(() => {
                  const B = 2;
                  const c = makeCase(B, T, H, d, S, s * 7);
                  const out = mg.attention(c.qkv, { nHeads: H, rope, memKV: c.memKV, gateLogits: c.gateLogits });
                  const ref = refAttention({ qkv: c.qkvHost, B, T, H, d, rope, memKV: c.memHost, gateLogits: c.gateHost, S });
                  expectClose(out.toArray(), ref, 1e-5, 1e-4);
                });
              });
            }
          }
        }
      }
    }

    it('random across several query blocks and key tiles: T=130, H=2, d=8, S=70', () => {
      mg.tidy(() => {
        const B = 2, T = 130, H = 2, d = 8, S = 70;
        const c = makeCase(B, T, H, d, S, 99);
        const out = mg.attention(c.qkv, { nHeads: H, rope: true, memKV: c.memKV, gateLogits: c.gateLogits });
        const ref = refAttention({ qkv: c.qkvHost, B, T, H, d, rope: true, memKV: c.memHost, gateLogits: c.gateHost, S });
        expectClose(out.toArray(), ref, 1e-5, 1e-4);
      });
    });

    it('is causal: changing the key and value at position 20 leaves outputs before it unchanged', () => {
      mg.tidy(() => {
        const B = 2, T = 40, H = 3, d = 4, D = H * d, S = 5, p = 20;
        const c = makeCase(B, T, H, d, S, 5);
        const before = mg.attention(c.qkv, { nHeads: H, rope: true, memKV: c.memKV, gateLogits: c.gateLogits }).toArray();
        const changed = c.qkvHost.slice();
        for (let b = 0; b < B; b++) for (let col = D; col < 3 * D; col++) changed[(b * T + p) * 3 * D + col] += 5;
        const after = mg.attention(mg.tensor(changed, [B, T, 3 * D], opts), { nHeads: H, rope: true, memKV: c.memKV, gateLogits: c.gateLogits }).toArray();
        for (let b = 0; b < B; b++) {
          for (let t = 0; t < T; t++) {
            const a = Array.from(before.subarray((b * T + t) * D, (b * T + t + 1) * D));
            const z = Array.from(after.subarray((b * T + t) * D, (b * T + t + 1) * D));
            if (t < p) expect(z).toEqual(a);
            else if (t === p) expect(z).not.toEqual(a);
          }
        }
      });
    });
  });

  describe('the SPEC v2 memory read (positional slots, one softmax with the segment)', () => {
    it('with a zero gate logit it is one causal softmax over the slots (at positions −S … −1) and the segment (structured)', () => {
      mg.tidy(() => {
        const B = 1, T = 6, H = 2, d = 4, D = H * d, S = 3;
        const c = makeCase(B, T, H, d, S, 123);
        const out = mg.attention(c.qkv, { nHeads: H, rope: true, memKV: c.memKV, gateLogits: mg.zeros([B, T, H], opts), memoryRead: 'positional' }).toArray();
        // The slots as S extra tokens before the segment: keys and values in one sequence, positions −S … T−1.
        const rot = (z: number[], p: number) => {
          const o = z.slice();
          for (let i = 0; i < d / 2; i++) {
            const th = Math.pow(10000, (-2 * i) / d), a = z[i], b = z[i + d / 2];
            o[i] = a * Math.cos(p * th) - b * Math.sin(p * th);
            o[i + d / 2] = a * Math.sin(p * th) + b * Math.cos(p * th);
          }
          return o;
        };
        const expected = new Float64Array(B * T * D);
        for (let h = 0; h < H; h++) {
          const row = (src: ArrayLike<number>, at: number) => Array.from({ length: d }, (_, i) => src[at + h * d + i]);
          const keys = [...Array.from({ length: S }, (_, j) => rot(row(c.memHost!, j * 2 * D), j - S)), ...Array.from({ length: T }, (_, t) => rot(row(c.qkvHost, t * 3 * D + D), t))];
          const vals = [...Array.from({ length: S }, (_, j) => row(c.memHost!, j * 2 * D + D)), ...Array.from({ length: T }, (_, t) => row(c.qkvHost, t * 3 * D + 2 * D))];
          for (let t = 0; t < T; t++) {
            const q = rot(row(c.qkvHost, t * 3 * D), t);
            const scores = keys.slice(0, S + t + 1).map((k) => k.reduce((a, v, i) => a + v * q[i], 0) / Math.sqrt(d));
            const mx = Math.max(...scores);
            const w = scores.map((x) => Math.exp(x - mx));
            const total = w.reduce((a, b) => a + b, 0);
            for (let i = 0; i < d; i++) expected[t * D + h * d + i] = w.reduce((a, wj, j) => a + wj * vals[j][i], 0) / total;
          }
        }
        expectClose(out, expected, 1e-5, 1e-5);
      });
    });

    let seed = 500;
    for (const memoryRead of ['positional', 'joint'] as const) {
      for (const rope of [true, false]) {
        for (const [T, S, H, d] of [[1, 1, 1, 4], [7, 5, 3, 6], [33, 2, 2, 4], [130, 70, 2, 8]]) {
          const s = seed++;
          it(`forward: ${memoryRead}, rope=${rope}, B=2 T=${T} S=${S} H=${H} d=${d}`, () => {
            mg.tidy(() => {
              const c = makeCase(2, T, H, d, S, s);
              const out = mg.attention(c.qkv, { nHeads: H, rope, memKV: c.memKV, gateLogits: c.gateLogits, memoryRead });
              const ref = refAttention({ qkv: c.qkvHost, B: 2, T, H, d, rope, memKV: c.memHost, gateLogits: c.gateHost, S, memoryRead });
              expectClose(out.toArray(), ref, 1e-5, 1e-4);
            });
          });
        }
        it(`gradients: ${memoryRead}, rope=${rope}: finite differences in float32, and the float64 reference's`, () => {
          mg.tidy(() => {
            const [B, T, H, d, S] = [2, 5, 2, 4, 3];
            const c = makeCase(B, T, H, d, S, 60);
            const fn = (q: mg.Tensor, m: mg.Tensor, g: mg.Tensor) => mg.attention(q, { nHeads: H, rope, memKV: m, gateLogits: g, memoryRead });
            mg.assertGradients(fn, [c.qkv, c.memKV!, c.gateLogits!]);
            const dOut = randomArray(B * T * H * d, 61);
            const inputs = [c.qkv, c.memKV!, c.gateLogits!].map((t) => mg.parameter(mg.tensor(t.toArray() as Float32Array, t.shape, opts)));
            mg.sum(mg.mul(fn(inputs[0], inputs[1], inputs[2]), mg.tensor(dOut, [B, T, H * d], opts))).backward();
            const ref = refAttentionGradientsNumeric({ qkv: c.qkvHost, B, T, H, d, rope, memKV: c.memHost, gateLogits: c.gateHost, S, memoryRead }, dOut);
            expectClose(inputs[0].grad!.toArray(), ref.dQkv, 1e-4, 1e-3);
            expectClose(inputs[1].grad!.toArray(), ref.dMemKV, 1e-4, 1e-3);
            expectClose(inputs[2].grad!.toArray(), ref.dGateLogits, 1e-4, 1e-3);
            for (const p of inputs) p.dispose();
          });
        });
      }
    }

    it('gradients across a query-block boundary and a key tile: T=70, S=66, H=1, d=6, positional', () => {
      mg.tidy(() => {
        const c = makeCase(1, 70, 1, 6, 66, 78);
        mg.assertGradients(
          (q, m, g) => mg.attention(q, { nHeads: 1, rope: true, memKV: m, gateLogits: g, memoryRead: 'positional' }),
          [c.qkv, c.memKV!, c.gateLogits!],
          { maxElements: 300 },
        );
      });
    });

    it('rejects an unknown memory read', () => {
      mg.tidy(() => {
        const c = makeCase(1, 3, 1, 4, 2, 1);
        expect(() => mg.attention(c.qkv, { nHeads: 1, rope: true, memKV: c.memKV, gateLogits: c.gateLogits, memoryRead: 'sideways' as mg.MemoryRead })).toThrow(/memoryRead must be/);
      });
    });
  });

  describe('attention backward', () => {
    // eps 1e-2 on inputs of size ~1: the float32 objective's rounding (~1e-7·|L|/eps) and the O(eps²) truncation
    // of the central difference both stay well under atol 1e-3 / rtol 1e-2.
    for (const rope of [false, true]) {
      for (const S of [0, 3]) {
        it(`gradients of qkv${S ? ', memKV and gateLogits' : ''}: rope=${rope}, B=2 T=5 H=2 d=4`, () => {
          mg.tidy(() => {
            const c = makeCase(2, 5, 2, 4, S, 40 + S);
            if (S) {
              mg.assertGradients((q, m, g) => mg.attention(q, { nHeads: 2, rope, memKV: m, gateLogits: g }), [c.qkv, c.memKV!, c.gateLogits!]);
            } else {
              mg.assertGradients((q) => mg.attention(q, { nHeads: 2, rope }), [c.qkv]);
            }
          });
        });
      }
    }

    it('gradients across a query-block boundary: T=35, H=1, d=6, S=2, rope', () => {
      mg.tidy(() => {
        const c = makeCase(1, 35, 1, 6, 2, 77);
        mg.assertGradients(
          (q, m, g) => mg.attention(q, { nHeads: 1, rope: true, memKV: m, gateLogits: g }),
          [c.qkv, c.memKV!, c.gateLogits!],
          { maxElements: 300 },
        );
      });
    });

    it('gives only the gradients asked for, and the same bits whatever the thread count', () => {
      const threads = mg.numThreads();
      try {
        const run = (n: number) => mg.tidy(() => {
          mg.setNumThreads(n);
          const c = makeCase(2, 37, 3, 4, 5, 3);
          c.qkv.requiresGrad = true;
          c.memKV!.requiresGrad = true;
          const out = mg.attention(c.qkv, { nHeads: 3, rope: true, memKV: c.memKV, gateLogits: c.gateLogits });
          mg.sum(mg.mul(out, out)).backward();
          expect(c.gateLogits!.grad).toBeNull();
          return [c.qkv.grad!.toArray(), c.memKV!.grad!.toArray()];
        });
        const one = run(1), many = run(3);
        expect(Array.from(many[0])).toEqual(Array.from(one[0]));
        expect(Array.from(many[1])).toEqual(Array.from(one[1]));
      } finally {
        mg.setNumThreads(threads);
      }
    });
  });

  describe('attention backward against float64 (checks the reference the bf16 cases use)', () => {
    for (const [rope, S, T, H, d] of [[false, 0, 9, 2, 4], [true, 5, 37, 2, 6]] as const) {
      it(`float32 gradients match refAttentionBackward: rope=${rope} S=${S} B=2 T=${T} H=${H} d=${d}`, () => {
        mg.tidy(() => {
          const B = 2, D = H * d;
          const c = makeCase(B, T, H, d, S, 123 + T);
          for (const t of [c.qkv, c.memKV, c.gateLogits]) if (t) t.requiresGrad = true;
          const dOutHost = randomArray(B * T * D, 321);
          mg.attention(c.qkv, { nHeads: H, rope, memKV: c.memKV, gateLogits: c.gateLogits }).backward(mg.tensor(dOutHost, [B, T, D], opts));
          const ref = refAttentionBackward({ qkv: c.qkvHost, B, T, H, d, rope, memKV: c.memHost, gateLogits: c.gateHost, S }, dOutHost);
          expectClose(c.qkv.grad!.toArray(), ref.dQkv, 1e-5, 1e-3);
          if (S) {
            expectClose(c.memKV!.grad!.toArray(), ref.dMemKV, 1e-5, 1e-3);
            expectClose(c.gateLogits!.grad!.toArray(), ref.dGateLogits, 1e-5, 1e-3);
          }
        });
      });
    }
  });

  describe('attention in bfloat16', () => {
    // The bar for bf16: RMS error at most twice that of a naive bf16 computation (exact math on the bf16 inputs,
    // each result rounded to bf16 once), both against float64 computed from the bf16 inputs. Shapes cross the
    // CPU's blocks (32 queries, 64 keys) and the CUDA tiles; on CUDA head widths that are multiples of 16 take the
    // tensor-core path (16, 32, 48, 64 and 128: each padded width and both backward tile heights), 6 and 8 the
    // SIMT one. Every checked tensor has enough elements for its RMS to be a stable statistic.
    const bf = { ...opts, dtype: 'bfloat16' as const };
    const toBf16 = (v: ArrayLike<number>) => mg.tensor(Float32Array.from(v), [v.length], bf).toArray();
    const rms = (a: ArrayLike<number>, b: ArrayLike<number>) => {
      let s = 0;
      for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
      return Math.sqrt(s / a.length);
    };
    const expectBf16Grade = (got: mg.Tensor, ref: ArrayLike<number>, what: string) => {
      expect(got.dtype, what).toBe('bfloat16');
      const values = got.toArray();
      const naive = rms(toBf16(ref), ref);
      expect(naive, what).toBeGreaterThan(0);
      expect(rms(values, ref), what).toBeLessThanOrEqual(2 * naive);
    };

    const cases = [
      { rope: false, S: 0, B: 2, T: 37, H: 2, d: 16 },
      { rope: true, S: 0, B: 2, T: 70, H: 3, d: 8 },
      { rope: true, S: 5, B: 2, T: 33, H: 2, d: 6 },
      { rope: false, S: 3, B: 2, T: 40, H: 2, d: 16 },
      { rope: true, S: 70, B: 1, T: 130, H: 2, d: 32 },
      { rope: true, S: 3, B: 1, T: 70, H: 1, d: 48 },
      { rope: true, S: 0, B: 1, T: 65, H: 2, d: 64 },
      { rope: false, S: 2, B: 1, T: 40, H: 2, d: 128 },
    ];
    for (const { rope, S, B, T, H, d } of cases) {
      it(`forward and gradients within twice a naive bf16 computation's error: rope=${rope} S=${S} B=${B} T=${T} H=${H} d=${d}`, () => {
        mg.tidy(() => {
          const D = H * d, seed = 500 + T + S;
          const qkv = mg.tensor(randomArray(B * T * 3 * D, seed), [B, T, 3 * D], { ...bf, requiresGrad: true });
          const memKV = S ? mg.tensor(randomArray(B * S * 2 * D, seed + 1), [B, S, 2 * D], { ...bf, requiresGrad: true }) : undefined;
          const gateLogits = S ? mg.tensor(randomArray(B * T * H, seed + 2, -3, 3), [B, T, H], { ...bf, requiresGrad: true }) : undefined;
          const dOut = mg.tensor(randomArray(B * T * D, seed + 3), [B, T, D], bf);
          // The bf16 values, exactly, as the float64 reference's inputs.
          const args = { qkv: qkv.toArray(), B, T, H, d, rope, memKV: memKV?.toArray(), gateLogits: gateLogits?.toArray(), S };
          const out = mg.attention(qkv, { nHeads: H, rope, memKV, gateLogits });
          expect(out.shape).toEqual([B, T, D]);
          expectBf16Grade(out, refAttention(args), 'out');
          out.backward(dOut);
          const ref = refAttentionBackward(args, dOut.toArray());
          expectBf16Grade(qkv.grad!, ref.dQkv, 'dQkv');
          if (S) {
            expectBf16Grade(memKV!.grad!, ref.dMemKV, 'dMemKV');
            expectBf16Grade(gateLogits!.grad!, ref.dGateLogits, 'dGateLogits');
          }
        });
      });
    }

    it('T = 1 and one memory slot: finite and close to float64', () => {
      mg.tidy(() => {
        const B = 3, T = 1, H = 4, d = 16, D = H * d, S = 1;
        const qkv = mg.tensor(randomArray(B * T * 3 * D, 61), [B, T, 3 * D], { ...bf, requiresGrad: true });
        const memKV = mg.tensor(randomArray(B * S * 2 * D, 62), [B, S, 2 * D], { ...bf, requiresGrad: true });
        const gateLogits = mg.tensor(randomArray(B * T * H, 63, -3, 3), [B, T, H], { ...bf, requiresGrad: true });
        const dOut = mg.tensor(randomArray(B * T * D, 64), [B, T, D], bf);
        const args = { qkv: qkv.toArray(), B, T, H, d, rope: true, memKV: memKV.toArray(), gateLogits: gateLogits.toArray(), S };
        const out = mg.attention(qkv, { nHeads: H, rope: true, memKV, gateLogits });
        // One key and one slot: the softmaxes are exactly 1, so O = g·mv + (1 − g)·v rounded once.
        expectClose(out.toArray(), refAttention(args), 0, 2 ** -8);
        out.backward(dOut);
        const ref = refAttentionBackward(args, dOut.toArray());
        // Gradients are bf16 and O(1): within a few bf16 ulps (D terms read the bf16-rounded A and R).
        expectClose(qkv.grad!.toArray(), ref.dQkv, 1e-2, 2 ** -7);
        expectClose(memKV.grad!.toArray(), ref.dMemKV, 1e-2, 2 ** -7);
        expectClose(gateLogits.grad!.toArray(), ref.dGateLogits, 1e-2, 2 ** -7);
      });
    });

    it('is deterministic and frees everything after forward and backward', () => {
      const run = () => mg.tidy(() => {
        const c = { B: 2, T: 37, H: 2, d: 16, S: 5 };
        const D = c.H * c.d;
        const qkv = mg.tensor(randomArray(c.B * c.T * 3 * D, 71), [c.B, c.T, 3 * D], { ...bf, requiresGrad: true });
        const memKV = mg.tensor(randomArray(c.B * c.S * 2 * D, 72), [c.B, c.S, 2 * D], { ...bf, requiresGrad: true });
        const gateLogits = mg.tensor(randomArray(c.B * c.T * c.H, 73), [c.B, c.T, c.H], { ...bf, requiresGrad: true });
        const out = mg.attention(qkv, { nHeads: c.H, rope: true, memKV, gateLogits });
        expect(out.dtype).toBe('bfloat16');
        mg.sum(mg.mul(out, out)).backward();
        const got = [out, qkv.grad!, memKV.grad!, gateLogits.grad!].map((t) => Array.from(t.toArray()));
        for (const t of [qkv, memKV, gateLogits]) t.zeroGrad();
        return got;
      });
      let first: number[][] = [];
      expectNoLeaks(device, () => {
        first = run();
      });
      expect(run()).toEqual(first);
    });
  });

  describe('attention errors and memory', () => {
    it('rejects bad shapes with clear errors', () => {
      mg.tidy(() => {
        const qkv = mg.zeros([2, 5, 36], opts); // D = 12
        const mem = mg.zeros([2, 3, 24], opts);
        const gate = mg.zeros([2, 5, 3], opts);
        expect(() => mg.attention(qkv, { nHeads: 5, rope: false })).toThrow(/attention: width D = 12 of qkv \[2,5,36\] is not divisible by nHeads = 5/);
        expect(() => mg.attention(mg.zeros([2, 5, 18], opts), { nHeads: 2, rope: true })).toThrow(/attention: rope needs an even head width, got d = 3/);
        expect(() => mg.attention(mg.zeros([2, 5, 35], opts), { nHeads: 1, rope: false })).toThrow(/attention: qkv must be \[B, T, 3D\], got \[2,5,35\]/);
        expect(() => mg.attention(qkv, { nHeads: 3, rope: false, memKV: mg.zeros([2, 3, 20], opts), gateLogits: gate })).toThrow(/attention: memKV must be \[B, S, 2D\] = \[2, S ≥ 1, 24\] .* got \[2,3,20\]/);
        expect(() => mg.attention(qkv, { nHeads: 3, rope: false, memKV: mg.zeros([1, 3, 24], opts), gateLogits: gate })).toThrow(/memKV must be \[B, S, 2D\].*got \[1,3,24\]/);
        expect(() => mg.attention(qkv, { nHeads: 3, rope: false, gateLogits: gate })).toThrow(/attention: gateLogits \[2,5,3\] given without memKV/);
        expect(() => mg.attention(qkv, { nHeads: 3, rope: false, memKV: mem })).toThrow(/attention: memKV \[2,3,24\] given without gateLogits/);
        expect(() => mg.attention(qkv, { nHeads: 3, rope: false, memKV: mem, gateLogits: mg.zeros([2, 5, 2], opts) })).toThrow(/gateLogits must be \[B, T, H\] = \[2, 5, 3\], got \[2,5,2\]/);
        expect(() => mg.attention(mg.zeros([2, 5, 36], { ...opts, dtype: 'int32' }), { nHeads: 3, rope: false })).toThrow(/attention: tensor 'qkv' has dtype int32; expected float32 or bfloat16/);
        const bf = { ...opts, dtype: 'bfloat16' as const };
        expect(() => mg.attention(qkv, { nHeads: 3, rope: false, memKV: mg.zeros([2, 3, 24], bf), gateLogits: gate })).toThrow(/attention: dtypes differ \(float32 and bfloat16\)/);
        expect(() => mg.attention(mg.zeros([2, 5, 36], bf), { nHeads: 3, rope: false, memKV: mg.zeros([2, 3, 24], bf), gateLogits: gate })).toThrow(/attention: dtypes differ \(bfloat16 and float32\)/);
      });
    });

    it('frees everything after forward and backward', () => {
      expectNoLeaks(device, () => {
        mg.tidy(() => {
          const c = makeCase(2, 9, 3, 4, 5, 8);
          for (const t of [c.qkv, c.memKV!, c.gateLogits!]) t.requiresGrad = true;
          const out = mg.attention(c.qkv, { nHeads: 3, rope: true, memKV: c.memKV, gateLogits: c.gateLogits });
          mg.sum(out).backward();
          const plain = mg.attention(c.qkv, { nHeads: 3, rope: false });
          mg.sum(plain).backward();
          mg.noGrad(() => mg.attention(c.qkv, { nHeads: 3, rope: true, memKV: c.memKV, gateLogits: c.gateLogits }));
          for (const t of [c.qkv, c.memKV!, c.gateLogits!]) t.zeroGrad();
        });
        // A graph whose output is disposed without backward frees what it saved.
        mg.tidy(() => {
          const c = makeCase(1, 4, 1, 4, 2, 9);
          c.qkv.requiresGrad = true;
          mg.attention(c.qkv, { nHeads: 1, rope: true, memKV: c.memKV, gateLogits: c.gateLogits });
        });
      });
    });
  });
});
