// Kernel microbenchmarks: every op family's cases (bench/ops/<family>.ts) at the
// small and base presets' shapes, plus the foundation ops, each with its median
// time and the % of this machine's measured ceiling: peak FMA GFLOP/s for
// compute-bound kernels, copy bandwidth for memory-bound ones.
// Usage: npx tsx bench/kernels.ts [--device cpu|cuda] [--preset small|base|all] [--only SUBSTRING] [--json]
import { readdirSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import * as mg from '../lib/index.js';
import { cpuBackend, synchronize } from '../lib/backend.js';
import type { BenchCase, Preset } from './ops/types.js';

const { values: flags } = parseArgs({
  options: { device: { type: 'string' }, preset: { type: 'string' }, only: { type: 'string' }, json: { type: 'boolean' } },
});
const device = flags.device ? (flags.device as mg.Device) : mg.defaultDevice();
mg.setDefaultDevice(device);
const presetsToRun: Preset[] = flags.preset === 'base' ? ['base'] : flags.preset === 'all' ? ['small', 'base'] : ['small'];

export interface Row {
  preset: Preset | '-';
  op: string;
  shape: string;
  microseconds: number;
  rate: number | null;
  unit: 'GFLOP/s' | 'GB/s' | '';
  percentOfCeiling: number | null;
}

// Written before every timed run on the CPU so that no case is timed with its data still in the
// last-level cache from the run before (this VM's LLC can hold a whole small-preset optimizer state).
const cacheFlush = device === 'cpu' ? new Float32Array(64 << 20) : null;
let flushRound = 0;

/** Median seconds of fn after one warm-up run: at least 3 timed runs, more while they total under 0.3 s. */
function timeIt(fn: () => void): number {
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
}

const ceilings = device === 'cpu'
  ? { gflops: cpuBackend().probePeakFlops(0.5), gbs: cpuBackend().probeCopyBandwidth(256 << 20, 5) }
  : { gflops: null as number | null, gbs: null as number | null }; // CUDA ceilings come with the CUDA kernels

function row(preset: Row['preset'], c: Pick<BenchCase, 'op' | 'shape' | 'flops' | 'bytes'>, seconds: number): Row {
  const unit: Row['unit'] = c.flops ? 'GFLOP/s' : c.bytes ? 'GB/s' : '';
  const work = c.flops ?? c.bytes;
  const rate = work ? work / seconds / 1e9 : null;
  const ceiling = unit === 'GFLOP/s' ? ceilings.gflops : unit === 'GB/s' ? ceilings.gbs : null;
  return { preset, op: c.op, shape: c.shape, microseconds: seconds * 1e6, rate, unit, percentOfCeiling: rate && ceiling ? (100 * rate) / ceiling : null };
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

async function familyCases(preset: Preset): Promise<BenchCase[]> {
  const dir = join(dirname(fileURLToPath(import.meta.url)), 'ops');
  const files = readdirSync(dir).filter((f) => f.endsWith('.ts') && f !== 'types.ts').sort();
  const all: BenchCase[] = [];
  for (const f of files) {
    const mod = (await import(join(dir, f))) as { cases?: (p: Preset) => BenchCase[] };
    if (mod.cases) all.push(...mod.cases(preset));
  }
  return all;
}

function runCase(preset: Row['preset'], c: BenchCase): Row | null {
  if (flags.only && !c.op.includes(flags.only)) return null;
  // Grad mode stays on: forward+backward cases record a graph; forward-only cases make tensors without requiresGrad.
  const { run, dispose } = c.setup();
  try {
    return row(preset, c, timeIt(run));
  } catch (e) {
    process.stderr.write(`${c.op} ${c.shape}: ${(e as Error).message}\n`);
    return null;
  } finally {
    dispose();
  }
}

const rows: Row[] = [];
for (const c of foundationCases()) {
  const r = runCase('-', c);
  if (r) rows.push(r);
}
for (const preset of presetsToRun) {
  for (const c of await familyCases(preset)) {
    const r = runCase(preset, c);
    if (r) rows.push(r);
  }
}

const machine = device === 'cpu' ? `${cpus()[0]?.model ?? 'unknown CPU'}, ${mg.numThreads()} threads` : mg.cudaStatus().reason;
if (flags.json) {
  console.log(JSON.stringify({ device, machine, ceilings, rows }, null, 2));
} else {
  console.log(`# ${device}: ${machine}; ceilings: ${ceilings.gflops?.toFixed(0) ?? '?'} GFLOP/s peak FMA, ${ceilings.gbs?.toFixed(1) ?? '?'} GB/s copy`);
  for (const r of rows) {
    const pct = r.percentOfCeiling === null ? '    -' : `${r.percentOfCeiling.toFixed(0).padStart(4)}%`;
    const rate = r.rate === null ? '' : `${r.rate.toFixed(1).padStart(8)} ${r.unit}`;
    console.log(`${r.preset.padEnd(6)} ${r.op.padEnd(28)} ${r.shape.padEnd(30)} ${r.microseconds.toFixed(1).padStart(11)} us ${rate.padEnd(17)} ${pct}`);
  }
}
