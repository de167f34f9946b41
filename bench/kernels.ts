// Microbenchmarks of the foundation kernels (elementwise, sum, softmax,
// matmul): median time over repetitions and the % of this machine's measured
// ceiling — peak FMA GFLOP/s for matmul, copy bandwidth for the memory-bound ops.
// Usage: npx tsx bench/kernels.ts [--device cpu|cuda] [--json]
import { parseArgs } from 'node:util';
import { cpus } from 'node:os';

import * as mg from '../lib/index.js';
import { cpuBackend, synchronize } from '../lib/backend.js';

const { values: flags } = parseArgs({ options: { device: { type: 'string' }, json: { type: 'boolean' } } });
const device = flags.device ? (flags.device as mg.Device) : mg.defaultDevice();
mg.setDefaultDevice(device);

interface Row {
  op: string;
  shape: string;
  microseconds: number;
  rate: number;
  unit: 'GFLOP/s' | 'GB/s';
  percentOfCeiling: number | null;
}

function timeIt(fn: () => void, minSeconds = 0.3): number {
  fn();
  synchronize(device);
  const samples: number[] = [];
  const start = performance.now();
  while (samples.length < 5 || (performance.now() - start < minSeconds * 1000 && samples.length < 200)) {
    const t0 = performance.now();
    fn();
    synchronize(device);
    samples.push(performance.now() - t0);
  }
  samples.sort((a, b) => a - b);
  return samples[samples.length >> 1] / 1000;
}

const ceilings = device === 'cpu'
  ? { gflops: cpuBackend().probePeakFlops(0.5), gbs: cpuBackend().probeCopyBandwidth(256 << 20, 5) }
  : { gflops: null, gbs: null }; // the CUDA ceilings come with the CUDA kernels' benchmark

const rows: Row[] = [];
function record(op: string, shape: string, seconds: number, work: number, unit: Row['unit']) {
  const rate = work / seconds / 1e9;
  const ceiling = unit === 'GFLOP/s' ? ceilings.gflops : ceilings.gbs;
  rows.push({ op, shape, microseconds: seconds * 1e6, rate, unit, percentOfCeiling: ceiling ? (100 * rate) / ceiling : null });
}

mg.noGrad(() => {
  // Elementwise and reductions at the small preset's activation size (batch 8 x 128 tokens x 256 wide) and larger.
  for (const n of [8 * 128 * 256, 1 << 24]) {
    mg.tidy(() => {
      const a = mg.randn([n], { seed: 1 }), b = mg.randn([n], { seed: 2 });
      record('add', `[${n}]`, timeIt(() => mg.add(a, b).dispose()), 12 * n, 'GB/s');
      record('mul', `[${n}]`, timeIt(() => mg.mul(a, b).dispose()), 12 * n, 'GB/s');
      record('sum', `[${n}]`, timeIt(() => mg.sum(a).dispose()), 4 * n, 'GB/s');
    });
  }
  for (const [rows_, cols] of [[8 * 4 * 128, 128], [8 * 128, 50257 >> 3]]) {
    mg.tidy(() => {
      const x = mg.randn([rows_, cols], { seed: 3 });
      record('softmax', `[${rows_},${cols}]`, timeIt(() => mg.softmax(x).dispose()), 8 * rows_ * cols, 'GB/s');
    });
  }
  // GEMMs at the small preset's shapes: tokens x width @ width x (3·width | 4·width), and a square one.
  for (const [m, k, n] of [[1024, 256, 768], [1024, 256, 1024], [1024, 1024, 256], [1024, 1024, 1024]]) {
    mg.tidy(() => {
      const a = mg.randn([m, k], { seed: 4 }), b = mg.randn([k, n], { seed: 5 }), bt = mg.transpose(b);
      record('matmul', `${m}x${k} @ ${k}x${n}`, timeIt(() => mg.matmul(a, b).dispose()), 2 * m * n * k, 'GFLOP/s');
      record('matmul transB', `${m}x${k} @ (${n}x${k})ᵀ`, timeIt(() => mg.matmul(a, bt, { transB: true }).dispose()), 2 * m * n * k, 'GFLOP/s');
    });
  }
});

const machine = device === 'cpu' ? `${cpus()[0]?.model ?? 'unknown CPU'}, ${mg.numThreads()} threads` : mg.cudaStatus().reason;
if (flags.json) {
  console.log(JSON.stringify({ device, machine, ceilings, rows }, null, 2));
} else {
  console.log(`# ${device}: ${machine}; ceilings: ${ceilings.gflops?.toFixed(0) ?? '?'} GFLOP/s peak FMA, ${ceilings.gbs?.toFixed(1) ?? '?'} GB/s copy`);
  for (const r of rows) {
    const pct = r.percentOfCeiling === null ? '   -' : `${r.percentOfCeiling.toFixed(0).padStart(3)}%`;
    console.log(`${r.op.padEnd(15)} ${r.shape.padEnd(26)} ${r.microseconds.toFixed(1).padStart(10)} us ${r.rate.toFixed(1).padStart(8)} ${r.unit.padEnd(7)} ${pct}`);
  }
}
