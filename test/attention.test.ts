// The fused attention op (causal self-attention, RoPE, gated memory read) against the float64 loops of
// test/reference_attention.ts: structured inputs first, then random ones at shapes that are not multiples of
// the kernel's blocks (32 query rows, 64 keys); gradients of qkv, memKV and gateLogits by finite differences;
// causality, determinism across thread counts, bad input and leaks.
import { describe, expect, it } from 'vitest';

import * as mg from '../lib/index.js';
import { expectClose, expectNoLeaks, forEachDevice, randomArray } from './helpers.js';
import { refAttention } from './reference_attention.js';

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
        expect(() => mg.attention(mg.zeros([2, 5, 36], { ...opts, dtype: 'bfloat16' }), { nHeads: 3, rope: false })).toThrow(/attention: tensor 'qkv' has dtype bfloat16; expected float32/);
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
