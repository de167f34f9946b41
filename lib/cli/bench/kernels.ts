// Kernel microbenchmarks: every op family's cases (lib/cli/bench/ops/<family>.ts) at the small and base
// presets' shapes, plus the foundation ops, each with its median time and the % of this machine's
// measured ceiling: peak FMA GFLOP/s for compute-bound kernels, copy bandwidth for memory-bound ones.
// Run by `memgpt bench kernels` (lib/cli/bench/command.ts) and `npm run bench:kernels`.
import { cpus } from 'node:os';

import * as mg from '../../index.js';
import { cpuBackend, cudaBackend, synchronize } from '../../native/backend.js';
import * as attention from './ops/attention.js';
import * as classifier from './ops/classifier.js';
import * as decode from './ops/decode.js';
import * as linear from './ops/linear.js';
import * as memwrite from './ops/memwrite.js';
import * as norm from './ops/norm.js';
import * as optim from './ops/optim.js';
import type { BenchCase, Preset } from './types.js';

const families = [attention, classifier, decode, linear, memwrite, norm, optim];

export interface KernelBenchOptions {
  device: mg.Device;
  presets: Preset[];
  /** Only cases whose op name contains this. */
  only?: string;
  /** Called for a case that fails (its row is left out). */
  onError?: (message: string) => void;
}

export interface Row {
  preset: Preset | '-';
  op: string;
  shape: string;
  microseconds: number;
  rate: number | null;
  unit: 'GFLOP/s' | 'GB/s' | '';
  percentOfCeiling: number | null;
}

export interface KernelBenchResult {
  device: mg.Device;
  machine: string;
  ceilings: { gflops: number | null; gbs: number | null };
  rows: Row[];
}

/** The foundation ops (elementwise, sum, softmax, matmul) at the small preset's sizes. */
function foundationCases(): BenchCase[] {
  const n = 8 * 128 * 256;
  const cases: BenchCase[] = [];
  for (const [op, f] of [['add', mg.add], ['mul', mg.mul]] as const) {
    cases.push({ op, shape: `[${n}]`, bytes: 12 * n, setup: () => {
      const a = mg.randn([n], { seed: 1 }), b = mg.randn([n], { seed: 2 });
      return { run: () => f(a, b).dispose(), dispose: () => { a.dispose(); b.dispose(); } };
    } });
  }
  // The remaining foundation kernels: fill, affine (scale), cast, strided copy (permute).
  cases.push({ op: 'fill (zeros)', shape: `[${n}]`, bytes: 4 * n, setup: () => ({ run: () => mg.zeros([n]).dispose(), dispose: () => {} }) });
  cases.push({ op: 'scale', shape: `[${n}]`, bytes: 8 * n, setup: () => {
    const a = mg.randn([n], { seed: 1 });
    return { run: () => mg.scale(a, 0.5).dispose(), dispose: () => a.dispose() };
  } });
  cases.push({ op: 'cast float32→bfloat16', shape: `[${n}]`, bytes: 6 * n, setup: () => {
    const a = mg.randn([n], { seed: 1 });
    return { run: () => mg.cast(a, 'bfloat16').dispose(), dispose: () => a.dispose() };
  } });
  cases.push({ op: 'permute (strided copy)', shape: '[8,128,4,64]→[8,4,128,64]', bytes: 8 * n, setup: () => {
    const a = mg.randn([8, 128, 4, 64], { seed: 1 });
    return { run: () => mg.permute(a, [0, 2, 1, 3]).dispose(), dispose: () => a.dispose() };
  } });
  cases.push({ op: 'sum', shape: `[${n}]`, bytes: 4 * n, setup: () => {
    const a = mg.randn([n], { seed: 1 });
    return { run: () => mg.sum(a).dispose(), dispose: () => a.dispose() };
  } });
  cases.push({ op: 'softmax', shape: '[4096,128]', bytes: 8 * 4096 * 128, setup: () => {
    const x = mg.randn([4096, 128], { seed: 3 });
    return { run: () => mg.softmax(x).dispose(), dispose: () => x.dispose() };
  } });
  for (const [m, k, nn] of [[1024, 256, 768], [1024, 1024, 256], [1024, 1024, 1024]]) {
    for (const transB of [false, true]) {
      cases.push({ op: transB ? 'matmul (B transposed)' : 'matmul', shape: `${m}x${k} @ ${k}x${nn}`, flops: 2 * m * nn * k, setup: () => {
        const a = mg.randn([m, k], { seed: 4 }), b = mg.randn(transB ? [nn, k] : [k, nn], { seed: 5 });
        return { run: () => mg.matmul(a, b, { transB }).dispose(), dispose: () => { a.dispose(); b.dispose(); } };
      } });
    }
  }
  return cases;
}

/** Times every case on options.device (which becomes the default device while it runs). */
export function runKernelBench(options: KernelBenchOptions): KernelBenchResult {
  const { device } = options;
  mg.setDefaultDevice(device);
  // Written before every timed run on the CPU so that no case is timed with its data still in the
  // last-level cache from the run before (this VM's LLC can hold a whole small-preset optimizer state).
  const cacheFlush = device === 'cpu' ? new Float32Array(64 << 20) : null;
  let flushRound = 0;

  /** Median seconds of fn after one warm-up run: at least 3 timed runs, more while they total under 0.3 s. */
  const timeIt = (fn: () => void): number => {
    fn();
    synchronize(device);
    const samples: number[] = [];
    let measured = 0;
    while (samples.length < 3 || (measured < 0.3 && samples.length < 50)) {
      cacheFlush?.fill(++flushRound);
      const t0 = performance.now();
      fn();
      synchronize(device);
      const dt = (performance.now() - t0) / 1000;
      samples.push(dt);
      measured += dt;
    }
    samples.sort((a, b) => a - b);
    return samples[samples.length >> 1];
  };

  // On CUDA only the copy ceiling is probed: the matrix-unit peak comes from PyTorch's cuBLAS in the same run
  // (bench/torch_kernels.py), since this project links no BLAS.
  const ceilings = device === 'cpu'
    ? { gflops: cpuBackend().probePeakFlops(0.5) as number | null, gbs: cpuBackend().probeCopyBandwidth(256 << 20, 5) }
    : { gflops: null, gbs: cudaBackend().probeCopyBandwidth(1 << 30, 10) };

  const row = (preset: Row['preset'], c: BenchCase, seconds: number): Row => {
    const unit: Row['unit'] = c.flops ? 'GFLOP/s' : c.bytes ? 'GB/s' : '';
    const work = c.flops ?? c.bytes;
    const rate = work ? work / seconds / 1e9 : null;
    const ceiling = unit === 'GFLOP/s' ? ceilings.gflops : unit === 'GB/s' ? ceilings.gbs : null;
    return { preset, op: c.op, shape: c.shape, microseconds: seconds * 1e6, rate, unit, percentOfCeiling: rate && ceiling ? (100 * rate) / ceiling : null };
  };

  const rows: Row[] = [];
  const runCase = (preset: Row['preset'], c: BenchCase): void => {
    if (options.only && !c.op.includes(options.only)) return;
    // Grad mode stays on: forward+backward cases record a graph; forward-only cases make tensors without requiresGrad.
    const { run, dispose } = c.setup();
    try {
      rows.push(row(preset, c, timeIt(run)));
    } catch (e) {
      options.onError?.(`${c.op} ${c.shape}: ${(e as Error).message}`);
    } finally {
      dispose();
    }
  };
  for (const c of foundationCases()) runCase('-', c);
  for (const preset of options.presets) for (const f of families) for (const c of f.cases(preset)) runCase(preset, c);
  const machine = device === 'cpu' ? `${cpus()[0]?.model ?? 'unknown CPU'}, ${mg.numThreads()} threads` : mg.cudaStatus().reason;
  return { device, machine, ceilings, rows };
}

/** The human table of a kernel benchmark. */
export function formatKernelBench(r: KernelBenchResult): string {
  const lines = [`# ${r.device}: ${r.machine}; ceilings: ${r.ceilings.gflops?.toFixed(0) ?? '?'} GFLOP/s peak FMA, ${r.ceilings.gbs?.toFixed(1) ?? '?'} GB/s copy`];
  for (const row of r.rows) {
    const pct = row.percentOfCeiling === null ? '    -' : `${row.percentOfCeiling.toFixed(0).padStart(4)}%`;
    const rate = row.rate === null ? '' : `${row.rate.toFixed(1).padStart(8)} ${row.unit}`;
    lines.push(`${row.preset.padEnd(6)} ${row.op.padEnd(34)} ${row.shape.padEnd(30)} ${row.microseconds.toFixed(1).padStart(11)} us ${rate.padEnd(17)} ${pct}`);
  }
  return lines.join('\n');
}
