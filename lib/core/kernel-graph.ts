// Kernel graphs: the native kernel calls one run of a function makes, recorded once and replayed without the
// JavaScript that issued them (what CUDA graphs do for a GPU, here for both backends). A decoding step issues about
// 60 small kernels; at batch 1 the JavaScript around them (tensor objects, checks, allocations) cost more than the
// kernels themselves. A replay runs the same kernels, in the same order, on the same buffers with the same
// arguments, so its results are bit-equal to the recorded run's.
//
// What may change between replays is device memory: the caller writes its inputs (token ids, positions) into
// tensors the recording read, replays, and reads the outputs from tensors the recording wrote. A host transfer
// while recording is an error, as is a kernel that returns a value: neither can be replayed.
//
// Memory: the temporaries the recorded run made and freed stay allocated (their native frees wait) until the graph is
// disposed, since the replay writes them again; the storages that existed before and that a recorded call reads or
// writes (weights, caches) are retained, so disposing one of them cannot leave the graph a dangling pointer.
import { loadedBackends, type NativeBackend, type StorageHandle } from '../native/backend.js';
import { MemgptError } from './errors.js';
import { profiling, recordNativeTime } from './profile.js';
import { storageOfHandle, type Storage } from './storage.js';

type NativeFn = (...args: unknown[]) => unknown;

interface RecordedCall {
  name: string;
  fn: NativeFn;
  args: unknown[];
}

// Backend functions that run as usual while recording and are not part of the graph.
const passThrough = new Set(['memory', 'resetPeak', 'info', 'synchronizations', 'emulatorLaunches']);
// Backend functions a recorded run must not call: their effect or result lives on the host.
const refused = new Set([
  'copyFromHost', 'copyToHost', 'address', 'synchronize', 'emptyCache', 'setNumThreads', 'probe', 'probePeakFlops',
  'probeCopyBandwidth', 'ncclStatus', 'ncclUniqueId', 'ncclInit', 'ncclAllReduceAt', 'ncclClose',
]);

let recording = false;

/** The recorded kernel calls of one run of a function on one backend: replay() runs them again. */
export class KernelGraph {
  private readonly backend: NativeBackend;
  private readonly calls: RecordedCall[];
  /** Native blocks of the temporaries freed while recording: freed by dispose(). */
  private readonly heldBlocks: ReadonlySet<StorageHandle>;
  /** Storages made before the recording that its calls use: retained until dispose(). */
  private readonly retained: Storage[];
  private disposed = false;

  private constructor(backend: NativeBackend, calls: RecordedCall[], heldBlocks: ReadonlySet<StorageHandle>, retained: Storage[]) {
    this.backend = backend;
    this.calls = calls;
    this.heldBlocks = heldBlocks;
    this.retained = retained;
  }

  /**
   * Runs fn once, as it would run anyway, recording the kernel calls it makes on `backend`. fn must be
   * synchronous, transfer nothing to or from the host, and use no other backend. Its return value is returned too.
   */
  static record<R>(backend: NativeBackend, fn: () => R): { graph: KernelGraph; result: R } {
    if (recording) throw new MemgptError('kernel graph: a recording is already under way (recordings do not nest)');
    const originals = new Map<string, NativeFn>();
    const calls: RecordedCall[] = [];
    const made = new Set<StorageHandle>();
    const heldBlocks = new Set<StorageHandle>();
    const used = new Set<StorageHandle>();
    const alloc = backend.alloc, free = backend.free;
    // The other loaded backends refuse every kernel: a call there would run once and be missing from the replays.
    const others = loadedBackends().filter((b) => b !== backend);
    const otherOriginals = others.map((other) => new Map(Object.entries(other).filter(([name, v]) => typeof v === 'function' && !passThrough.has(name))));
    others.forEach((other, i) => {
      for (const name of otherOriginals[i].keys()) {
        Reflect.set(other, name, () => {
          throw new MemgptError(`kernel graph: ${name} was called on another device's backend while recording; a recorded run stays on one device`);
        });
      }
    });
    for (const [name, value] of Object.entries(backend)) {
      if (typeof value !== 'function' || passThrough.has(name)) continue;
      const original = value as NativeFn;
      originals.set(name, original);
      let wrapper: NativeFn;
      if (name === 'alloc') {
        wrapper = (bytes) => {
          const handle = alloc.call(backend, bytes as number);
          made.add(handle);
          return handle;
        };
      } else if (name === 'free') {
        // Held, not freed: the replay writes this block again. A block made before the recording is not ours to keep.
        wrapper = (handle) => {
          if (made.has(handle as StorageHandle)) heldBlocks.add(handle as StorageHandle);
          else free.call(backend, handle as StorageHandle);
        };
      } else if (refused.has(name)) {
        wrapper = () => {
          throw new MemgptError(`kernel graph: ${name} was called while recording; a recorded run must stay on the device`);
        };
      } else {
        wrapper = (...args) => {
          const out = original.apply(backend, args);
          if (out !== undefined) throw new MemgptError(`kernel graph: ${name} returned a value while recording; it cannot be replayed`);
          for (const a of args) if (a !== null && typeof a === 'object' && !Array.isArray(a)) used.add(a as StorageHandle);
          calls.push({ name, fn: original, args });
          return undefined;
        };
      }
      Reflect.set(backend, name, wrapper);
    }
    recording = true;
    let result: R;
    try {
      result = fn();
    } catch (e) {
      for (const h of heldBlocks) free.call(backend, h);
      throw e;
    } finally {
      recording = false;
      for (const [name, original] of originals) Reflect.set(backend, name, original);
      others.forEach((other, i) => otherOriginals[i].forEach((original, name) => Reflect.set(other, name, original)));
    }
    // Storages from before the recording that the calls use; every other handle a call names is a held temporary
    // or a block still owned by a tensor made during the recording (which the caller keeps: retained too).
    const retained: Storage[] = [];
    for (const handle of used) {
      const storage = storageOfHandle(handle);
      if (storage && storage.handle === handle) retained.push(storage.retain());
      else if (!heldBlocks.has(handle)) {
        for (const h of heldBlocks) free.call(backend, h);
        for (const s of retained) s.release();
        throw new MemgptError('kernel graph: a recorded call used memory that is neither a live tensor nor a temporary of the run');
      }
    }
    return { graph: new KernelGraph(backend, calls, heldBlocks, retained), result };
  }

  /** How many kernel calls a replay makes. */
  get size(): number {
    return this.calls.length;
  }

  /** The recorded calls' names, in order (for tests and profiles). */
  get kernels(): string[] {
    return this.calls.map((c) => c.name);
  }

  /** Runs the recorded kernel calls again, in order. */
  replay(): void {
    if (this.disposed) throw new MemgptError('kernel graph: replay after dispose');
    for (const c of this.calls) {
      try {
        if (!profiling) c.fn.apply(this.backend, c.args);
        else {
          const t0 = performance.now();
          c.fn.apply(this.backend, c.args);
          recordNativeTime(`${c.name} (replayed)`, performance.now() - t0);
        }
      } catch (e) {
        throw new MemgptError(`kernel graph: ${c.name} failed on replay: ${(e as Error).message}`, { cause: e });
      }
    }
  }

  /** Frees the held temporaries and lets go of the retained storages. Safe to call twice. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const h of this.heldBlocks) this.backend.free(h);
    for (const s of this.retained) s.release();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
