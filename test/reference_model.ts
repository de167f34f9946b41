// SPEC.md §3 in plain TypeScript loops, float64, one sample at a time: slow and
// obvious on purpose. It is the reference the native ops and the model are
// checked against (the loss of a random-weight model must match it). Both versions
// of the function: v1 (the gated read) and v2 (the positional read, the pointer's bias).
import type { ModelConfig } from '../lib/nn/config.js';

export type RefParams = Map<string, Float64Array | Float32Array>;

type Vec = Float64Array;
type Mat = Float64Array[]; // rows

function param(p: RefParams, name: string): Float64Array | Float32Array {
  const v = p.get(name);
  if (!v) throw new Error(`reference: missing parameter ${name}`);
  return v;
}

/** x·Wᵀ + b for W [out, in] stored row-major. */
function linear(x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number> | null, out: number): Vec {
  const n = x.length;
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let acc = b ? b[o] : 0;
    for (let i = 0; i < n; i++) acc += x[i] * w[o * n + i];
    y[o] = acc;
  }
  return y;
}

function layerNorm(x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number>): Vec {
  const n = x.length;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += x[i];
  mean /= n;
  let variance = 0;
  for (let i = 0; i < n; i++) variance += (x[i] - mean) ** 2;
  variance /= n;
  const rstd = 1 / Math.sqrt(variance + 1e-5);
  return Float64Array.from({ length: n }, (_, i) => (x[i] - mean) * rstd * w[i] + b[i]);
}

const sigmoid = (z: number) => 1 / (1 + Math.exp(-z));
const gelu = (z: number) => 0.5 * z * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (z + 0.044715 * z ** 3)));

function softmax(scores: number[]): number[] {
  const mx = Math.max(...scores);
  const e = scores.map((s) => Math.exp(s - mx));
  const total = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / total);
}

function logSumExp(values: number[]): number {
  const mx = Math.max(...values);
  return mx + Math.log(values.reduce((a, v) => a + Math.exp(v - mx), 0));
}

function rope(z: Vec, p: number, d: number, heads: number): void {
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < d / 2; i++) {
      const theta = Math.pow(10000, (-2 * i) / d);
      const a = z[h * d + i], b = z[h * d + i + d / 2];
      z[h * d + i] = a * Math.cos(p * theta) - b * Math.sin(p * theta);
      z[h * d + i + d / 2] = a * Math.sin(p * theta) + b * Math.cos(p * theta);
    }
  }
}

/**
 * −log P(y) for every predicted token of one sample of `segments` segments:
 * `tokens` holds N + 1 ids (N = segments · T). Memory starts at mem.init and is
 * carried across the segments.
 */
export function referenceSampleNLL(cfg: ModelConfig, p: RefParams, tokens: ArrayLike<number>, segments: number): number[] {
  const { dModel: D, nHeads: H, segmentLen: T, memSlots: S, dFF: F } = cfg;
  const d = D / H;
  const memory: Mat[] = [];
  for (let l = 0; l < cfg.nLayers; l++) {
    const init = S > 0 ? param(p, `layers.${l}.mem.init`) : new Float64Array(0);
    memory.push(Array.from({ length: S }, (_, s) => Float64Array.from(init.subarray(s * D, (s + 1) * D))));
  }
  const nll: number[] = [];
  for (let seg = 0; seg < segments; seg++) {
    const x = Array.from({ length: T }, (_, t) => tokens[seg * T + t]);
    const y = Array.from({ length: T }, (_, t) => tokens[seg * T + t + 1]);
    const emb = param(p, 'tok_emb');
    let h: Mat = x.map((id) => Float64Array.from(emb.subarray(id * D, (id + 1) * D)));
    if (cfg.positional === 'sinusoidal') {
      for (let t = 0; t < T; t++) {
        for (let i = 0; i < D / 2; i++) {
          const angle = t / Math.pow(10000, (2 * i) / D);
          h[t][2 * i] += Math.sin(angle);
          h[t][2 * i + 1] += Math.cos(angle);
        }
      }
    }
    for (let l = 0; l < cfg.nLayers; l++) {
      const pre = `layers.${l}.`;
      const P = (n: string) => param(p, pre + n);
      const M = memory[l];
      const u = h.map((row) => layerNorm(row, P('ln1.weight'), P('ln1.bias')));
      const qkv = u.map((row) => linear(row, P('attn.qkv.weight'), P('attn.qkv.bias'), 3 * D));
      const q0 = qkv.map((r) => r.slice(0, D));
      const q = q0.map((r) => r.slice());
      const k = qkv.map((r) => r.slice(D, 2 * D));
      const v = qkv.map((r) => r.slice(2 * D, 3 * D));
      if (cfg.positional === 'rope') {
        for (let t = 0; t < T; t++) {
          rope(q[t], t, d, H);
          rope(k[t], t, d, H);
        }
      }
      let mk: Mat = [], mv: Mat = [];
      const v2 = cfg.specVersion >= 2;
      // v2 with RoPE: slot s sits at position s − S, just before the segment, and is read by the rotated query.
      const positional = v2 && cfg.positional === 'rope';
      let qm = q0;
      if (S > 0) {
        const mhat = M.map((row) => layerNorm(row, P('mem.ln.weight'), P('mem.ln.bias')));
        const mkv = mhat.map((row) => linear(row, P('mem.kv.weight'), P('mem.kv.bias'), 2 * D));
        mk = mkv.map((r) => r.slice(0, D));
        mv = mkv.map((r) => r.slice(D, 2 * D));
        if (positional) {
          mk.forEach((r, s) => rope(r, s - S, d, H));
          qm = q;
        }
      }
      const O: Mat = Array.from({ length: T }, () => new Float64Array(D));
      for (let t = 0; t < T; t++) {
        const gateLogit = S > 0 ? linear(u[t], P('mem.gate.weight'), P('mem.gate.bias'), H) : null;
        for (let hd = 0; hd < H; hd++) {
          const dot = (a: Vec, b: Vec) => {
            let acc = 0;
            for (let i = 0; i < d; i++) acc += a[hd * d + i] * b[hd * d + i];
            return acc;
          };
          const selfScores = Array.from({ length: t + 1 }, (_, j) => dot(q[t], k[j]) / Math.sqrt(d));
          const w = softmax(selfScores);
          const A = new Float64Array(d);
          w.forEach((wj, j) => {
            for (let i = 0; i < d; i++) A[i] += wj * v[j][hd * d + i];
          });
          const R = new Float64Array(d);
          let g = 0;
          if (S > 0) {
            // In v2 the query at p is rotated at p (its own position); slot keys at s − S: the same distances as the
            // kernel's p + S against s.
            const memScores = Array.from({ length: S }, (_, s) => dot(qm[t], mk[s]) / Math.sqrt(d));
            const r = softmax(memScores);
            r.forEach((rs, s) => {
              for (let i = 0; i < d; i++) R[i] += rs * mv[s][hd * d + i];
            });
            // v2: the gate logit moves the memory's share of one softmax over slots and tokens.
            g = sigmoid(gateLogit![hd] + (v2 ? logSumExp(memScores) - logSumExp(selfScores) : 0));
          }
          for (let i = 0; i < d; i++) O[t][hd * d + i] = g * R[i] + (1 - g) * A[i];
        }
      }
      h = h.map((row, t) => {
        const o = linear(O[t], P('attn.out.weight'), P('attn.out.bias'), D);
        return row.map((x_, i) => x_ + o[i]);
      });
      h = h.map((row) => {
        const z = linear(layerNorm(row, P('ln2.weight'), P('ln2.bias')), P('ffn.fc1.weight'), P('ffn.fc1.bias'), F).map(gelu);
        const f = linear(z, P('ffn.fc2.weight'), P('ffn.fc2.bias'), D);
        return row.map((x_, i) => x_ + f[i]);
      });
      if (S > 0) {
        const c = h.map((row) => layerNorm(row, P('ptr.ln.weight'), P('ptr.ln.bias')));
        const mq = M.map((row) => linear(row, P('ptr.q.weight'), null, D));
        const ck = c.map((row) => linear(row, P('ptr.k.weight'), null, D));
        const cv = c.map((row) => linear(row, P('ptr.v.weight'), null, D));
        const pos = v2 ? param(p, `${pre}ptr.pos`) : null;
        memory[l] = M.map((m, s) => {
          // v2: slot s's positional bias for token t (the segment is T long here, so no end-alignment shift).
          const alpha = softmax(ck.map((kt, t) => kt.reduce((acc, kv, i) => acc + kv * mq[s][i], 0) / Math.sqrt(D) + (pos ? pos[s * T + t] : 0)));
          const Z = new Float64Array(D);
          alpha.forEach((a, t) => {
            for (let i = 0; i < D; i++) Z[i] += a * cv[t][i];
          });
          const cat = new Float64Array(2 * D);
          cat.set(m, 0);
          cat.set(Z, D);
          const U = linear(cat, P('mem.update.weight'), P('mem.update.bias'), D).map(sigmoid);
          return m.map((mi, i) => (1 - U[i]) * mi + U[i] * Z[i]);
        });
      }
    }
    const hf = h.map((row) => layerNorm(row, param(p, 'ln_f.weight'), param(p, 'ln_f.bias')));
    const logits = hf.map((row) => linear(row, emb, null, cfg.vocabSize));
    let cq: Mat = [], ck: Mat = [];
    if (cfg.copyHead) {
      cq = hf.map((row) => linear(row, param(p, 'copy.q.weight'), null, D));
      ck = hf.map((row) => linear(row, param(p, 'copy.k.weight'), null, D));
    }
    for (let t = 0; t < T; t++) {
      const logSoftmaxY = logits[t][y[t]] - logSumExp(Array.from(logits[t]));
      if (!cfg.copyHead) {
        nll.push(-logSoftmaxY);
        continue;
      }
      const beta = softmax(Array.from({ length: t + 1 }, (_, j) => cq[t].reduce((acc, a, i) => acc + a * ck[j][i], 0) / Math.sqrt(D)));
      const gen = linear(hf[t], param(p, 'copy.gen.weight'), param(p, 'copy.gen.bias'), 1)[0];
      const copyMass = beta.reduce((acc, b, j) => acc + (x[j] === y[t] ? b : 0), 0);
      const terms = [Math.log(sigmoid(gen)) + logSoftmaxY];
      if (copyMass > 0) terms.push(Math.log(sigmoid(-gen)) + Math.log(copyMass));
      nll.push(-logSumExp(terms));
    }
  }
  return nll;
}
