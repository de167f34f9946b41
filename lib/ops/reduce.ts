// Sums over axes (and the mean built on it). A sum over several axes runs one
// native pass per run of adjacent axes; its gradient broadcasts back.
import { record } from '../core/autograd.js';
import { dtypeCode } from '../core/dtype.js';
import { empty, numel, type Tensor } from '../core/tensor.js';
import { scale } from './elementwise.js';
import { broadcastTo, reshape } from './shape.js';
import { callNative, checkTensors, normalizeAxis } from './util.js';

const FLOAT = ['float32', 'bfloat16'] as const;

function normalizeAxes(op: string, axes: number | readonly number[] | undefined, rank: number): number[] {
  if (axes === undefined) return Array.from({ length: rank }, (_, i) => i);
  const list = typeof axes === 'number' ? [axes] : [...axes];
  return [...new Set(list.map((a) => normalizeAxis(op, a, rank)))].sort((a, b) => a - b);
}

/** Sum over `axes` (all by default); keepDims leaves them as size 1. */
export function sum(x: Tensor, axes?: number | readonly number[], keepDims = false): Tensor {
  checkTensors('sum', { x }, FLOAT);
  const ax = normalizeAxes('sum', axes, x.rank);
  const keptShape = x.shape.map((d, i) => (ax.includes(i) ? 1 : d));
  const outShape = keepDims ? keptShape : x.shape.filter((_, i) => !ax.includes(i));
  // Runs of adjacent axes, reduced from the last run to the first so earlier axes keep their index.
  const runs: [number, number][] = [];
  for (const a of ax) {
    const last = runs[runs.length - 1];
    if (last && last[1] === a - 1) last[1] = a;
    else runs.push([a, a]);
  }
  let current = x;
  let shape = [...x.shape];
  for (let r = runs.length - 1; r >= 0; r--) {
    const [s, e] = runs[r];
    const outer = numel(shape.slice(0, s));
    const reduce = numel(shape.slice(s, e + 1));
    const inner = numel(shape.slice(e + 1));
    shape = shape.map((d, i) => (i >= s && i <= e ? 1 : d));
    const next = empty(r === 0 ? outShape : shape, { dtype: x.dtype, device: x.device });
    const src = current;
    callNative('sum', { x: src }, (k) => k.sumAxis(dtypeCode[x.dtype], outer, reduce, inner, false, src.handle, src.offset, next.handle, next.offset));
    if (current !== x) current.dispose();
    current = next;
  }
  const out = current === x ? x._view(outShape) : current;
  record('sum', [x], [out], [], ([g]) => [broadcastTo(reshape(g, keptShape), x.shape)]);
  return out;
}

/** Mean over `axes` (all by default). */
export function mean(x: Tensor, axes?: number | readonly number[], keepDims = false): Tensor {
  const ax = normalizeAxes('mean', axes, x.rank);
  const count = ax.reduce((n, a) => n * x.shape[a], 1);
  const s = sum(x, ax, keepDims);
  const out = scale(s, count === 0 ? NaN : 1 / count);
  s.dispose();
  return out;
}

/** Sums a broadcast gradient back to `shape` (the inverse of broadcasting). */
export function sumTo(g: Tensor, shape: readonly number[]): Tensor {
  if (g.shape.join() === shape.join()) return g;
  const lead = g.rank - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < g.rank; i++) if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) axes.push(i);
  const s = sum(g, axes, true);
  const out = reshape(s, shape);
  s.dispose();
  return out;
}
