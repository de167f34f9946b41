// Plain float64 loops of SPEC §3's attention, from `q, k, v = split(...)` to `O = g·R + (1 − g)·A`:
// the reference the native attention kernels are compared against.
import { centralDifferences } from './reference.js';

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
  /** SPEC v2 ('positional'), its ablation without slot positions ('joint'), or v1 ('gated', the default). */
  memoryRead?: 'gated' | 'joint' | 'positional';
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

/**
 * Head h of sample b as rows of d: q and k rotated when x.rope (the positions are 0…T−1), v, the unrotated
 * query q0 that reads the memory, and the memory's keys and values.
 */
function headRows(x: RefAttentionArgs, b: number, h: number): { q: number[][]; q0: number[][]; k: number[][]; v: number[][]; mk: number[][]; mv: number[][] } {
  const { qkv, T, H, d, rope } = x;
  const D = H * d, S = x.S ?? 0;
  const row = (src: ArrayLike<number>, start: number) => Array.from({ length: d }, (_, i) => src[start + i]);
  const rows = (n: number, src: ArrayLike<number>, stride: number, offset: number) =>
    Array.from({ length: n }, (_, t) => row(src, (b * n + t) * stride + offset + h * d));
  const q0 = rows(T, qkv, 3 * D, 0), k0 = rows(T, qkv, 3 * D, D);
  const q = rope ? q0.map((z, p) => rotate(z, p, d)) : q0;
  const mk = S > 0 ? rows(S, x.memKV!, 2 * D, 0) : [];
  // SPEC v2 with RoPE: slot s sits at position s − S and is read by the rotated query (q0 below is what reads it).
  const positional = rope && x.memoryRead === 'positional';
  return {
    q,
    q0: positional ? q : q0,
    k: rope ? k0.map((z, p) => rotate(z, p, d)) : k0,
    v: rows(T, qkv, 3 * D, 2 * D),
    mk: positional ? mk.map((z, s) => rotate(z, s - S, d)) : mk,
    mv: S > 0 ? rows(S, x.memKV!, 2 * D, D) : [],
  };
}

function logSumExp(scores: number[]): number {
  const mx = Math.max(...scores);
  return mx + Math.log(scores.reduce((a, v) => a + Math.exp(v - mx), 0));
}

/** O [B, T, D] of SPEC §3 (A alone without memory). */
export function refAttention(x: RefAttentionArgs): Float64Array {
  const { B, T, H, d } = x;
  const D = H * d, S = x.S ?? 0;
  const out = new Float64Array(B * T * D);
  const dot = (a: number[], b: number[]) => a.reduce((acc, v, i) => acc + v * b[i], 0);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const { q, q0, k, v, mk, mv } = headRows(x, b, h);
      for (let t = 0; t < T; t++) {
        const selfScores = k.slice(0, t + 1).map((kj) => dot(q[t], kj) / Math.sqrt(d));
        const p = softmaxWeights(selfScores);
        const A = Array.from({ length: d }, (_, i) => p.reduce((acc, pj, j) => acc + pj * v[j][i], 0));
        let O = A;
        if (S > 0) {
          const memScores = mk.map((kj) => dot(q0[t], kj) / Math.sqrt(d));
          const pm = softmaxWeights(memScores);
          const R = Array.from({ length: d }, (_, i) => pm.reduce((acc, pj, j) => acc + pj * mv[j][i], 0));
          // v2 (and its 'joint' ablation): the gate logit moves the memory's share of one softmax over slots and keys.
          const joint = x.memoryRead === 'positional' || x.memoryRead === 'joint' ? logSumExp(memScores) - logSumExp(selfScores) : 0;
          const g = 1 / (1 + Math.exp(-(x.gateLogits![(b * T + t) * H + h] + joint)));
          O = A.map((a, i) => g * R[i] + (1 - g) * a);
        }
        for (let i = 0; i < d; i++) out[(b * T + t) * D + h * d + i] = O[i];
      }
    }
  }
  return out;
}

/** Gradients of refAttention's O with respect to qkv, memKV and gateLogits, for the upstream gradient dOut [B, T, D]. */
export interface RefAttentionGrads {
  dQkv: Float64Array;
  dMemKV: Float64Array;
  dGateLogits: Float64Array;
}

/** x rotated by −p (Rᵀ·x): the gradient through `rotate`. */
function rotateBack(z: number[], p: number, d: number): number[] {
  const out = z.slice();
  for (let i = 0; i < d / 2; i++) {
    const theta = Math.pow(10000, (-2 * i) / d);
    const a = z[i], b = z[i + d / 2];
    out[i] = a * Math.cos(p * theta) + b * Math.sin(p * theta);
    out[i + d / 2] = -a * Math.sin(p * theta) + b * Math.cos(p * theta);
  }
  return out;
}

/**
 * The backward of SPEC §3's attention in float64, from the closed forms: with P the softmax weights of a query
 * row and dY that attention's output gradient, dP_j = dY·v_j, dS_j = P_j·(dP_j − Σ_i P_i·dP_i),
 * dq = Σ_j dS_j·k_j/√d, dk_j += dS_j·q/√d, dv_j += P_j·dY; the gate splits dO into (1 − g)·dO for A and g·dO
 * for R and gets Σ dO·(R − A)·g(1 − g); RoPE's gradient rotates back.
 */
export function refAttentionBackward(x: RefAttentionArgs, dOut: ArrayLike<number>): RefAttentionGrads {
  const { B, T, H, d, rope } = x;
  const D = H * d, S = x.S ?? 0;
  const dQkv = new Float64Array(B * T * 3 * D);
  const dMemKV = new Float64Array(B * S * 2 * D);
  const dGateLogits = new Float64Array(B * T * H);
  const sc = 1 / Math.sqrt(d);
  const row = (src: ArrayLike<number>, start: number) => Array.from({ length: d }, (_, i) => src[start + i]);
  const dot = (a: number[], b: number[]) => a.reduce((acc, v, i) => acc + v * b[i], 0);
  const zeros = (n: number) => Array.from({ length: n }, () => new Array<number>(d).fill(0));
  // One attention's backward: queries q [n][d], keys k, values v [m][d], dY [n][d]; query t sees keys j < lim(t).
  const attendBack = (q: number[][], k: number[][], v: number[][], dY: number[][], lim: (t: number) => number) => {
    const dq = zeros(q.length), dk = zeros(k.length), dv = zeros(v.length);
    for (let t = 0; t < q.length; t++) {
      const n = lim(t);
      const p = softmaxWeights(k.slice(0, n).map((kj) => dot(q[t], kj) * sc));
      const dp = v.slice(0, n).map((vj) => dot(dY[t], vj));
      const dsum = p.reduce((acc, pj, j) => acc + pj * dp[j], 0);
      for (let j = 0; j < n; j++) {
        const ds = p[j] * (dp[j] - dsum);
        for (let i = 0; i < d; i++) {
          dq[t][i] += ds * k[j][i] * sc;
          dk[j][i] += ds * q[t][i] * sc;
          dv[j][i] += p[j] * dY[t][i];
        }
      }
    }
    return { dq, dk, dv };
  };
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const { q, q0, k, v, mk, mv } = headRows(x, b, h);
      const dO = Array.from({ length: T }, (_, t) => row(dOut, (b * T + t) * D + h * d));
      const g = Array.from({ length: T }, (_, t) => (S > 0 ? 1 / (1 + Math.exp(-x.gateLogits![(b * T + t) * H + h])) : 0));
      const dA = dO.map((r, t) => r.map((e) => (1 - g[t]) * e));
      const self = attendBack(q, k, v, dA, (t) => t + 1);
      const dq = rope ? self.dq.map((z, p) => rotateBack(z, p, d)) : self.dq;
      const dk = rope ? self.dk.map((z, p) => rotateBack(z, p, d)) : self.dk;
      if (S > 0) {
        const dR = dO.map((r, t) => r.map((e) => g[t] * e));
        const memory = attendBack(q0, mk, mv, dR, () => S);
        for (let t = 0; t < T; t++) for (let i = 0; i < d; i++) dq[t][i] += memory.dq[t][i];
        for (let s = 0; s < S; s++) {
          for (let i = 0; i < d; i++) {
            dMemKV[(b * S + s) * 2 * D + h * d + i] = memory.dk[s][i];
            dMemKV[(b * S + s) * 2 * D + D + h * d + i] = memory.dv[s][i];
          }
        }
        // R − A per row, recomputed: the same softmax weights as refAttention.
        for (let t = 0; t < T; t++) {
          const p = softmaxWeights(k.slice(0, t + 1).map((kj) => dot(q[t], kj) * sc));
          const pm = softmaxWeights(mk.map((kj) => dot(q0[t], kj) * sc));
          let acc = 0;
          for (let i = 0; i < d; i++) {
            const A = p.reduce((s, pj, j) => s + pj * v[j][i], 0);
            const R = pm.reduce((s, pj, j) => s + pj * mv[j][i], 0);
            acc += dO[t][i] * (R - A);
          }
          dGateLogits[(b * T + t) * H + h] = acc * g[t] * (1 - g[t]);
        }
      }
      for (let t = 0; t < T; t++) {
        for (let i = 0; i < d; i++) {
          const at = (b * T + t) * 3 * D + h * d + i;
          dQkv[at] = dq[t][i];
          dQkv[at + D] = dk[t][i];
          dQkv[at + 2 * D] = self.dv[t][i];
        }
      }
    }
  }
  return { dQkv, dMemKV, dGateLogits };
}

/**
 * Gradients of L = Σ refAttention(x) ⊙ dOut by central differences of the float64 forward (step 1e-5): the
 * reference for the memory reads whose closed form refAttentionBackward does not cover (SPEC v2's).
 */
export function refAttentionGradientsNumeric(x: RefAttentionArgs, dOut: ArrayLike<number>): RefAttentionGrads {
  const loss = (y: RefAttentionArgs) => refAttention(y).reduce((acc, o, i) => acc + o * dOut[i], 0);
  const diff = (key: 'qkv' | 'memKV' | 'gateLogits') => centralDifferences(x[key] ?? [], (v) => loss({ ...x, [key]: v }));
  return { dQkv: diff('qkv'), dMemKV: diff('memKV'), dGateLogits: diff('gateLogits') };
}
