// Plain float64 loops for the linear family: y = act(x·Wᵀ + b) and its gradients.

/** GELU, tanh form: 0.5·z·(1 + tanh(u)) written as z·σ(2u), since 1 + tanh(u) cancels even in float64 for z < −7. */
export function refGelu(z: number): number {
  const u = Math.sqrt(2 / Math.PI) * (z + 0.044715 * z ** 3);
  return z / (1 + Math.exp(-2 * u));
}

/** d gelu/dz = 0.5(1 + t) + 0.5·z·(1 − t²)·√(2/π)(1 + 3·0.044715 z²), with 0.5(1 + t) = s = σ(2u), 0.5(1 − t²) = 2s(1 − s). */
export function refGeluGrad(z: number): number {
  const c = Math.sqrt(2 / Math.PI);
  const s = 1 / (1 + Math.exp(-2 * c * (z + 0.044715 * z ** 3)));
  return s + 2 * z * s * (1 - s) * c * (1 + 3 * 0.044715 * z * z);
}

/** x [m, k], w [n, k], b [n] or null: z = x·wᵀ + b and y = act(z), both [m, n]. */
export function refLinear(
  x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number> | null, m: number, n: number, k: number, gelu: boolean,
): { z: Float64Array; y: Float64Array } {
  const z = new Float64Array(m * n), y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let acc = b ? b[j] : 0;
      for (let p = 0; p < k; p++) acc += x[i * k + p] * w[j * k + p];
      z[i * n + j] = acc;
      y[i * n + j] = gelu ? refGelu(acc) : acc;
    }
  }
  return { z, y };
}

/** Gradients of refLinear for an output gradient dy [m, n]. */
export function refLinearBackward(
  x: ArrayLike<number>, w: ArrayLike<number>, z: ArrayLike<number>, dy: ArrayLike<number>, m: number, n: number, k: number, gelu: boolean,
): { dx: Float64Array; dw: Float64Array; db: Float64Array } {
  const dz = Float64Array.from({ length: m * n }, (_, e) => dy[e] * (gelu ? refGeluGrad(z[e]) : 1));
  const dx = new Float64Array(m * k), dw = new Float64Array(n * k), db = new Float64Array(n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      const g = dz[i * n + j];
      db[j] += g;
      for (let p = 0; p < k; p++) {
        dx[i * k + p] += g * w[j * k + p];
        dw[j * k + p] += g * x[i * k + p];
      }
    }
  }
  return { dx, dw, db };
}
