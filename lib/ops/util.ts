// Helpers shared by the ops: argument checks with clear messages, broadcasting
// and strides, and the wrapper that turns a native failure into an error
// naming the op and its shapes.
import type { NativeBackend, StorageHandle } from '../native/backend.js';
import { type DType } from '../core/dtype.js';
import { MemgptError, shapeStr } from '../core/errors.js';
import { profileShapes, profiling, recordNativeTime } from '../core/profile.js';
import type { Tensor } from '../core/tensor.js';

/** Checks that the named tensors are live, on one device, and (if given) of an allowed dtype. */
export function checkTensors(op: string, named: Record<string, Tensor>, dtypes?: readonly DType[]): void {
  let device: string | undefined;
  for (const [name, t] of Object.entries(named)) {
    if (t === null || typeof t !== 'object' || !('shape' in t)) throw new MemgptError(`${op}: argument '${name}' is not a tensor`);
    if (t.isDisposed) throw new MemgptError(`${op}: tensor '${name}' ${shapeStr(t.shape)} was disposed`);
    if (device && t.device !== device) {
      throw new MemgptError(`${op}: tensors are on different devices (${describe(named)}); move them with .to()`);
    }
    device = t.device;
    if (dtypes && !dtypes.includes(t.dtype)) {
      throw new MemgptError(`${op}: tensor '${name}' has dtype ${t.dtype}; expected ${dtypes.join(' or ')}`);
    }
  }
}

export function describe(named: Record<string, Tensor>): string {
  return Object.entries(named)
    .map(([name, t]) => `${name}: ${shapeStr(t.shape)} ${t.dtype}${t.isDisposed ? '' : ` ${t.device}`}`)
    .join(', ');
}

export function sameDtype(op: string, a: Tensor, b: Tensor): void {
  if (a.dtype !== b.dtype) throw new MemgptError(`${op}: dtypes differ (${a.dtype} and ${b.dtype}); cast one first`);
}

export function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

/** NumPy broadcasting of two shapes, or a clear error. */
export function broadcastShapes(op: string, a: readonly number[], b: readonly number[]): number[] {
  const rank = Math.max(a.length, b.length);
  const out = new Array<number>(rank);
  for (let i = 0; i < rank; i++) {
    const da = a[a.length - rank + i] ?? 1;
    const db = b[b.length - rank + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) throw new MemgptError(`${op}: shapes ${shapeStr(a)} and ${shapeStr(b)} cannot be broadcast together`);
    out[i] = da === 1 ? db : da;
  }
  return out;
}

/** Strides that read a contiguous tensor of `shape` as if broadcast to `outShape` (0 on broadcast dims). */
export function broadcastStrides(shape: readonly number[], outShape: readonly number[]): number[] {
  const own = contiguousStrides(shape);
  const lead = outShape.length - shape.length;
  return outShape.map((d, i) => (i < lead || shape[i - lead] !== d ? 0 : own[i - lead]));
}

/** Native kernels take at least one dim and at most 8: scalars become [1]; adjacent dims are merged when strides allow. */
export function compactDims(dims: number[], ...strides: number[][]): { dims: number[]; strides: number[][] } {
  if (dims.length === 0) return { dims: [1], strides: strides.map(() => [0]) };
  const outDims = [dims[0]];
  const outStrides = strides.map((s) => [s[0]]);
  for (let i = 1; i < dims.length; i++) {
    const last = outDims.length - 1;
    const mergeable = strides.every((s, k) => outStrides[k][last] === s[i] * dims[i]);
    if (mergeable) {
      outDims[last] *= dims[i];
      strides.forEach((s, k) => (outStrides[k][last] = s[i]));
    } else {
      outDims.push(dims[i]);
      strides.forEach((s, k) => outStrides[k].push(s[i]));
    }
  }
  if (outDims.length > 8) throw new MemgptError(`tensors of more than 8 non-mergeable dims are not supported (${shapeStr(dims)})`);
  return { dims: outDims, strides: outStrides };
}

/** How a tensor crosses into a native kernel: its storage handle and element offset, or (null, 0) for an absent one. */
export function handleOf(t: Tensor): [StorageHandle, number];
export function handleOf(t: Tensor | null | undefined): [StorageHandle | null, number];
export function handleOf(t: Tensor | null | undefined): [StorageHandle | null, number] {
  return t ? [t.handle, t.offset] : [null, 0];
}

/** Calls a native kernel; a failure there becomes an error naming the op and the tensors (timed with MEMGPT_PROFILE). */
export function callNative<T>(op: string, named: Record<string, Tensor>, fn: (backend: NativeBackend) => T): T {
  const first = Object.values(named)[0];
  try {
    if (profiling) {
      const t0 = performance.now();
      const r = fn(first.storage.backend);
      recordNativeTime(profileShapes ? `${op} ${Object.values(named).map((t) => shapeStr(t.shape)).join(' ')}` : op, performance.now() - t0);
      return r;
    }
    return fn(first.storage.backend);
  } catch (e) {
    if (e instanceof MemgptError) throw e;
    throw new MemgptError(`${op} (${describe(named)}): ${(e as Error).message}`, { cause: e });
  }
}

export function normalizeAxis(op: string, axis: number, rank: number): number {
  if (!Number.isInteger(axis) || axis < -rank || axis >= Math.max(rank, 1)) {
    throw new MemgptError(`${op}: axis ${axis} is out of range for a tensor of rank ${rank}`);
  }
  return axis < 0 ? axis + rank : axis;
}
