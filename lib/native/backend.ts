// Loads the native addons and chooses the device. The CPU addon always loads
// (prebuilt or built by npm install). The CUDA addon is used only after a probe
// in a child process succeeds, so a missing or broken driver can never crash
// this process; otherwise the CPU is used and one line on stderr says why.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { MemgptError } from '../core/errors.js';

export type Device = 'cpu' | 'cuda';
export const devices: readonly Device[] = ['cpu', 'cuda'];

import type { FamilyKernels, StorageHandle } from './kernels.js';

export type { StorageHandle } from './kernels.js';

export interface NativeMemoryStats {
  bytesInUse: number;
  peakBytes: number;
  bytesReserved: number;
  liveBlocks: number;
  systemAllocs: number;
}

/**
 * The functions every native addon exports (native/binding), with the op families' kernels (lib/native/kernels.ts).
 * Offsets are in elements unless named byte offsets.
 */
export interface NativeBackend extends FamilyKernels {
  alloc(bytes: number): StorageHandle;
  free(handle: StorageHandle): void;
  memory(): NativeMemoryStats;
  resetPeak(): void;
  emptyCache(): void;
  copyFromHost(handle: StorageHandle, byteOffset: number, src: ArrayBufferView): void;
  copyToHost(handle: StorageHandle, byteOffset: number, dst: ArrayBufferView): void;
  copy(dst: StorageHandle, dstByteOffset: number, src: StorageHandle, srcByteOffset: number, bytes: number): void;
  /** The address of bytes [byteOffset, byteOffset + bytes) of a storage (valid while it lives), for in-place collectives. */
  address(handle: StorageHandle, byteOffset: number, bytes: number): bigint;
  fill(dtype: number, n: number, value: number, out: StorageHandle, outOff: number): void;
  cast(from: number, to: number, n: number, x: StorageHandle, xOff: number, y: StorageHandle, yOff: number): void;
  affine(dtype: number, n: number, alpha: number, beta: number, x: StorageHandle, xOff: number, y: StorageHandle, yOff: number): void;
  binary(
    op: number, dtype: number, dims: number[], aStrides: number[], bStrides: number[],
    a: StorageHandle, aOff: number, b: StorageHandle, bOff: number, out: StorageHandle, outOff: number,
  ): void;
  stridedCopy(dtype: number, dims: number[], xStrides: number[], x: StorageHandle, xOff: number, out: StorageHandle, outOff: number): void;
  scatterRows(dtype: number, B: number, T: number, n: number, src: StorageHandle, srcOff: number, positions: StorageHandle, positionsOff: number, dst: StorageHandle, dstOff: number): void;
  sumAxis(
    dtype: number, outer: number, reduce: number, inner: number, accumulate: boolean,
    x: StorageHandle, xOff: number, y: StorageHandle, yOff: number,
  ): void;
  softmaxForward(dtype: number, rows: number, cols: number, x: StorageHandle, xOff: number, y: StorageHandle, yOff: number): void;
  softmaxBackward(
    dtype: number, rows: number, cols: number,
    y: StorageHandle, yOff: number, dy: StorageHandle, dyOff: number, dx: StorageHandle, dxOff: number,
  ): void;
  matmul(
    abDtype: number, cDtype: number, batch: number, m: number, n: number, k: number, transA: boolean, transB: boolean,
    strideA: number, strideB: number, strideC: number, beta: number,
    a: StorageHandle, aOff: number, b: StorageHandle, bOff: number, c: StorageHandle, cOff: number,
  ): void;
}

export interface CpuAddon extends NativeBackend {
  info(): { backend: 'cpu'; threads: number; simd: string };
  setNumThreads(threads: number): void;
  /** Peak float32 GFLOP/s over all threads (FMA bursts timed for `seconds`). */
  probePeakFlops(seconds: number): number;
  /** Best GB/s (read + written) of a parallel copy of `bytes`. */
  probeCopyBandwidth(bytes: number, reps: number): number;
}

export interface CudaProbe {
  ok: boolean;
  deviceCount: number;
  error?: string;
  /** CUDA versions as 1000·major + 10·minor; the driver's is 0 when no driver is installed. */
  driverVersion: number;
  runtimeVersion: number;
  /** The GPUs the driver sees, usable or not. */
  devices: { name: string; computeCapability: string; totalMemory: number }[];
  /** The CUDA architectures the addon was built for (CMake's words, e.g. "80-real 90a-real 90-virtual"). */
  architectures: string;
}

export interface CudaInfo {
  backend: 'cuda';
  name: string;
  computeCapability: string;
  totalMemory: number;
  multiProcessors: number;
  driverVersion: number;
  runtimeVersion: number;
}

export interface CudaAddon extends NativeBackend {
  probe(): CudaProbe;
  info(): CudaInfo;
  synchronize(): void;
  /** How many times the host has waited for the op stream so far (every wait of the addon counts). */
  synchronizations(): number;
  /** Device-to-device copy bandwidth in GB/s (bytes read plus written), best of reps. */
  probeCopyBandwidth(bytes: number, reps: number): number;
  /** NCCL, loaded at run time (native/binding/nccl_cuda.cc): whether libnccl.so.2 loads, its path and version. */
  ncclStatus(): { available: boolean; path: string; version?: number; error?: string };
  /** The 128-byte id of a new NCCL communicator (made by rank 0, given to every rank). */
  ncclUniqueId(): Uint8Array;
  ncclInit(id: Uint8Array, rank: number, size: number, timeoutMs: number): void;
  /** The float32 sum over ranks, in place, of `elements` floats of a CUDA storage; waits, under the timeout. */
  ncclAllReduceAt(handle: StorageHandle, byteOffset: number, elements: number): void;
  ncclClose(): void;
}

export interface CudaStatus {
  available: boolean;
  /** Why CUDA is or is not used, in words. */
  reason: string;
  addonPath?: string;
  info?: CudaInfo;
  /** What the probe reported, when it ran to the end. */
  probe?: CudaProbe;
}

/** The package root: this file is lib/native/ (tests) or dist/native/ (installed), two levels below it. */
export const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(import.meta.url);

let cpuAddon: CpuAddon | undefined;
let cudaAddon: CudaAddon | undefined;
let cudaState: CudaStatus | undefined;
let defaultDev: Device | undefined;

export function cpuBackend(): CpuAddon {
  if (!cpuAddon) {
    const load = require('node-gyp-build') as (dir: string) => unknown;
    try {
      cpuAddon = load(packageRoot) as CpuAddon;
    } catch (e) {
      throw new MemgptError(
        `the CPU addon is missing or cannot load (${(e as Error).message.split('\n')[0]}); run \`npm run build:cpu\``,
        { cause: e },
      );
    }
  }
  return cpuAddon;
}

export function cudaAddonPath(): string | undefined {
  const candidates = [
    process.env.MEMGPT_CUDA_ADDON,
    join(packageRoot, 'build-cuda', 'Release', 'memgpt_cuda.node'),
    join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}-cuda`, 'memgpt_cuda.node'),
  ];
  return candidates.find((p): p is string => !!p && existsSync(p));
}

export function cudaVersionStr(v: number): string {
  return `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}`;
}

/** Whether CUDA can be used here, probing once (in a child process) before trusting the driver. */
export function cudaStatus(): CudaStatus {
  if (cudaState) return cudaState;
  const addonPath = cudaAddonPath();
  if (!addonPath) {
    cudaState = { available: false, reason: 'the CUDA addon is not built (npm install builds it only where an NVIDIA driver is found, or with MEMGPT_BUILD_CUDA=1; npm run build:cuda builds it, with nvcc)' };
    return cudaState;
  }
  const script = `const a = require(${JSON.stringify(addonPath)}); process.stdout.write(JSON.stringify(a.probe()));`;
  const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000 });
  let probe: CudaProbe | undefined;
  try {
    probe = child.status === 0 ? (JSON.parse(child.stdout) as CudaProbe) : undefined;
  } catch {
    probe = undefined;
  }
  if (!probe) {
    const how = child.error ? child.error.message : child.signal ? `signal ${child.signal}` : `exit code ${child.status}`;
    cudaState = { available: false, reason: `the CUDA probe failed (${how})`, addonPath };
  } else if (!probe.ok || probe.deviceCount < 1) {
    const driver = probe.driverVersion > 0 ? `driver supports CUDA ${cudaVersionStr(probe.driverVersion)}, ` : '';
    const detail = probe.error ?? 'no CUDA device';
    cudaState = { available: false, reason: `${detail} (${driver}addon built with CUDA ${cudaVersionStr(probe.runtimeVersion)})`, addonPath, probe };
  } else {
    try {
      cudaAddon = require(addonPath) as CudaAddon;
      const info = cudaAddon.info();
      cudaState = { available: true, reason: `${info.name}, compute capability ${info.computeCapability}`, addonPath, info, probe };
    } catch (e) {
      cudaAddon = undefined;
      cudaState = { available: false, reason: `the CUDA addon failed to start: ${(e as Error).message}`, addonPath, probe };
    }
  }
  return cudaState;
}

/** The addons loaded so far, loading none (a kernel graph refuses calls to the ones it is not recording). */
export function loadedBackends(): NativeBackend[] {
  return [cpuAddon, cudaAddon].filter((a): a is CpuAddon | CudaAddon => a !== undefined);
}

export function cudaBackend(): CudaAddon {
  const status = cudaStatus();
  if (!status.available || !cudaAddon) throw new MemgptError(`device 'cuda' is not available: ${status.reason}`);
  return cudaAddon;
}

export function backendFor(device: Device): NativeBackend {
  if (device === 'cpu') return cpuBackend();
  if (device === 'cuda') return cudaBackend();
  throw new MemgptError(`unknown device '${String(device)}' (expected cpu or cuda)`);
}

export function parseDevice(name: string, source: string): Device {
  if (name === 'cpu' || name === 'cuda') return name;
  throw new MemgptError(`${source}: unknown device '${name}' (expected cpu or cuda)`);
}

function announce(line: string): void {
  if (process.env.MEMGPT_QUIET !== '1') process.stderr.write(`memgpt: ${line}\n`);
}

/**
 * The device new tensors go to: MEMGPT_DEVICE if set (cuda there is an error when
 * it cannot be used), else CUDA when it probes well, else the CPU. Says which once.
 */
export function defaultDevice(): Device {
  if (defaultDev) return defaultDev;
  const forced = process.env.MEMGPT_DEVICE;
  if (forced) {
    const device = parseDevice(forced, 'MEMGPT_DEVICE');
    backendFor(device);
    defaultDev = device;
    announce(device === 'cuda' ? `using cuda (${cudaStatus().reason}; MEMGPT_DEVICE=cuda)` : 'using cpu (MEMGPT_DEVICE=cpu)');
  } else {
    const choice = chooseDevice(cudaStatus(), missingCudaKernels());
    defaultDev = choice.device;
    announce(choice.device === 'cuda' ? `using cuda (${choice.why})` : `using cpu: ${choice.why}`);
  }
  return defaultDev;
}

/**
 * Whether the CUDA kernels have passed their parity tests against the CPU on a GPU (bench/gpu/check.sh).
 * Until they have, a GPU is never the default: a user opts in with MEMGPT_DEVICE=cuda or --device cuda.
 * Flip this with the check's logs committed under bench/results/.
 */
export const cudaKernelsVerified = false;

/**
 * The default device for a CUDA status and the kernels its addon lacks, with why in words:
 * the announced line is `using cuda (why)` or `using cpu: why`.
 */
export function chooseDevice(status: CudaStatus, missingKernels: string[], verified = cudaKernelsVerified): { device: Device; why: string } {
  if (!status.available) return { device: 'cpu', why: `CUDA not used because ${status.reason}` };
  if (missingKernels.length > 0) {
    return {
      device: 'cpu',
      why: `CUDA (${status.reason}) not used because its addon lacks ${missingKernels.length} of the model's kernels ` +
        `(${missingKernels.join(', ')}); MEMGPT_DEVICE=cuda forces it`,
    };
  }
  if (!verified) {
    return {
      device: 'cpu',
      why: `CUDA (${status.reason}) not used by default: this release's CUDA kernels have not yet passed their GPU parity ` +
        'checks; MEMGPT_DEVICE=cuda or --device cuda opts in',
    };
  }
  return { device: 'cuda', why: status.reason };
}

// CPU-addon exports that only make sense on the CPU; every other one is a kernel the model may call.
const cpuOnlyExports = new Set(['info', 'setNumThreads', 'probePeakFlops', 'probeCopyBandwidth']);

/**
 * The kernels the CPU addon has and the CUDA addon does not: the CUDA backend is chosen by default
 * only when this is empty, so a GPU machine never picks a device that cannot train the model.
 */
export function missingCudaKernels(): string[] {
  const status = cudaStatus();
  // The probe loaded the addon in a child process, so loading it here is safe even without a GPU.
  if (!status.probe || !status.addonPath) return [];
  const cuda = (cudaAddon ?? require(status.addonPath)) as Record<string, unknown>;
  return Object.keys(cpuBackend()).filter((name) => !cpuOnlyExports.has(name) && typeof cuda[name] !== 'function');
}

export function setDefaultDevice(device: Device): void {
  backendFor(parseDevice(device, 'setDefaultDevice'));
  defaultDev = device;
}

/** Devices whose backend can run here (cpu always). */
export function availableDevices(): Device[] {
  return cudaStatus().available ? ['cpu', 'cuda'] : ['cpu'];
}

/** Threads of the CPU kernels (default: the cores this process may use; MEMGPT_NUM_THREADS overrides). */
export function setNumThreads(threads: number): void {
  if (!Number.isSafeInteger(threads) || threads < 1) throw new MemgptError(`setNumThreads: the thread count must be a whole number ≥ 1 (got ${threads})`);
  try {
    cpuBackend().setNumThreads(threads);
  } catch (e) {
    throw new MemgptError(`setNumThreads: ${(e as Error).message}`, { cause: e });
  }
}

/** Waits until every queued kernel on the device has finished (a no-op on the CPU, whose kernels are synchronous). */
export function synchronize(device: Device): void {
  if (device !== 'cuda') return;
  try {
    cudaBackend().synchronize();
  } catch (e) {
    // A failed kernel surfaces here on CUDA (asynchronous errors): one clear line, not the addon's raw Error.
    if (e instanceof MemgptError) throw e;
    throw new MemgptError(`cuda: ${(e as Error).message}`, { cause: e });
  }
}

export function numThreads(): number {
  return cpuBackend().info().threads;
}
