// Tensors and their memory. A Tensor is a contiguous row-major view (shape,
// dtype, element offset) of a reference-counted Storage owned by one device's
// native allocator. Memory is explicit: dispose() (or `using`) frees a tensor,
// tidy() frees every tensor made inside it but what it returns, and a
// FinalizationRegistry is only a safety net. memory() shows what is live.
import { defaultDevice, type Device, type StorageHandle } from '../native/backend.js';
import { Storage, counters } from './storage.js';
import { dtypeBytes, dtypeCode, decodeHost, encodeHost, rawHostBuffer, type DType, type HostArray } from './dtype.js';
import { MemgptError, shapeStr } from './errors.js';
import { Rng } from './random.js';

/** The autograd node that made a tensor (lib/core/autograd.ts); tensors only hold and release it. */
export interface GradFn {
  unref(): void;
}

interface Finalized {
  storage: Storage;
  device: Device;
  gradFn: GradFn | null;
}

// The safety net: a tensor that is garbage-collected without dispose() still lets go of its storage.
const finalizer = new FinalizationRegistry<Finalized>((held) => {
  counters[held.device].liveTensors--;
  held.storage.release();
  held.gradFn?.unref();
});

// ---------------------------------------------------------------- scopes

const scopes: Set<Tensor>[] = [];

function track(t: Tensor): void {
  scopes[scopes.length - 1]?.add(t);
}

/** Tensors found in a value returned from tidy: a tensor, or arrays / plain objects / maps of them. */
function collectTensors(value: unknown, out: Set<Tensor>, depth = 0): Set<Tensor> {
  if (depth > 8 || value === null || typeof value !== 'object') return out;
  if (value instanceof Tensor) out.add(value);
  else if (Array.isArray(value)) for (const v of value) collectTensors(v, out, depth + 1);
  else if (value instanceof Map) for (const v of value.values()) collectTensors(v, out, depth + 1);
  else if (Object.getPrototypeOf(value) === Object.prototype) for (const v of Object.values(value)) collectTensors(v, out, depth + 1);
  return out;
}

/**
 * Runs fn and disposes every tensor created inside it except those it returns
 * (directly or inside arrays and plain objects) and those passed to keep().
 * Returned tensors belong to the enclosing scope. fn must be synchronous.
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Set<Tensor>();
  scopes.push(scope);
  let result: T | undefined;
  try {
    result = fn();
    if (result instanceof Promise) throw new MemgptError('tidy: the function must be synchronous (it returned a Promise)');
    return result;
  } finally {
    scopes.pop();
    const returned = collectTensors(result, new Set());
    const parent = scopes[scopes.length - 1];
    for (const t of scope) {
      if (returned.has(t)) parent?.add(t);
      else t.dispose();
    }
  }
}

/** Takes t out of every tidy scope: it lives until disposed. */
export function keep<T extends Tensor>(t: T): T {
  for (const scope of scopes) scope.delete(t);
  return t;
}

// ---------------------------------------------------------------- tensors

let nextId = 1;

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function validateShape(shape: readonly number[], what: string): number[] {
  if (!Array.isArray(shape)) throw new MemgptError(`${what}: shape must be an array of sizes, got ${String(shape)}`);
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new MemgptError(`${what}: bad shape ${shapeStr(shape)} (sizes must be non-negative integers)`);
  }
  return [...shape];
}

export interface TensorOptions {
  dtype?: DType;
  device?: Device;
  requiresGrad?: boolean;
}

export class Tensor {
  readonly id = nextId++;
  readonly shape: readonly number[];
  readonly size: number;
  /** Where the data lives (still known after dispose). */
  readonly device: Device;
  /** Set on leaves whose gradient is wanted; set by autograd on tensors computed from them. */
  requiresGrad = false;
  /** Accumulated gradient of a leaf (parameters, inputs with requiresGrad). */
  grad: Tensor | null = null;
  /** @internal the autograd node that made this tensor, and which of its outputs it is */
  _gradFn: GradFn | null = null;
  /** @internal */
  _outputIndex = 0;
  private storageRef: Storage | null;

  /** @internal use the creation functions (zeros, tensor, ...) instead. */
  constructor(storage: Storage, shape: readonly number[], readonly dtype: DType, readonly offset = 0, tracked = true) {
    this.storageRef = storage;
    this.device = storage.device;
    this.shape = Object.freeze([...shape]);
    this.size = numel(shape);
    counters[storage.device].liveTensors++;
    finalizer.register(this, { storage, device: storage.device, gradFn: null }, this);
    if (tracked) track(this);
  }

  get rank(): number {
    return this.shape.length;
  }
  get isDisposed(): boolean {
    return this.storageRef === null;
  }
  get isLeaf(): boolean {
    return this._gradFn === null;
  }

  /** @internal the live storage; throws a clear error if disposed. */
  get storage(): Storage {
    if (!this.storageRef) throw new MemgptError(`tensor ${shapeStr(this.shape)} ${this.dtype} was disposed`);
    return this.storageRef;
  }

  /** @internal */
  get handle(): StorageHandle {
    return this.storage.handle!;
  }

  /** @internal a new tensor object viewing the same storage (retained). */
  _view(shape: readonly number[] = this.shape, tracked = true, offset = this.offset): Tensor {
    return new Tensor(this.storage.retain(), shape, this.dtype, offset, tracked);
  }

  /** @internal called by autograd when this tensor is an op's output. */
  _setGradFn(fn: GradFn, index: number): void {
    this._gradFn = fn;
    this._outputIndex = index;
    this.requiresGrad = true;
    finalizer.unregister(this);
    finalizer.register(this, { storage: this.storage, device: this.device, gradFn: fn }, this);
  }

  /** Frees this tensor's hold on its memory (and on the graph that made it). Safe to call twice. */
  dispose(): void {
    const storage = this.storageRef;
    if (!storage) return;
    this.storageRef = null;
    finalizer.unregister(this);
    counters[storage.device].liveTensors--;
    storage.release();
    const fn = this._gradFn;
    this._gradFn = null;
    fn?.unref();
    for (const scope of scopes) scope.delete(this);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** A copy of the values on the host (bfloat16 widened to float32). */
  toArray(): HostArray {
    const raw = rawHostBuffer(this.dtype, this.size);
    if (this.size > 0) hostCopy('toArray', this, () => this.storage.backend.copyToHost(this.handle, this.offset * dtypeBytes[this.dtype], raw));
    return decodeHost(raw, this.dtype);
  }

  /** The values as nested arrays of numbers. */
  toNested(): unknown {
    const flat = Array.from(this.toArray());
    if (this.rank === 0) return flat[0];
    const build = (dim: number, start: number): unknown[] => {
      const n = this.shape[dim];
      const stride = numel(this.shape.slice(dim + 1));
      if (dim === this.rank - 1) return flat.slice(start, start + n);
      return Array.from({ length: n }, (_, i) => build(dim + 1, start + i * stride));
    };
    return build(0, 0);
  }

  /** The single value of a one-element tensor. */
  item(): number {
    if (this.size !== 1) throw new MemgptError(`item: tensor ${shapeStr(this.shape)} has ${this.size} elements, not 1`);
    return this.toArray()[0];
  }

  /** The gradient of this scalar (or of `grad`-weighted) output with respect to every leaf it depends on. */
  backward(grad?: Tensor, options?: { retainGraph?: boolean }): void {
    if (!backwardHook) throw new MemgptError('internal: autograd is not loaded');
    backwardHook(this, grad, options ?? {});
  }

  /** Drops the accumulated gradient. */
  zeroGrad(): void {
    this.grad?.dispose();
    this.grad = null;
  }

  toString(): string {
    return `Tensor(${shapeStr(this.shape)}, ${this.dtype}, ${this.isDisposed ? 'disposed' : this.device})`;
  }
}

type BackwardHook = (root: Tensor, grad: Tensor | undefined, options: { retainGraph?: boolean }) => void;
let backwardHook: BackwardHook | undefined;
/** @internal lib/core/autograd.ts registers the engine here (it imports this module, not the reverse). */
export function setBackwardHook(hook: BackwardHook): void {
  backwardHook = hook;
}

/** A trainable leaf: requires grad, never freed by tidy, only by dispose(). */
export class Parameter extends Tensor {
  constructor(storage: Storage, shape: readonly number[], dtype: DType, readonly name = '') {
    super(storage, shape, dtype, 0, false);
    this.requiresGrad = true;
  }
}

// ---------------------------------------------------------------- creation

function resolveOptions(opts: TensorOptions | undefined, what: string): { dtype: DType; device: Device } {
  const dtype = opts?.dtype ?? 'float32';
  if (!(dtype in dtypeCode)) throw new MemgptError(`${what}: unknown dtype '${String(dtype)}'`);
  return { dtype, device: opts?.device ?? defaultDevice() };
}

/** @internal an uninitialised tensor. */
export function empty(shape: readonly number[], opts?: TensorOptions): Tensor {
  const { dtype, device } = resolveOptions(opts, 'empty');
  const s = validateShape(shape, 'empty');
  const t = new Tensor(new Storage(device, numel(s) * dtypeBytes[dtype]), s, dtype);
  if (opts?.requiresGrad) t.requiresGrad = true;
  return t;
}

export function full(shape: readonly number[], value: number, opts?: TensorOptions): Tensor {
  const t = empty(shape, opts);
  if (t.size > 0) t.storage.backend.fill(dtypeCode[t.dtype], t.size, value, t.handle, 0);
  return t;
}

export function zeros(shape: readonly number[], opts?: TensorOptions): Tensor {
  return full(shape, 0, opts);
}

export function ones(shape: readonly number[], opts?: TensorOptions): Tensor {
  return full(shape, 1, opts);
}

type Nested = number | Nested[];

function inferShape(values: Nested): number[] {
  const shape: number[] = [];
  let v: Nested = values;
  while (Array.isArray(v)) {
    shape.push(v.length);
    v = v[0] ?? 0;
  }
  return shape;
}

function flatten(values: Nested, shape: number[], what: string): number[] {
  const out: number[] = [];
  const walk = (v: Nested, dim: number): void => {
    if (dim === shape.length) {
      if (typeof v !== 'number') throw new MemgptError(`${what}: ragged or non-numeric nested array`);
      out.push(v);
      return;
    }
    if (!Array.isArray(v) || v.length !== shape[dim]) throw new MemgptError(`${what}: ragged nested array (expected ${shape[dim]} items at depth ${dim})`);
    for (const x of v) walk(x, dim + 1);
  };
  walk(values, 0);
  return out;
}

/**
 * A tensor from values: a flat array or typed array with a shape, or nested arrays
 * (shape inferred). dtype defaults to int32 for an Int32Array, else float32.
 */
export function tensor(values: Nested | ArrayLike<number>, shape?: readonly number[], opts?: TensorOptions): Tensor {
  let flat: ArrayLike<number>;
  let s: number[];
  if (Array.isArray(values) && (shape === undefined || Array.isArray(values[0]))) {
    const inferred = inferShape(values as Nested);
    flat = flatten(values as Nested, inferred, 'tensor');
    s = shape ? validateShape(shape, 'tensor') : inferred;
  } else if (typeof values === 'number') {
    flat = [values];
    s = shape ? validateShape(shape, 'tensor') : [];
  } else {
    flat = values as ArrayLike<number>;
    s = shape ? validateShape(shape, 'tensor') : [flat.length];
  }
  if (numel(s) !== flat.length) throw new MemgptError(`tensor: ${flat.length} values do not fill shape ${shapeStr(s)} (${numel(s)} elements)`);
  const dtype = opts?.dtype ?? (values instanceof Int32Array ? 'int32' : 'float32');
  const t = empty(s, { ...opts, dtype });
  if (t.size > 0) {
    try {
      hostCopy('tensor', t, () => t.storage.backend.copyFromHost(t.handle, 0, encodeHost(flat, dtype)));
    } catch (e) {
      t.dispose();
      throw e;
    }
  }
  return t;
}

/** Overwrites the values of t (contiguous, on any device) with `values` from the host: exactly t.size of them. */
export function writeHost(t: Tensor, values: ArrayLike<number>): void {
  if (values.length !== t.size) throw new MemgptError(`writeHost: ${values.length} values for a tensor of ${t.size} (${shapeStr(t.shape)})`);
  if (t.size === 0) return;
  const encoded = encodeHost(values, t.dtype);
  hostCopy('writeHost', t, () => t.storage.backend.copyFromHost(t.handle, t.offset * dtypeBytes[t.dtype], encoded));
}

/** A copy between the host and a tensor's device; the addon's raw Error (a device fault) becomes one clear MemgptError. */
function hostCopy(op: string, t: Tensor, copy: () => void): void {
  try {
    copy();
  } catch (e) {
    if (e instanceof MemgptError) throw e;
    throw new MemgptError(`${op}: copying ${shapeStr(t.shape)} ${t.dtype} to or from ${t.device} failed: ${(e as Error).message}`, { cause: e });
  }
}

/** 0, 1, ..., n-1. */
export function arange(n: number, opts?: TensorOptions): Tensor {
  return tensor(Float32Array.from({ length: n }, (_, i) => i), [n], opts);
}

/** Normal samples (mean 0, std 1 unless given) from a seeded generator. */
export function randn(shape: readonly number[], opts?: TensorOptions & { rng?: Rng; seed?: number; std?: number; mean?: number }): Tensor {
  const s = validateShape(shape, 'randn');
  const rng = opts?.rng ?? new Rng(opts?.seed ?? 0);
  return tensor(rng.fillNormal(new Float32Array(numel(s)), opts?.mean ?? 0, opts?.std ?? 1), s, opts);
}

/** Uniform samples in [low, high) from a seeded generator. */
export function rand(shape: readonly number[], opts?: TensorOptions & { rng?: Rng; seed?: number; low?: number; high?: number }): Tensor {
  const s = validateShape(shape, 'rand');
  const rng = opts?.rng ?? new Rng(opts?.seed ?? 0);
  return tensor(rng.fillUniform(new Float32Array(numel(s)), opts?.low ?? 0, opts?.high ?? 1), s, opts);
}

/** Makes a trainable leaf of t's values, taking over its memory: t itself is disposed. */
export function parameter(t: Tensor, name = ''): Parameter {
  if (t.offset !== 0 || t.size * dtypeBytes[t.dtype] !== t.storage.bytes) {
    throw new MemgptError(`parameter: ${t} is a view of part of a larger tensor; clone it first`);
  }
  const p = new Parameter(t.storage.retain(), t.shape, t.dtype, name);
  t.dispose();
  return p;
}
