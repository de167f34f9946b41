// The mean over axes: a scaled sum. Its own file because it needs both reduce.ts and elementwise.ts, and
// elementwise.ts already imports reduce.ts (a broadcast operand's gradient is summed back).
import type { Tensor } from '../core/tensor.js';
import { scale } from './elementwise.js';
import { normalizeAxes, sum } from './reduce.js';

/** Mean over `axes` (all by default). */
export function mean(x: Tensor, axes?: number | readonly number[], keepDims = false): Tensor {
  const ax = normalizeAxes('mean', axes, x.rank);
  const count = ax.reduce((n, a) => n * x.shape[a], 1);
  const s = sum(x, ax, keepDims);
  const out = scale(s, count === 0 ? NaN : 1 / count);
  s.dispose();
  return out;
}

