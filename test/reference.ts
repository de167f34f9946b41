// Plain TypeScript loops computing what each op should: slow, obvious, and in
// float64, the reference the native kernels are compared against.

export function refMatmul(
  a: ArrayLike<number>, b: ArrayLike<number>, batch: number, m: number, n: number, k: number,
  transA: boolean, transB: boolean, sharedA = false, sharedB = false,
): Float64Array {
  const out = new Float64Array(batch * m * n);
  for (let z = 0; z < batch; z++) {
    const ao = sharedA ? 0 : z * m * k, bo = sharedB ? 0 : z * k * n;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let acc = 0;
        for (let p = 0; p < k; p++) {
          const av = transA ? a[ao + p * m + i] : a[ao + i * k + p];
          const bv = transB ? b[bo + j * k + p] : b[bo + p * n + j];
          acc += av * bv;
        }
        out[z * m * n + i * n + j] = acc;
      }
    }
  }
  return out;
}

export function refSoftmax(x: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    let mx = -Infinity;
    for (let j = 0; j < cols; j++) mx = Math.max(mx, x[r * cols + j]);
    let total = 0;
    for (let j = 0; j < cols; j++) total += Math.exp(x[r * cols + j] - mx);
    for (let j = 0; j < cols; j++) out[r * cols + j] = Math.exp(x[r * cols + j] - mx) / total;
  }
  return out;
}

/** Index of each element of a tensor of `shape` into a broadcast operand of `opShape`. */
export function broadcastIndex(shape: readonly number[], opShape: readonly number[], flat: number): number {
  let idx = 0, stride = 1, rem = flat;
  const coords = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    coords[d] = rem % shape[d];
    rem = Math.floor(rem / shape[d]);
  }
  for (let d = opShape.length - 1; d >= 0; d--) {
    const c = opShape[d] === 1 ? 0 : coords[d + shape.length - opShape.length];
    idx += c * stride;
    stride *= opShape[d];
  }
  return idx;
}

/** Sum over `axes` of a tensor of `shape`, keeping dims. */
export function refSum(x: ArrayLike<number>, shape: readonly number[], axes: number[]): Float64Array {
  const outShape = shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const out = new Float64Array(outShape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < x.length; i++) out[broadcastIndex(shape, outShape, i)] += x[i];
  return out;
}

/**
 * d loss / d x_i for every element of base by central differences of a float64 function (step 1e-5: truncation
 * ~1e-10, rounding ~1e-11, far below the float32 errors the references are compared against).
 */
export function centralDifferences(base: ArrayLike<number>, loss: (x: Float64Array) => number, h = 1e-5): Float64Array {
  const x = Float64Array.from(base);
  const g = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const plus = Float64Array.from(x), minus = Float64Array.from(x);
    plus[i] += h;
    minus[i] -= h;
    g[i] = (loss(plus) - loss(minus)) / (2 * h);
  }
  return g;
}
