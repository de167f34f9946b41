// NCCL, the engine of data parallel on CUDA tensors, through the CUDA addon (native/binding/nccl_cuda.cc loads
// libnccl.so.2 at run time): whether it can run here, and a communicator whose id rank 0 makes and broadcasts
// over the process group's CPU engine, as PyTorch does through its store.
import { MemgptError } from '../core/errors.js';
import type { Tensor } from '../core/tensor.js';
import { cudaBackend, cudaStatus } from '../native/backend.js';
import type { ProcessGroup } from './group.js';

/** NCCL's version number (e.g. 22105) as 2.21.5. */
const versionString = (v: number) => `${Math.floor(v / 10000)}.${Math.floor((v % 10000) / 100)}.${v % 100}`;

/**
 * Whether NCCL loads here, in one line. Data parallel on CUDA stays refused until the GPU check's NCCL stage
 * (bench/gpu/check.sh) has passed on a GPU.
 */
export function ncclStatus(): { available: boolean; detail: string } {
  const cuda = cudaStatus();
  if (!cuda.available) return { available: false, detail: `needs a usable CUDA device (${cuda.reason})` };
  const s = cudaBackend().ncclStatus();
  if (!s.available) return { available: false, detail: `NCCL does not load (${s.error}; MEMGPT_NCCL_LIBRARY names another libnccl.so.2)` };
  return { available: true, detail: `NCCL ${s.version ? versionString(s.version) : '?'} (${s.path})` };
}

/** One NCCL communicator over the ranks of a process group (collective: every rank makes it). */
export class NcclCommunicator {
  private closed = false;

  private constructor(readonly group: ProcessGroup) {}

  static create(group: ProcessGroup, timeoutSeconds: number): NcclCommunicator {
    const status = ncclStatus();
    if (!status.available) throw new MemgptError(`data parallel on CUDA: ${status.detail}`);
    const cuda = cudaBackend();
    const id = group.rank === 0 ? cuda.ncclUniqueId() : new Uint8Array(128);
    group.broadcast(new Float64Array(id.buffer, id.byteOffset, 16), 0);  // 128 raw bytes; the engine copies, never reads them
    try {
      cuda.ncclInit(id, group.rank, group.worldSize, Math.round(timeoutSeconds * 1000));
    } catch (e) {
      throw new MemgptError(`NCCL on rank ${group.rank} of ${group.worldSize}: ${(e as Error).message}`);
    }
    return new NcclCommunicator(group);
  }

  /** The sum over ranks, in place, of a contiguous float32 CUDA tensor. */
  allreduce(t: Tensor): void {
    if (this.closed) throw new MemgptError('the NCCL communicator is closed');
    if (t.device !== 'cuda' || t.dtype !== 'float32') throw new MemgptError(`NCCL all-reduce: ${t} is not a float32 CUDA tensor`);
    try {
      cudaBackend().ncclAllReduceAt(t.handle, t.offset * 4, t.size);
    } catch (e) {
      throw new MemgptError(`NCCL all-reduce on rank ${this.group.rank} of ${this.group.worldSize}: ${(e as Error).message}`);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    cudaBackend().ncclClose();
  }
}
