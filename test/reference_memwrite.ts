// Plain float64 loops for the memory write (SPEC.md §3, "# memory write"): what memoryWrite should compute,
// step by step, and its diagnostics. Slow and obvious on purpose.
import { centralDifferences } from './reference.js';

export interface MemwriteInputs {
  B: number;
  S: number;
  T: number;
  D: number;
  M: ArrayLike<number>; // [B,S,D]
  mq: ArrayLike<number>; // [B,S,D]
  ck: ArrayLike<number>; // [B,T,D]
  cv: ArrayLike<number>; // [B,T,D]
  w: ArrayLike<number>; // [D,2D]
  b: ArrayLike<number>; // [D]
  /** SPEC v2's positional bias of the pointer [S, cols], cols ≥ T, end-aligned (token t takes column cols − T + t). */
  pb?: ArrayLike<number>;
  pbCols?: number;
  /** The value weight [D, D]: Z = (α·cv)·wvᵀ. */
  wv?: ArrayLike<number>;
}

export interface MemwriteReference {
  out: Float64Array; // [B,S,D]
  alpha: Float64Array; // [B,S,T]
  z: Float64Array; // [B,S,D]
  u: Float64Array; // [B,S,D]
  meanGate: number;
  pointerEntropy: number;
}

export function refMemoryWrite({ B, S, T, D, M, mq, ck, cv, w, b, pb, pbCols = T, wv }: MemwriteInputs): MemwriteReference {
  const alpha = new Float64Array(B * S * T), z = new Float64Array(B * S * D), u = new Float64Array(B * S * D);
  const out = new Float64Array(B * S * D);
  let gateSum = 0, entropySum = 0;
  for (let bi = 0; bi < B; bi++) {
    for (let s = 0; s < S; s++) {
      const row = bi * S + s;
      // Pointer scores over tokens, then their softmax.
      const p = new Float64Array(T);
      for (let t = 0; t < T; t++) {
        let acc = 0;
        for (let d = 0; d < D; d++) acc += mq[row * D + d] * ck[(bi * T + t) * D + d];
        p[t] = acc / Math.sqrt(D) + (pb ? pb[s * pbCols + pbCols - T + t] : 0);
      }
      const mx = Math.max(...p);
      let total = 0;
      for (let t = 0; t < T; t++) total += Math.exp(p[t] - mx);
      for (let t = 0; t < T; t++) {
        const a = Math.exp(p[t] - mx) / total;
        alpha[row * T + t] = a;
        if (a > 0) entropySum -= a * Math.log(a);
      }
      // Candidates (then through the value weight, when there is one).
      const zp = new Float64Array(D);
      for (let d = 0; d < D; d++) {
        let acc = 0;
        for (let t = 0; t < T; t++) acc += alpha[row * T + t] * cv[(bi * T + t) * D + d];
        zp[d] = acc;
      }
      for (let o = 0; o < D; o++) {
        let acc = 0;
        if (wv) for (let i = 0; i < D; i++) acc += wv[o * D + i] * zp[i];
        z[row * D + o] = wv ? acc : zp[o];
      }
      // Gate over concat(M, Z), then the blend.
      for (let o = 0; o < D; o++) {
        let acc = b[o];
        for (let i = 0; i < D; i++) acc += w[o * 2 * D + i] * M[row * D + i] + w[o * 2 * D + D + i] * z[row * D + i];
        const g = 1 / (1 + Math.exp(-acc));
        u[row * D + o] = g;
        gateSum += g;
        out[row * D + o] = (1 - g) * M[row * D + o] + g * z[row * D + o];
      }
    }
  }
  return { out, alpha, z, u, meanGate: gateSum / (B * S * D), pointerEntropy: entropySum / (B * S) };
}

/**
 * Gradients of L = Σ out ⊙ proj with respect to each input, by central differences of the float64 reference
 * (step 1e-5: truncation ~1e-10, rounding ~1e-11, far below the float32 errors compared against).
 */
export function refMemoryWriteGradients(inputs: MemwriteInputs, proj: ArrayLike<number>): Record<'M' | 'mq' | 'ck' | 'cv' | 'w' | 'b' | 'pb' | 'wv', Float64Array> {
  const loss = (x: MemwriteInputs) => {
    const { out } = refMemoryWrite(x);
    let l = 0;
    for (let i = 0; i < out.length; i++) l += out[i] * proj[i];
    return l;
  };
  type Name = 'M' | 'mq' | 'ck' | 'cv' | 'w' | 'b' | 'pb' | 'wv';
  const names: Name[] = ['M', 'mq', 'ck', 'cv', 'w', 'b', ...(inputs.pb ? ['pb' as const] : []), ...(inputs.wv ? ['wv' as const] : [])];
  const grads = {} as Record<(typeof names)[number], Float64Array>;
  for (const name of names) grads[name] = centralDifferences(inputs[name]!, (v) => loss({ ...inputs, [name]: v }));
  return grads;
}
