// `memgpt doctor`: what this install found — the addon builds present, the NVIDIA driver and GPUs,
// the CUDA runtime the addon carries, and which backend will be used and why. Never fails for a
// missing GPU or driver: saying why is the point.
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, relative } from 'node:path';

import { cpuEngineStatus } from '../parallel/group.js';
import { ncclStatus } from '../parallel/nccl.js';
import {
  chooseDevice, cpuBackend, cudaAddonPath, cudaKernelsVerified, cudaStatus, cudaVersionStr, missingCudaKernels, packageRoot, parseDevice,
  type CudaProbe, type Device,
} from '../native/backend.js';

export interface DoctorReport {
  memgpt: string;
  node: string;
  napi: string;
  platform: string;
  /** The CPU addon node-gyp-build loads, and every CPU build present. */
  cpu: { loaded: string | null; builds: string[]; threads?: number; simd?: string; error?: string };
  /** The CUDA addon file used (null: none present) and every CUDA build present. */
  cuda: {
    addon: string | null; builds: string[]; architectures?: string; runtime?: string;
    driver?: string; driverCuda?: string; gpus: { name: string; computeCapability: string; memoryGiB: number }[];
    usable: boolean; reason: string; missingKernels: string[];
    /** Whether this release's CUDA kernels passed their GPU parity checks (else CUDA is opt-in). */
    verified: boolean;
  };
  /** The device a plain run uses, and the line that says why. */
  backend: { device: Device | null; why: string };
  /** The collective engine of data-parallel training on the CPU, or why there is none. */
  parallel: { cpu: { available: boolean; detail: string }; cuda: { available: boolean; detail: string } };
}

const rel = (p: string) => relative(packageRoot, p) || p;

function builds(dir: string, match: (file: string) => boolean): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).filter(match).map((f) => rel(join(dir, f)));
}

// The kernel module's version line, e.g. "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15 ...".
function nvidiaDriverVersion(): string | undefined {
  try {
    return /Kernel Module\s+(\S+)/.exec(readFileSync('/proc/driver/nvidia/version', 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}

export function doctorReport(): DoctorReport {
  const require = createRequire(import.meta.url);
  const pkg = JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version: string };
  const tuple = `${process.platform}-${process.arch}`;

  const cpu: DoctorReport['cpu'] = {
    loaded: null,
    builds: [
      ...builds(join(packageRoot, 'prebuilds', tuple), (f) => f.endsWith('.node')),
      ...builds(join(packageRoot, 'build', 'Release'), (f) => f === 'memgpt_cpu.node'),
    ],
  };
  try {
    cpu.loaded = rel((require('node-gyp-build') as { path(dir: string): string }).path(packageRoot));
    const info = cpuBackend().info();
    cpu.threads = info.threads;
    cpu.simd = info.simd;
  } catch (e) {
    cpu.error = (e as Error).message.split('\n')[0];
  }

  const status = cudaStatus();
  const probe: CudaProbe | undefined = status.probe;
  const addon = cudaAddonPath();
  const cuda: DoctorReport['cuda'] = {
    addon: addon ? rel(addon) : null,
    builds: [
      ...builds(join(packageRoot, 'prebuilds', `${tuple}-cuda`), (f) => f === 'memgpt_cuda.node'),
      ...builds(join(packageRoot, 'build-cuda', 'Release'), (f) => f === 'memgpt_cuda.node'),
    ],
    architectures: probe?.architectures,
    runtime: probe ? cudaVersionStr(probe.runtimeVersion) : undefined,
    driver: nvidiaDriverVersion(),
    driverCuda: probe && probe.driverVersion > 0 ? cudaVersionStr(probe.driverVersion) : undefined,
    gpus: (probe?.devices ?? []).map((d) => ({ name: d.name, computeCapability: d.computeCapability, memoryGiB: d.totalMemory / 2 ** 30 })),
    usable: status.available,
    reason: status.reason,
    missingKernels: missingCudaKernels(),
    verified: cudaKernelsVerified,
  };

  let backend: DoctorReport['backend'];
  const forced = process.env.MEMGPT_DEVICE;
  if (forced) {
    try {
      const device = parseDevice(forced, 'MEMGPT_DEVICE');
      backend = device === 'cuda' && !status.available
        ? { device: null, why: `MEMGPT_DEVICE=cuda, but CUDA cannot be used: ${status.reason} (every run will fail)` }
        : { device, why: `MEMGPT_DEVICE=${device}` };
    } catch (e) {
      backend = { device: null, why: (e as Error).message };
    }
  } else {
    const choice = chooseDevice(status, cuda.missingKernels);
    backend = choice;
  }

  return {
    memgpt: pkg.version, node: process.version, napi: process.versions.napi ?? '?', platform: `${tuple} (${libc()})`,
    cpu, cuda, backend, parallel: { cpu: cpuEngineStatus(), cuda: ncclStatus() },
  };
}

function libc(): string {
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  const glibc = report?.header?.glibcVersionRuntime;
  return glibc ? `glibc ${glibc}` : 'musl or other libc';
}

export function formatDoctor(r: DoctorReport): string {
  const lines = [
    `memgpt ${r.memgpt} on Node.js ${r.node} (N-API ${r.napi}), ${r.platform}`,
    `CPU addon:    ${r.cpu.loaded ?? `cannot load: ${r.cpu.error}`}${r.cpu.threads ? ` (${r.cpu.threads} threads, ${r.cpu.simd})` : ''}`,
    `  builds:     ${r.cpu.builds.join(', ') || 'none'}`,
    `CUDA addon:   ${r.cuda.addon ?? 'none (not built: npm install builds it only where an NVIDIA driver is found, or with MEMGPT_BUILD_CUDA=1; npm run build:cuda builds it, with nvcc)'}` +
      (r.cuda.runtime ? ` (CUDA runtime ${r.cuda.runtime}, code for ${r.cuda.architectures})` : ''),
    `  builds:     ${r.cuda.builds.join(', ') || 'none'}`,
    `NVIDIA driver: ${r.cuda.driver ?? 'none found'}${r.cuda.driverCuda ? ` (supports CUDA ${r.cuda.driverCuda})` : ''}`,
    `GPUs:         ${r.cuda.gpus.map((g, i) => `${i}: ${g.name}, compute capability ${g.computeCapability}, ${g.memoryGiB.toFixed(1)} GiB`).join('; ') || 'none'}`,
    `CUDA usable:  ${r.cuda.usable ? 'yes' : 'no'} (${r.cuda.reason})`,
  ];
  if (r.cuda.addon && r.cuda.runtime) {
    lines.push(`CUDA kernels: ${r.cuda.missingKernels.length ? `${r.cuda.missingKernels.length} of the model's missing (${r.cuda.missingKernels.join(', ')})` : 'all the model uses'}` +
      `${r.cuda.verified ? '' : ', not yet verified on a GPU (opt in with MEMGPT_DEVICE=cuda)'}`);
  }
  lines.push(`Backend:      ${r.backend.device ?? 'none'} — ${r.backend.why}`);
  lines.push(`Data parallel: CPU ${r.parallel.cpu.available ? r.parallel.cpu.detail : `not available (${r.parallel.cpu.detail})`}`);
  lines.push(`  CUDA:       ${r.parallel.cuda.available ? `${r.parallel.cuda.detail}, not yet verified on GPUs (refused until then)` : `not available: ${r.parallel.cuda.detail}`}`);
  return lines.join('\n');
}
