// Ops of the family "optim": optimizers (AdamW, SGD), the global gradient norm and its clipping.
// Each step is one native call over every parameter (a multi-tensor kernel), in place, not recorded by
// autograd. AdamW follows PyTorch's torch.optim.AdamW exactly, including a step count per parameter.
import type { StorageHandle } from '../native/backend.js';
import type { Device } from '../native/backend.js';
import { MemgptError, shapeStr } from '../core/errors.js';
import { keep, zeros, type Tensor } from '../core/tensor.js';
import type { OptimKernels, TensorList } from '../native/kernels.js';
import { callNative } from './util.js';


const flat = (ts: readonly Tensor[]): TensorList => ts.flatMap((t) => [t.handle, t.offset]);

function need<K extends keyof OptimKernels>(op: string, t: Tensor, name: K): NonNullable<OptimKernels[K]> {
  const fn = (t.storage.backend as OptimKernels)[name];
  if (!fn) throw new MemgptError(`${op}: not implemented on ${t.device} yet`);
  return fn.bind(t.storage.backend) as NonNullable<OptimKernels[K]>;
}

/** Checks a parameter list: live float32 tensors on one device, each listed once. */
function checkParams(op: string, params: readonly Tensor[]): Device | null {
  if (!Array.isArray(params)) throw new MemgptError(`${op}: params must be an array of tensors`);
  let device: Device | null = null;
  const storages = new Set<unknown>();
  params.forEach((p, i) => {
    if (p === null || typeof p !== 'object' || !('shape' in p)) throw new MemgptError(`${op}: params[${i}] is not a tensor`);
    if (p.isDisposed) throw new MemgptError(`${op}: params[${i}] ${shapeStr(p.shape)} was disposed`);
    if (p.dtype !== 'float32') throw new MemgptError(`${op}: params[${i}] ${shapeStr(p.shape)} has dtype ${p.dtype}; expected float32`);
    if (device && p.device !== device) throw new MemgptError(`${op}: params are on different devices (${device} and ${p.device})`);
    device = p.device;
    // Updated in place in parallel: two entries sharing memory would race.
    if (storages.has(p.storage)) throw new MemgptError(`${op}: params[${i}] ${shapeStr(p.shape)} is listed twice or shares memory with another param`);
    storages.add(p.storage);
  });
  return device;
}

/** The params that have a gradient, after checking that each gradient matches its param. */
function withGrads(op: string, params: readonly Tensor[]): Tensor[] {
  return params.filter((p, i) => {
    const g = p.grad;
    if (!g) return false;
    if (g.isDisposed) throw new MemgptError(`${op}: the gradient of params[${i}] was disposed`);
    if (g.dtype !== 'float32' || g.shape.join() !== p.shape.join() || g.device !== p.device) {
      throw new MemgptError(`${op}: the gradient of params[${i}] is ${g}, but the param is ${p}`);
    }
    return true;
  });
}

function checkLr(op: string, lr: number): number {
  if (typeof lr !== 'number' || !Number.isFinite(lr) || lr <= 0) throw new MemgptError(`${op}: lr must be a positive finite number, got ${lr}`);
  return lr;
}

function checkRange(op: string, name: string, value: number, ok: (v: number) => boolean, what: string): number {
  if (typeof value !== 'number' || !ok(value)) throw new MemgptError(`${op}: ${name} must be ${what}, got ${value}`);
  return value;
}

/** Options of AdamW (PyTorch's defaults). */
export interface AdamWOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
  /** Params that get no weight decay (norms, biases, embeddings, as is usual). */
  noDecay?: Iterable<Tensor>;
}

/** AdamW's state, for checkpoints: first and second moments per param, and step counts. */
export interface AdamWState {
  m: Tensor[];
  v: Tensor[];
  /** Steps taken by the optimizer. */
  step: number;
  /** Steps taken by each param (a param without a gradient at a step is not stepped); defaults to `step`. */
  steps?: number[];
}

/** AdamW with decoupled weight decay and bias-corrected moments, exactly as torch.optim.AdamW. */
export class AdamW {
  readonly params: readonly Tensor[];
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  private readonly decays: number[];
  private m: Tensor[];
  private v: Tensor[];
  private disposed = false;
  private steps: number[];
  private count = 0;

  constructor(params: Tensor[], options: AdamWOptions = {}) {
    const op = 'AdamW';
    checkParams(op, params);
    this.params = [...params];
    this.lr = checkLr(op, options.lr ?? 1e-3);
    const [b1, b2] = options.betas ?? [0.9, 0.999];
    const inUnit = (v: number) => v >= 0 && v < 1;
    this.beta1 = checkRange(op, 'betas[0]', b1, inUnit, 'in [0, 1)');
    this.beta2 = checkRange(op, 'betas[1]', b2, inUnit, 'in [0, 1)');
    this.eps = checkRange(op, 'eps', options.eps ?? 1e-8, (v) => v >= 0 && Number.isFinite(v), 'a non-negative number');
    this.weightDecay = checkRange(op, 'weightDecay', options.weightDecay ?? 1e-2, (v) => v >= 0 && Number.isFinite(v), 'a non-negative number');
    const noDecay = new Set(options.noDecay ?? []);
    for (const t of noDecay) if (!this.params.includes(t)) throw new MemgptError(`${op}: a noDecay tensor ${t} is not among the params`);
    this.decays = this.params.map((p) => (noDecay.has(p) ? 0 : this.weightDecay));
    // The moments live until dispose(), whatever tidy() scope the optimizer was made in.
    this.m = this.params.map((p) => keep(zeros(p.shape, { device: p.device })));
    this.v = this.params.map((p) => keep(zeros(p.shape, { device: p.device })));
    this.steps = this.params.map(() => 0);
  }

  /** Steps taken (calls of step()). */
  get stepCount(): number {
    return this.count;
  }

  /** One update of every param that has a gradient; lr, if given, replaces this.lr from now on (schedules). */
  step(lr?: number): void {
    const op = 'AdamW.step';
    if (this.disposed) throw new MemgptError(`${op}: the optimizer was disposed`);
    if (lr !== undefined) this.lr = checkLr(op, lr);
    checkParams(op, this.params);
    const idx = this.params.flatMap((p, i) => (withGrads(op, [p]).length ? [i] : []));
    this.count++;
    if (idx.length === 0) return;
    const sizes: number[] = [], decay: number[] = [], stepSize: number[] = [], bc2Sqrt: number[] = [];
    for (const i of idx) {
      const t = ++this.steps[i];
      sizes.push(this.params[i].size);
      decay.push(1 - this.lr * this.decays[i]);
      stepSize.push(this.lr / (1 - this.beta1 ** t));
      bc2Sqrt.push(Math.sqrt(1 - this.beta2 ** t));
    }
    const params = idx.map((i) => this.params[i]);
    const first = params[0];
    const adamwStep = need(op, first, 'adamwStep');
    callNative(op, { param: first }, () =>
      adamwStep(
        sizes, decay, stepSize, bc2Sqrt, this.beta1, this.beta2, this.eps,
        flat(params), flat(params.map((p) => p.grad!)), flat(idx.map((i) => this.m[i])), flat(idx.map((i) => this.v[i])),
      ),
    );
  }

  /** Drops every param's gradient. */
  zeroGrad(): void {
    for (const p of this.params) p.zeroGrad();
  }

  /** The moments (the optimizer's own tensors: do not dispose them) and step counts. */
  state(): AdamWState {
    if (this.disposed) throw new MemgptError('AdamW.state: the optimizer was disposed');
    return { m: [...this.m], v: [...this.v], step: this.count, steps: [...this.steps] };
  }

  /** Copies moments and step counts from a saved state (same params, same shapes); the given tensors are not kept. */
  loadState(state: AdamWState): void {
    const op = 'AdamW.loadState';
    if (this.disposed) throw new MemgptError(`${op}: the optimizer was disposed`);
    const n = this.params.length;
    if (!state || state.m?.length !== n || state.v?.length !== n) throw new MemgptError(`${op}: the state must have m and v for each of the ${n} params`);
    if (!Number.isSafeInteger(state.step) || state.step < 0) throw new MemgptError(`${op}: step must be a non-negative integer, got ${state.step}`);
    const steps = state.steps ?? this.params.map(() => state.step);
    if (steps.length !== n || steps.some((s) => !Number.isSafeInteger(s) || s < 0)) throw new MemgptError(`${op}: steps must be ${n} non-negative integers`);
    const copies: [Tensor, Tensor, string][] = [];
    for (let i = 0; i < n; i++) {
      for (const [name, src, dst] of [['m', state.m[i], this.m[i]], ['v', state.v[i], this.v[i]]] as const) {
        if (!src || src.isDisposed || src.dtype !== 'float32' || src.shape.join() !== dst.shape.join() || src.device !== dst.device) {
          throw new MemgptError(`${op}: ${name}[${i}] is ${src}, expected float32 ${shapeStr(dst.shape)} on ${dst.device}`);
        }
        copies.push([dst, src, name]);
      }
    }
    for (const [dst, src] of copies) {
      if (dst !== src) dst.storage.backend.copy(dst.handle, dst.offset * 4, src.handle, src.offset * 4, dst.size * 4);
    }
    this.steps = [...steps];
    this.count = state.step;
  }

  /** Frees the moments. */
  dispose(): void {
    if (this.disposed) return;
    for (const t of [...this.m, ...this.v]) t.dispose();
    this.m = [];
    this.v = [];
    this.disposed = true;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Options of SGD. */
export interface SGDOptions {
  lr: number;
}

/** Plain stochastic gradient descent: w ← w − lr·g for every param with a gradient. */
export class SGD {
  readonly params: readonly Tensor[];
  lr: number;

  constructor(params: Tensor[], options: SGDOptions) {
    checkParams('SGD', params);
    this.params = [...params];
    this.lr = checkLr('SGD', options?.lr);
  }

  /** One update; lr, if given, replaces this.lr from now on. */
  step(lr?: number): void {
    const op = 'SGD.step';
    if (lr !== undefined) this.lr = checkLr(op, lr);
    checkParams(op, this.params);
    const params = withGrads(op, this.params);
    if (params.length === 0) return;
    const sgdStep = need(op, params[0], 'sgdStep');
    callNative(op, { param: params[0] }, () =>
      sgdStep(params.map((p) => p.size), this.lr, flat(params), flat(params.map((p) => p.grad!))),
    );
  }

  /** Drops every param's gradient. */
  zeroGrad(): void {
    for (const p of this.params) p.zeroGrad();
  }

  /** Nothing to free; present so optimizers can be disposed alike. */
  dispose(): void {}
}

/** The global L2 norm of all params' gradients (accumulated in double, deterministic); 0 when none has one. */
export function gradNorm(params: Tensor[]): number {
  checkParams('gradNorm', params);
  const grads = withGrads('gradNorm', params).map((p) => p.grad!);
  if (grads.length === 0) return 0;
  const sumSquares = need('gradNorm', grads[0], 'sumSquares');
  return Math.sqrt(callNative('gradNorm', { grad: grads[0] }, () => sumSquares(grads.map((g) => g.size), flat(grads))));
}

/**
 * Scales every gradient in place by maxNorm / (norm + 1e-6) when that is below 1 (torch's clip_grad_norm_),
 * and returns the norm before clipping. A non-finite norm is returned and the gradients left as they are.
 * `norm`, if given, is the norm to clip by instead of these params' own (data parallelism with sharded gradients
 * clips each shard by the global norm).
 */
export function clipGradNorm(params: Tensor[], maxNorm: number, norm = gradNorm(params)): number {
  const op = 'clipGradNorm';
  checkRange(op, 'maxNorm', maxNorm, (v) => v >= 0 && Number.isFinite(v), 'a non-negative finite number');
  if (!Number.isFinite(norm)) return norm;
  const coef = maxNorm / (norm + 1e-6);
  if (coef >= 1) return norm;
  // Autograd may hand two leaves views of one gradient buffer (e.g. both inputs of an add): scale it once.
  const regions = new Map<unknown, Set<string>>();
  const grads = withGrads(op, params).map((p) => p.grad!).filter((g) => {
    const seen = regions.get(g.storage) ?? new Set<string>();
    regions.set(g.storage, seen);
    const key = `${g.offset}:${g.size}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  const scaleTensors = need(op, grads[0], 'scaleTensors');
  callNative(op, { grad: grads[0] }, () => scaleTensors(grads.map((g) => g.size), coef, flat(grads)));
  return norm;
}
