// Device memory behind tensors: a reference-counted Storage owned by one device's native allocator, the live
// counts per device, and the memory report (memory(), resetPeakMemory(), emptyCache()).
import { backendFor, defaultDevice, type Device, type NativeBackend, type StorageHandle } from '../native/backend.js';
import { MemgptError } from './errors.js';

interface DeviceCounters {
  liveTensors: number;
  liveStorages: number;
  storageBytes: number;
}
/** Live tensors, storages and bytes per device (tensor.ts counts the tensors). */
export const counters: Record<Device, DeviceCounters> = {
  cpu: { liveTensors: 0, liveStorages: 0, storageBytes: 0 },
  cuda: { liveTensors: 0, liveStorages: 0, storageBytes: 0 },
};

// Each native block's Storage, so that a kernel graph (kernel-graph.ts) can retain what its recorded calls use.
const storageByHandle = new WeakMap<StorageHandle, Storage>();

/** The Storage a native block was allocated for (it may have been released since). */
export function storageOfHandle(handle: StorageHandle): Storage | undefined {
  return storageByHandle.get(handle);
}

/** Device memory shared by the tensors that view it; freed when the last one lets go. */
export class Storage {
  private refs = 1;
  handle: StorageHandle | null;
  readonly backend: NativeBackend;
  /**
   * Set on a bucket of gradients (data parallel): its views are params' gradient slots that backward adds into in
   * place, though they share the storage, so that the bucket is summed over the ranks without a copy.
   */
  gradientBucket = false;

  constructor(readonly device: Device, readonly bytes: number) {
    this.backend = backendFor(device);
    try {
      this.handle = this.backend.alloc(bytes);
    } catch (e) {
      throw new MemgptError(`cannot allocate ${bytes} bytes on ${device}: ${(e as Error).message}`, { cause: e });
    }
    storageByHandle.set(this.handle, this);
    counters[device].liveStorages++;
    counters[device].storageBytes += bytes;
  }

  get refCount(): number {
    return this.refs;
  }

  retain(): this {
    if (this.refs <= 0) throw new MemgptError('internal: retain of a freed storage');
    this.refs++;
    return this;
  }

  release(): void {
    if (--this.refs > 0 || !this.handle) return;
    this.backend.free(this.handle);
    this.handle = null;
    counters[this.device].liveStorages--;
    counters[this.device].storageBytes -= this.bytes;
  }
}

export interface DeviceMemory {
  device: Device;
  /** Tensor objects not yet disposed (user tensors, gradients and tensors saved for backward). */
  liveTensors: number;
  /** Distinct storages behind them. */
  liveStorages: number;
  /** Bytes those storages asked for. */
  tensorBytes: number;
  /** Bytes the native allocator has handed out (rounded up to its block sizes). */
  bytesInUse: number;
  /** High-water mark of bytesInUse since the process started or resetPeakMemory(). */
  peakBytes: number;
  /** Bytes held from the system: in use plus cached for reuse. */
  bytesReserved: number;
}

export function memory(device: Device = defaultDevice()): DeviceMemory {
  const stats = backendFor(device).memory();
  const c = counters[device];
  return {
    device,
    liveTensors: c.liveTensors,
    liveStorages: c.liveStorages,
    tensorBytes: c.storageBytes,
    bytesInUse: stats.bytesInUse,
    peakBytes: stats.peakBytes,
    bytesReserved: stats.bytesReserved,
  };
}

export function resetPeakMemory(device: Device = defaultDevice()): void {
  backendFor(device).resetPeak();
}

/** Returns cached (unused) blocks of the device allocator to the system. */
export function emptyCache(device: Device = defaultDevice()): void {
  backendFor(device).emptyCache();
}
