// Finite-difference gradient checking, used by every op test: the analytic
// gradient of L = Σ fn(inputs) ⊙ R (R a fixed random projection) is compared
// with central differences (L(x+ε) − L(x−ε)) / 2ε, evaluated in float64 on the
// host from float32 outputs, element by element (or on a random subset).
import { MemgptError, shapeStr } from './errors.js';
import { noGrad } from './autograd.js';
import { dtypeBytes } from './dtype.js';
import { Rng } from './random.js';
import { tidy, type Tensor } from './tensor.js';
import { mul } from '../ops/elementwise.js';
import { sum } from '../ops/reduce.js';
import { tensor } from './tensor.js';

export interface GradCheckOptions {
  /** Step of the central difference (default 1e-2: float32 outputs carry ~1e-7 relative noise). */
  eps?: number;
  /** Allowed |analytic − numeric| ≤ atol + rtol · |numeric| (defaults 1e-3 and 1e-2). */
  atol?: number;
  rtol?: number;
  /** Check at most this many elements per input, chosen at random (default: all, up to 4096). */
  maxElements?: number;
  seed?: number;
}

export interface GradCheckFailure {
  input: number;
  index: number;
  analytic: number;
  numeric: number;
}

export interface GradCheckResult {
  ok: boolean;
  checked: number;
  maxAbsError: number;
  failures: GradCheckFailure[];
}

/** Compares autograd with finite differences for fn at `inputs` (float32 tensors; they are left unchanged). */
export function checkGradients(fn: (...inputs: Tensor[]) => Tensor, inputs: Tensor[], options: GradCheckOptions = {}): GradCheckResult {
  const eps = options.eps ?? 1e-2, atol = options.atol ?? 1e-3, rtol = options.rtol ?? 1e-2;
  const rng = new Rng(options.seed ?? 1234);
  for (const [i, t] of inputs.entries()) {
    if (t.dtype !== 'float32') throw new MemgptError(`checkGradients: input ${i} is ${t.dtype}; finite differences need float32`);
  }
  const saved = inputs.map((t) => ({ requiresGrad: t.requiresGrad, grad: t.grad }));
  let projection: Float64Array | undefined;
  const leaves = inputs.map((t) => {
    const leaf = t._view(t.shape, false);
    leaf.requiresGrad = true;
    return leaf;
  });
  try {
    // Analytic: backward of Σ out ⊙ R.
    const analytic = tidy(() => {
      const out = fn(...leaves);
      projection = Float64Array.from({ length: out.size }, () => rng.uniform() * 2 - 1);
      const r = tensor(Float32Array.from(projection), out.shape, { device: out.device, dtype: out.dtype });
      sum(mul(out, r)).backward();
      return leaves.map((l, i) => {
        if (!l.grad) throw new MemgptError(`checkGradients: input ${i} ${shapeStr(l.shape)} received no gradient`);
        return l.grad.toArray();
      });
    });
    const objective = (): number =>
      noGrad(() =>
        tidy(() => {
          const out = fn(...leaves).toArray();
          let total = 0;
          for (let j = 0; j < out.length; j++) total += out[j] * projection![j];
          return total;
        }),
      );
    const result: GradCheckResult = { ok: true, checked: 0, maxAbsError: 0, failures: [] };
    leaves.forEach((leaf, i) => {
      const host = leaf.toArray() as Float32Array;
      const limit = Math.min(host.length, options.maxElements ?? 4096);
      const indices = limit === host.length ? [...host.keys()] : Array.from({ length: limit }, () => rng.int(host.length));
      const write = (j: number, v: number) =>
        leaf.storage.backend.copyFromHost(leaf.handle, (leaf.offset + j) * dtypeBytes.float32, Float32Array.of(v));
      for (const j of indices) {
        const x0 = host[j];
        write(j, x0 + eps);
        const up = objective();
        write(j, x0 - eps);
        const down = objective();
        write(j, x0);
        // The step actually taken in float32 is not exactly 2ε.
        const step = Math.fround(x0 + eps) - Math.fround(x0 - eps);
        const numeric = (up - down) / step;
        const a = analytic[i][j];
        const err = Math.abs(a - numeric);
        result.checked++;
        result.maxAbsError = Math.max(result.maxAbsError, err);
        if (!(err <= atol + rtol * Math.abs(numeric))) {
          result.ok = false;
          if (result.failures.length < 10) result.failures.push({ input: i, index: j, analytic: a, numeric });
        }
      }
    });
    return result;
  } finally {
    leaves.forEach((l) => {
      l.grad?.dispose();
      l.dispose();
    });
    inputs.forEach((t, i) => {
      t.requiresGrad = saved[i].requiresGrad;
      t.grad = saved[i].grad;
    });
  }
}

/** checkGradients, throwing an error that lists the worst elements when the check fails. */
export function assertGradients(fn: (...inputs: Tensor[]) => Tensor, inputs: Tensor[], options?: GradCheckOptions): GradCheckResult {
  const r = checkGradients(fn, inputs, options);
  if (!r.ok) {
    const lines = r.failures.map((f) => `input ${f.input}[${f.index}]: analytic ${f.analytic.toPrecision(6)} vs numeric ${f.numeric.toPrecision(6)}`);
    throw new MemgptError(`gradient check failed (${r.failures.length}+ of ${r.checked} elements):\n  ${lines.join('\n  ')}`);
  }
  return r;
}
