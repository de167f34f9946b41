// Data parallelism over a process group: each rank's gradients summed over the ranks in buckets (plain data
// parallelism, every rank then takes the same optimizer step), or ZeRO-1 (the optimizer state sharded: gradients
// reduce-scattered to the rank that owns a parameter, which updates it, then all-gathered), as llm.c's zero.cuh.
//
// The sums run after backward, not overlapped with it. DDP starts a bucket's all-reduce when its gradients are
// complete, but in this model every parameter is used by every segment of a sample (the memory is recurrent), so no
// gradient is complete before the backward of the first segment ends.
import { MemgptError } from '../core/errors.js';
import { dtypeCode } from '../core/dtype.js';
import { keep, tensor, zeros, type Parameter, type Tensor } from '../core/tensor.js';
import { AdamW, clipGradNorm, gradNorm, type AdamWOptions } from '../ops/optim.js';
import type { ProcessGroup } from './group.js';

/** PyTorch DDP's default bucket size. */
export const DEFAULT_BUCKET_BYTES = 25 * 1024 * 1024;

function checkFloat32(t: Tensor, what: string): void {
  if (t.dtype !== 'float32') throw new MemgptError(`data parallel: ${what} is ${t}; gradients are summed in float32`);
}

/** Copies the tensors one after another into buffer, from element `at` on. */
function gather(tensors: Tensor[], buffer: Float32Array, at = 0): void {
  for (const t of tensors) {
    checkFloat32(t, 'a gradient');
    t.storage.backend.copyToHost(t.handle, t.offset * 4, buffer.subarray(at, at + t.size));
    at += t.size;
  }
}

function scatter(tensors: Tensor[], buffer: Float32Array, at = 0): void {
  for (const t of tensors) {
    t.storage.backend.copyFromHost(t.handle, t.offset * 4, buffer.subarray(at, at + t.size));
    at += t.size;
  }
}

/**
 * Data parallel runs on CPU tensors (gloo). CUDA tensors need NCCL, which has not run on a GPU yet: refused, with
 * the one line every entry point gives.
 */
export function checkParallelDevice(device: string): void {
  if (device !== 'cpu') {
    throw new MemgptError(`data parallel on ${device === 'cuda' ? 'CUDA (NCCL)' : device} is not yet verified on GPUs, so it is refused; train with --device cpu (gloo), or on one GPU`);
  }
}

/** Every param gets a gradient tensor (zeros where backward gave it none), so that all ranks sum the same buckets. */
function ensureGrads(params: Parameter[]): Tensor[] {
  return params.map((p) => (p.grad ??= zeros(p.shape, { device: p.device })));
}

/** Makes every rank's params equal rank 0's (the start of a run: DDP does the same). */
export function broadcastParams(group: ProcessGroup, params: Parameter[]): void {
  if (group.worldSize === 1) return;
  for (const p of params) {
    checkFloat32(p, 'a parameter');
    const host = new Float32Array(p.size);
    p.storage.backend.copyToHost(p.handle, p.offset * 4, host);
    group.broadcast(host, 0);
    p.storage.backend.copyFromHost(p.handle, p.offset * 4, host);
  }
}

/** A 32-bit FNV-1a hash of a string, or of a list of numbers (with its length). */
function fingerprint(value: string | ArrayLike<number>): number {
  let h = 0x811c9dc5;
  const n = value.length;
  for (let i = 0; i < n; i++) h = Math.imul(h ^ (typeof value === 'string' ? value.charCodeAt(i) : value[i]), 0x01000193) >>> 0;
  return Math.imul(h ^ n, 0x01000193) >>> 0;
}

/**
 * Stops a rank whose named values differ from rank 0's, with one line naming them: every rank must train the same
 * model on the same data with the same options (collective).
 */
export function checkRanksAgree(group: ProcessGroup, named: Record<string, string | ArrayLike<number>>): void {
  if (group.worldSize === 1) return;
  const names = Object.keys(named);
  const mine = Float64Array.from(names, (k) => fingerprint(named[k]));
  const root = Float64Array.from(mine);
  group.broadcast(root, 0);
  const differs = names.filter((_, i) => root[i] !== mine[i]);
  if (differs.length) {
    throw new MemgptError(`rank ${group.rank}'s ${differs.join(' and ')} differ from rank 0's; start every rank with the same data and flags`);
  }
}

/**
 * Sums the params' gradients over the ranks, in buckets of about bucketBytes (the last params first, as DDP).
 * The buckets are the gradients themselves: prepare() makes each param's gradient slot a view of its bucket,
 * backward adds into it in place, and the engine sums the bucket where it lies (DDP's gradient_as_bucket_view).
 */
export class GradientAllReduce {
  private readonly buckets: { params: Parameter[]; elements: number; flat: Tensor }[] = [];

  constructor(private readonly group: ProcessGroup, params: Parameter[], bucketBytes = DEFAULT_BUCKET_BYTES) {
    let current: Parameter[] = [], elements = 0;
    const close = () => {
      if (!current.length) return;
      const flat = keep(zeros([elements], { device: 'cpu' }));
      flat.storage.gradientBucket = true;
      this.buckets.push({ params: current, elements, flat });
      current = [];
      elements = 0;
    };
    for (const p of [...params].reverse()) {
      checkParallelDevice(p.device);
      checkFloat32(p, 'a parameter');
      if (elements > 0 && (elements + p.size) * 4 > bucketBytes) close();
      current.push(p);
      elements += p.size;
    }
    close();
  }

  /** The bucket sizes in bytes (for the benchmark). */
  get bucketBytes(): number[] {
    return this.buckets.map((b) => b.elements * 4);
  }

  /** Before a step's first backward: every param's gradient slot becomes a zeroed view of its bucket (CPU). */
  prepare(): void {
    for (const { params, elements, flat } of this.buckets) {
      flat.storage.backend.fill(dtypeCode.float32, elements, 0, flat.handle, flat.offset);
      let at = 0;
      for (const p of params) {
        p.grad?.dispose();
        p.grad = flat._view(p.shape, false, flat.offset + at);
        at += p.size;
      }
    }
  }

  sum(): void {
    if (this.group.worldSize === 1) return;
    for (const { params, elements, flat } of this.buckets) {
      // A slot that is no longer its bucket's view (prepare() not called, or replaced) is copied into the bucket.
      let at = 0;
      for (const p of params) {
        const g = p.grad;
        if (!g || g.storage !== flat.storage || g.offset !== flat.offset + at) {
          const view = flat._view(p.shape, false, flat.offset + at);
          if (g) view.storage.backend.copy(view.handle, view.offset * 4, g.handle, g.offset * 4, p.size * 4);
          else view.storage.backend.fill(dtypeCode.float32, p.size, 0, view.handle, view.offset);
          g?.dispose();
          p.grad = view;
        }
        at += p.size;
      }
      this.group.allreduceAt(flat.storage.backend.address(flat.handle, flat.offset * 4, elements * 4), elements);
    }
  }

  /** Frees the buckets (the params' gradient views keep theirs alive until dropped). */
  dispose(): void {
    for (const b of this.buckets) b.flat.dispose();
  }
}

/**
 * ZeRO-1 AdamW: the params split into W contiguous runs of about equal size; rank r keeps the moments of its run
 * only. A step reduce-scatters the gradients (each rank gets the sum of its run's), clips them by the global norm,
 * updates its run and all-gathers the params. The result equals plain data parallelism up to the order of the sum.
 */
export class ZeroAdamW {
  /** Elements of each rank's run. */
  readonly counts: number[];
  /** Index of each rank's first param, and one past the last (W + 1 entries). */
  readonly bounds: number[];
  readonly owned: Parameter[];
  private readonly inner: AdamW | null;
  /** The gradients going into the reduce-scatter; its start holds this rank's sum after it. */
  private readonly flat: Float32Array;
  /** Every rank's params after a step (all-gathered). */
  private readonly gatheredParams: Float32Array;
  private readonly total: number;

  constructor(private readonly group: ProcessGroup, readonly params: Parameter[], readonly options: AdamWOptions) {
    const W = group.worldSize;
    for (const p of params) checkParallelDevice(p.device);
    this.total = params.reduce((a, p) => a + p.size, 0);
    this.bounds = [0];
    let at = 0, i = 0;
    for (let r = 1; r < W; r++) {
      // Rank r - 1 takes params until its run reaches r/W of all elements.
      while (i < params.length && (at + params[i].size / 2) <= (this.total * r) / W) at += params[i++].size;
      this.bounds.push(i);
    }
    this.bounds.push(params.length);
    this.counts = this.bounds.slice(1).map((end, r) => params.slice(this.bounds[r], end).reduce((a, p) => a + p.size, 0));
    this.owned = params.slice(this.bounds[group.rank], this.bounds[group.rank + 1]);
    const noDecay = new Set(options.noDecay ?? []);
    this.inner = this.owned.length ? new AdamW(this.owned, { ...options, noDecay: this.owned.filter((p) => noDecay.has(p)) }) : null;
    this.flat = new Float32Array(this.total);
    this.gatheredParams = new Float32Array(this.total);
  }

  get lr(): number {
    return this.inner?.lr ?? this.options.lr ?? 1e-3;
  }

  /** Sums the gradients over the ranks into the owned params' (the others' are dropped); returns the global norm. */
  reduceGradients(): number {
    const grads = ensureGrads(this.params);
    gather(grads, this.flat);
    this.group.reduceScatter(this.flat, this.counts);
    scatter(grads.slice(this.bounds[this.group.rank], this.bounds[this.group.rank + 1]), this.flat);
    for (let i = 0; i < this.params.length; i++) {
      if (i < this.bounds[this.group.rank] || i >= this.bounds[this.group.rank + 1]) this.params[i].zeroGrad();
    }
    const squares = Float64Array.of(this.owned.length ? gradNorm(this.owned) ** 2 : 0);
    this.group.allreduce(squares);
    return Math.sqrt(squares[0]);
  }

  /** Scales the owned gradients as clipGradNorm would for the global norm. */
  clip(maxNorm: number, norm: number): void {
    if (this.owned.length) clipGradNorm(this.owned, maxNorm, norm);
  }

  /** Updates the owned params, then gives every rank every param. */
  step(lr: number): void {
    this.inner?.step(lr);
    const mine = this.flat.subarray(0, this.counts[this.group.rank]);
    gather(this.owned, mine);
    this.group.allgatherv(mine, this.gatheredParams, this.counts);
    scatter(this.params, this.gatheredParams);
  }

  zeroGrad(): void {
    for (const p of this.params) p.zeroGrad();
  }

  /**
   * An AdamW over all params holding every rank's moments (collective: every rank calls it), for a checkpoint in
   * the single-process format. The caller disposes it.
   */
  gathered(): AdamW {
    const full = new AdamW(this.params, this.options);
    full.lr = this.lr;  // the schedule's current rate, saved as a single process saves it
    const state = this.inner?.state();
    const moments = (pick: 'm' | 'v') => {
      const mine = new Float32Array(this.counts[this.group.rank]);
      if (state) gather(state[pick], mine);
      const all = new Float32Array(this.total);
      this.group.allgatherv(mine, all, this.counts);
      let at = 0;
      return this.params.map((p) => {
        const t = tensor(all.subarray(at, at + p.size), p.shape, { device: p.device });
        at += p.size;
        return t;
      });
    };
    const steps = Float64Array.from(this.params, () => 0);
    state?.steps?.forEach((s, i) => (steps[this.bounds[this.group.rank] + i] = s));
    this.group.allreduce(steps);
    const m = moments('m'), v = moments('v');
    try {
      full.loadState({ m, v, step: state?.step ?? this.inner?.stepCount ?? 0, steps: [...steps] });
    } finally {
      for (const t of [...m, ...v]) t.dispose();
    }
    return full;
  }

  /** Runs `use` on the gathered full optimizer (see gathered()), then frees it. */
  withGathered<T>(use: (full: AdamW) => T): T {
    const full = this.gathered();
    try {
      return use(full);
    } finally {
      full.dispose();
    }
  }

  /** Runs `load` on a full AdamW over all params (a checkpoint's state goes into it), then keeps this rank's run. */
  loadFull<T>(load: (full: AdamW) => T): T {
    const full = new AdamW(this.params, this.options);
    try {
      const result = load(full);
      this.loadFrom(full);
      return result;
    } finally {
      full.dispose();
    }
  }

  /** Takes this rank's run of a full AdamW state (one loaded from a checkpoint). */
  loadFrom(full: AdamW): void {
    if (!this.inner) return;
    const s = full.state();
    const lo = this.bounds[this.group.rank], hi = this.bounds[this.group.rank + 1];
    this.inner.loadState({ m: s.m.slice(lo, hi), v: s.v.slice(lo, hi), step: s.step, steps: s.steps?.slice(lo, hi) });
    this.inner.lr = full.lr;
  }

  dispose(): void {
    this.inner?.dispose();
  }
}
