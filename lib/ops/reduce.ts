// Sums over axes and broadcasts, in one file because each is the other's gradient. A sum over several axes
// runs one native pass per run of adjacent axes; its gradient broadcasts back, and a broadcast's sums back.
import { record } from '../core/autograd.js';
import { dtypeCode } from '../core/dtype.js';
import { empty, numel, validateShape, type Tensor } from '../core/tensor.js';
import { MemgptError, shapeStr } from '../core/errors.js';
import { reshape, stridedCopyInto } from './shape.js';
import { broadcastShapes, broadcastStrides, checkTensors, callNative, normalizeAxis } from './util.js';

const FLOAT = ['float32', 'bfloat16'] as const;

export function normalizeAxes(op: string, axes: number | readonly number[] | undefined, rank: number): number[] {
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

/** A copy of x broadcast to `shape`. */
export function broadcastTo(x: Tensor, shape: readonly number[]): Tensor {
  checkTensors('broadcastTo', { x });
  const target = validateShape(shape, 'broadcastTo');
  if (broadcastShapes('broadcastTo', x.shape, target).join() !== target.join()) {
    throw new MemgptError(`broadcastTo: ${shapeStr(x.shape)} cannot be broadcast to ${shapeStr(target)}`);
  }
  const out = empty(target, { dtype: x.dtype, device: x.device });
  stridedCopyInto('broadcastTo', x, broadcastStrides(x.shape, target), out);
  record('broadcastTo', [x], [out], [], ([g]) => [sumTo(g, x.shape)]);
  return out;
}
