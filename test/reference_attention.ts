// Plain float64 loops of SPEC §3's attention, from `q, k, v = split(...)` to `O = g·R + (1 − g)·A`:
// the reference the native attention kernels are compared against.

export interface RefAttentionArgs {
  qkv: ArrayLike<number>;
  B: number;
  T: number;
  H: number;
  d: number;
  rope: boolean;
  memKV?: ArrayLike<number>;
  gateLogits?: ArrayLike<number>;
  S?: number;
}

function softmaxWeights(scores: number[]): number[] {
  const mx = Math.max(...scores);
  const e = scores.map((s) => Math.exp(s - mx));
  const total = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / total);
}

/** Rotate-half RoPE of a head row z at position p (base 10000). */
function rotate(z: number[], p: number, d: number): number[] {
  const out = z.slice();
  for (let i = 0; i < d / 2; i++) {
    const theta = Math.pow(10000, (-2 * i) / d);
    const a = z[i], b = z[i + d / 2];
    out[i] = a * Math.cos(p * theta) - b * Math.sin(p * theta);
    out[i + d / 2] = a * Math.sin(p * theta) + b * Math.cos(p * theta);
  }
  return out;
}

/** O [B, T, D] of SPEC §3 (A alone without memory). */
export function refAttention(x: RefAttentionArgs): Float64Array {
  const { qkv, B, T, H, d, rope } = x;
  const D = H * d, S = x.S ?? 0;
  const out = new Float64Array(B * T * D);
  const row = (src: ArrayLike<number>, start: number) => Array.from({ length: d }, (_, i) => src[start + i]);
  const dot = (a: number[], b: number[]) => a.reduce((acc, v, i) => acc + v * b[i], 0);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const q0 = Array.from({ length: T }, (_, t) => row(qkv, (b * T + t) * 3 * D + h * d));
      const k0 = Array.from({ length: T }, (_, t) => row(qkv, (b * T + t) * 3 * D + D + h * d));
      const v = Array.from({ length: T }, (_, t) => row(qkv, (b * T + t) * 3 * D + 2 * D + h * d));
      const q = rope ? q0.map((z, p) => rotate(z, p, d)) : q0;
      const k = rope ? k0.map((z, p) => rotate(z, p, d)) : k0;
      const mk = Array.from({ length: S }, (_, s) => row(x.memKV!, (b * S + s) * 2 * D + h * d));
      const mv = Array.from({ length: S }, (_, s) => row(x.memKV!, (b * S + s) * 2 * D + D + h * d));
      for (let t = 0; t < T; t++) {
        const p = softmaxWeights(k.slice(0, t + 1).map((kj) => dot(q[t], kj) / Math.sqrt(d)));
        const A = Array.from({ length: d }, (_, i) => p.reduce((acc, pj, j) => acc + pj * v[j][i], 0));
        let O = A;
        if (S > 0) {
          const pm = softmaxWeights(mk.map((kj) => dot(q0[t], kj) / Math.sqrt(d)));
          const R = Array.from({ length: d }, (_, i) => pm.reduce((acc, pj, j) => acc + pj * mv[j][i], 0));
          const g = 1 / (1 + Math.exp(-x.gateLogits![(b * T + t) * H + h]));
          O = A.map((a, i) => g * R[i] + (1 - g) * a);
        }
        for (let i = 0; i < d; i++) out[(b * T + t) * D + h * d + i] = O[i];
      }
    }
  }
  return out;
}
