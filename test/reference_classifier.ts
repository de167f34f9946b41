// Plain float64 loops computing SPEC §3's output distribution directly (full softmax, full β): the
// reference that tokenNLL's fused kernels are compared against.

export interface RefCopy {
  cq: ArrayLike<number>;
  ck: ArrayLike<number>;
  genLogit: ArrayLike<number>;
  inputs: ArrayLike<number>;
}

/** −log P(y) per position [B·T] for hf [B,T,D], tokEmb [V,D], targets [B,T]. */
export function refTokenNLL(
  hf: ArrayLike<number>, tokEmb: ArrayLike<number>, targets: ArrayLike<number>,
  B: number, T: number, D: number, V: number, copy?: RefCopy,
): Float64Array {
  const out = new Float64Array(B * T);
  for (let b = 0; b < B; b++) {
    for (let p = 0; p < T; p++) {
      const r = b * T + p;
      const logits = new Float64Array(V);
      for (let v = 0; v < V; v++) {
        let acc = 0;
        for (let d = 0; d < D; d++) acc += hf[r * D + d] * tokEmb[v * D + d];
        logits[v] = acc;
      }
      const mx = Math.max(...logits);
      let z = 0;
      for (let v = 0; v < V; v++) z += Math.exp(logits[v] - mx);
      const y = targets[r];
      const pSoftmax = Math.exp(logits[y] - mx) / z;
      if (!copy) {
        out[r] = -Math.log(pSoftmax);
        continue;
      }
      const e = new Float64Array(p + 1);
      for (let j = 0; j <= p; j++) {
        let acc = 0;
        for (let d = 0; d < D; d++) acc += copy.cq[r * D + d] * copy.ck[(b * T + j) * D + d];
        e[j] = acc / Math.sqrt(D);
      }
      const emx = Math.max(...e);
      let ez = 0;
      for (let j = 0; j <= p; j++) ez += Math.exp(e[j] - emx);
      let copyMass = 0, matches = 0;
      for (let j = 0; j <= p; j++) {
        if (copy.inputs[b * T + j] === y) {
          copyMass += Math.exp(e[j] - emx) / ez;
          matches++;
        }
      }
      const g = copy.genLogit[r];
      const logSig = (x: number) => (x >= 0 ? -Math.log1p(Math.exp(-x)) : x - Math.log1p(Math.exp(x)));
      const genTerm = logSig(g) + Math.log(pSoftmax);
      if (matches === 0) {
        out[r] = -genTerm;
        continue;
      }
      const copyTerm = logSig(-g) + Math.log(copyMass);
      const top = Math.max(genTerm, copyTerm);
      out[r] = -(top + Math.log(Math.exp(genTerm - top) + Math.exp(copyTerm - top)));
    }
  }
  return out;
}
