// Shape ops: reshape (a view), broadcastTo and permute (copies through strides),
// cast between dtypes, moves between devices, clone and detach; copies of contiguous rows into a larger tensor.
import { record } from '../core/autograd.js';
import { backendFor, type Device } from '../native/backend.js';
import { dtypeBytes, dtypeCode, type DType } from '../core/dtype.js';
import { MemgptError, shapeStr } from '../core/errors.js';
import { empty, numel, validateShape, type Tensor } from '../core/tensor.js';
import { callNative, checkTensors, compactDims, contiguousStrides, normalizeAxis } from './util.js';

/** Copies src (contiguous) into dst's rows `at` … at + src.size / rowSize − 1, dst seen as rows of rowSize elements. */
export function copyRowsInto(src: Tensor, dst: Tensor, at: number, rowSize: number): void {
  if (src.dtype !== dst.dtype) throw new MemgptError(`copyRowsInto: dtypes differ (${src.dtype} into ${dst.dtype})`);
  if (at < 0 || (at * rowSize) + src.size > dst.size) throw new MemgptError(`copyRowsInto: ${src.size} elements at row ${at} of ${rowSize} do not fit ${shapeStr(dst.shape)}`);
  const view = dst._view(src.shape, true, dst.offset + at * rowSize);
  try {
    stridedCopyInto('copyRowsInto', src, contiguousStrides(src.shape), view);
  } finally {
    view.dispose();
  }
}

/** The same data seen with another shape; one size may be -1 (inferred). Shares memory. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  checkTensors('reshape', { x });
  const s = [...shape];
  const free = s.indexOf(-1);
  if (free >= 0) {
    const known = numel(s.filter((_, i) => i !== free));
    if (known === 0 || x.size % known !== 0) throw new MemgptError(`reshape: cannot infer -1 in ${shapeStr(shape)} for ${x.size} elements`);
    s[free] = x.size / known;
  }
  validateShape(s, 'reshape');
  if (numel(s) !== x.size) throw new MemgptError(`reshape: ${shapeStr(x.shape)} (${x.size} elements) cannot become ${shapeStr(shape)}`);
  const out = x._view(s);
  record('reshape', [x], [out], [], ([g]) => [reshape(g, x.shape)]);
  return out;
}

/** Copies x into out through x's strides `strides` (one per out dim; 0 broadcasts). */
export function stridedCopyInto(op: string, x: Tensor, strides: number[], out: Tensor): void {
  if (out.size === 0) return;
  const { dims, strides: s } = compactDims([...out.shape], strides);
  callNative(op, { x }, (k) => k.stridedCopy(dtypeCode[x.dtype], dims, s[0], x.handle, x.offset, out.handle, out.offset));
}

/** A copy with the axes reordered: out.shape[i] = x.shape[axes[i]]. */
export function permute(x: Tensor, axes: readonly number[]): Tensor {
  checkTensors('permute', { x });
  const ax = axes.map((a) => normalizeAxis('permute', a, x.rank));
  if (ax.length !== x.rank || new Set(ax).size !== x.rank) throw new MemgptError(`permute: ${shapeStr(axes)} is not a permutation of ${x.rank} axes`);
  const own = contiguousStrides(x.shape);
  const out = empty(ax.map((a) => x.shape[a]), { dtype: x.dtype, device: x.device });
  stridedCopyInto('permute', x, ax.map((a) => own[a]), out);
  const inverse = new Array<number>(ax.length);
  ax.forEach((a, i) => (inverse[a] = i));
  record('permute', [x], [out], [], ([g]) => [permute(g, inverse)]);
  return out;
}

/** Swaps two axes (the last two by default). */
export function transpose(x: Tensor, a = -2, b = -1): Tensor {
  const axes = Array.from({ length: x.rank }, (_, i) => i);
  const i = normalizeAxis('transpose', a, x.rank), j = normalizeAxis('transpose', b, x.rank);
  [axes[i], axes[j]] = [axes[j], axes[i]];
  return permute(x, axes);
}

/** A copy in another dtype (float gradients flow back through the cast). */
export function cast(x: Tensor, dtype: DType): Tensor {
  checkTensors('cast', { x });
  if (!(dtype in dtypeCode)) throw new MemgptError(`cast: unknown dtype '${String(dtype)}'`);
  const out = empty(x.shape, { dtype, device: x.device });
  if (x.size > 0) callNative('cast', { x }, (k) => k.cast(dtypeCode[x.dtype], dtypeCode[dtype], x.size, x.handle, x.offset, out.handle, out.offset));
  if (dtype !== 'int32' && x.dtype !== 'int32') record('cast', [x], [out], [], ([g]) => [cast(g, x.dtype)]);
  return out;
}

/** A copy of x on `device` (the gradient moves back). */
export function to(x: Tensor, device: Device): Tensor {
  checkTensors('to', { x });
  const bytes = x.size * dtypeBytes[x.dtype];
  const out = empty(x.shape, { dtype: x.dtype, device });
  if (bytes > 0) {
    const src = x.offset * dtypeBytes[x.dtype];
    try {
      if (x.device === device) {
        backendFor(device).copy(out.handle, 0, x.handle, src, bytes);
      } else {
        // Storage handles are opaque to each other's addons: go through a host buffer.
        const host = new Uint8Array(bytes);
        backendFor(x.device).copyToHost(x.handle, src, host);
        backendFor(device).copyFromHost(out.handle, 0, host);
      }
    } catch (e) {
      out.dispose();
      if (e instanceof MemgptError) throw e;
      throw new MemgptError(`to(${device}) of ${shapeStr(x.shape)} ${x.dtype} on ${x.device}: ${(e as Error).message}`, { cause: e });
    }
  }
  record('to', [x], [out], [], ([g]) => [to(g, x.device)]);
  return out;
}

/** A copy of x on the same device. */
export function clone(x: Tensor): Tensor {
  return to(x, x.device);
}

/** The same data, cut from the graph: no gradient flows through it. Shares memory. */
export function detach(x: Tensor): Tensor {
  checkTensors('detach', { x });
  return x._view();
}
