// Plain float64 loops for the "norm" family (layer norm, embedding, RoPE, sinusoidal
// positions), written straight from SPEC.md §1–§3: the reference the kernels are checked against.

/** Row r's mean and 1/sqrt(variance + eps), the variance over d (SPEC §1). */
function rowStats(x: ArrayLike<number>, r: number, d: number, eps: number): { mean: number; rstd: number } {
  let mean = 0;
  for (let j = 0; j < d; j++) mean += x[r * d + j];
  mean /= d;
  let v = 0;
  for (let j = 0; j < d; j++) v += (x[r * d + j] - mean) ** 2;
  return { mean, rstd: 1 / Math.sqrt(v / d + eps) };
}

export function refLayerNorm(x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number>, d: number, eps = 1e-5): Float64Array {
  const rows = x.length / d;
  const out = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    const { mean, rstd } = rowStats(x, r, d, eps);
    for (let j = 0; j < d; j++) out[r * d + j] = (x[r * d + j] - mean) * rstd * w[j] + b[j];
  }
  return out;
}

/** The gradients of layer norm (SPEC §1) for upstream g: dx, dw, db, from x̂ = (x − mean)·rstd. */
export function refLayerNormBackward(x: ArrayLike<number>, w: ArrayLike<number>, g: ArrayLike<number>, d: number, eps = 1e-5) {
  const rows = x.length / d;
  const dx = new Float64Array(x.length), dw = new Float64Array(d), db = new Float64Array(d);
  for (let r = 0; r < rows; r++) {
    const { mean, rstd } = rowStats(x, r, d, eps);
    let meanGw = 0, meanGwXhat = 0;
    for (let j = 0; j < d; j++) {
      const xhat = (x[r * d + j] - mean) * rstd, gw = g[r * d + j] * w[j];
      meanGw += gw / d;
      meanGwXhat += (gw * xhat) / d;
      dw[j] += g[r * d + j] * xhat;
      db[j] += g[r * d + j];
    }
    for (let j = 0; j < d; j++) {
      const xhat = (x[r * d + j] - mean) * rstd;
      dx[r * d + j] = rstd * (g[r * d + j] * w[j] - meanGw - xhat * meanGwXhat);
    }
  }
  return { dx, dw, db };
}

export function refEmbedding(ids: ArrayLike<number>, table: ArrayLike<number>, d: number): Float64Array {
  const out = new Float64Array(ids.length * d);
  for (let i = 0; i < ids.length; i++) for (let j = 0; j < d; j++) out[i * d + j] = table[ids[i] * d + j];
  return out;
}

/** dtable[v] = Σ_{i: ids[i] = v} dout[i]. */
export function refEmbeddingGrad(ids: ArrayLike<number>, dout: ArrayLike<number>, vocab: number, d: number): Float64Array {
  const out = new Float64Array(vocab * d);
  for (let i = 0; i < ids.length; i++) for (let j = 0; j < d; j++) out[ids[i] * d + j] += dout[i * d + j];
  return out;
}

export function refRope(x: ArrayLike<number>, batch: number, t: number, dModel: number, heads: number, offset = 0): Float64Array {
  const out = new Float64Array(x.length);
  const hd = dModel / heads, half = hd / 2;
  for (let bt = 0; bt < batch * t; bt++) {
    const p = offset + (bt % t);
    for (let h = 0; h < heads; h++) {
      const base = bt * dModel + h * hd;
      for (let i = 0; i < half; i++) {
        const angle = p * Math.pow(10000, (-2 * i) / hd);
        const a = x[base + i], b = x[base + i + half];
        out[base + i] = a * Math.cos(angle) - b * Math.sin(angle);
        out[base + i + half] = a * Math.sin(angle) + b * Math.cos(angle);
      }
    }
  }
  return out;
}

export function refSinusoidal(t: number, d: number, offset = 0): Float64Array {
  const out = new Float64Array(t * d);
  for (let r = 0; r < t; r++) {
    const p = offset + r;
    for (let i = 0; i < d / 2; i++) {
      out[r * d + 2 * i] = Math.sin(p / Math.pow(10000, (2 * i) / d));
      out[r * d + 2 * i + 1] = Math.cos(p / Math.pow(10000, (2 * i) / d));
    }
  }
  return out;
}
