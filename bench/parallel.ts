// Data parallel on the CPU (gloo over loopback): the all-reduce bandwidth of memgpt's gradient sums against gloo's
// own all-reduce timed in C++ (native/parallel/allreduce_bench.cc; Debian ships gloo without its benchmark), and
// the scaling of `memgpt train` from 1 rank to 2. Bandwidths are the bus bandwidth of nccl-tests: bytes × 2(W−1)/W
// over the time of one call, the data each rank sends and receives. Results: bench/results/parallel-cpu.json.
// Usage: npx tsx bench/parallel.ts [--ranks 2] [--repeats 30] [--rounds 5] [--steps 40] [--out FILE]
// Each bandwidth is the median of --rounds rounds (5; engine and memgpt alternated), each the median of --repeats calls.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { ProcessGroup, rankFromEnv } from '../lib/parallel/group.js';
import { GradientAllReduce } from '../lib/parallel/data-parallel.js';
import { freePort } from '../lib/parallel/launch.js';
import { MemGPT } from '../lib/nn/model.js';
import { presets } from '../lib/nn/config.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { values: flags } = parseArgs({
  options: {
    ranks: { type: 'string', default: '2' },
    repeats: { type: 'string', default: '30' },
    steps: { type: 'string', default: '40' },
    rounds: { type: 'string', default: '5' },
    out: { type: 'string', default: join(root, 'bench', 'results', 'parallel-cpu.json') },
    worker: { type: 'string' },  // internal: this process is a rank timing `--worker buffer|gradients`
    elements: { type: 'string' },
  },
});
const repeats = Number(flags.repeats);
const sizes = [16_384, 262_144, 1_048_576, 4_194_304, 6_553_600];  // float32 elements: 64 KiB … 25 MiB (DDP's bucket)

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** A rank's part: the median seconds of one sum of `elements` floats (a plain buffer, or a model's gradients). */
function worker(kind: string, elements: number): void {
  const group = ProcessGroup.join(rankFromEnv(), 60);
  const times: number[] = [];
  let bytes = elements * 4;
  if (kind === 'buffer') {
    const buffer = new Float32Array(elements).fill(1);
    for (let i = 0; i < repeats + 2; i++) {
      const t0 = performance.now();
      group.allreduce(buffer);
      if (i >= 2) times.push((performance.now() - t0) / 1000);
    }
  } else {
    // The small preset's gradients through GradientAllReduce, as a training step sums them.
    const model = MemGPT.init(presets.small, { seed: 0 });
    const params = [...model.params.values()];
    const sum = new GradientAllReduce(group, params);
    sum.prepare();  // the gradients become views of the buckets, as in training
    bytes = sum.bucketBytes.reduce((a, b) => a + b, 0);
    for (let i = 0; i < repeats + 2; i++) {
      group.barrier();
      const t0 = performance.now();
      sum.sum();
      if (i >= 2) times.push((performance.now() - t0) / 1000);
    }
    if (group.rank === 0) console.error(`buckets: ${sum.bucketBytes.map((b) => (b / 2 ** 20).toFixed(2)).join(', ')} MiB`);
  }
  group.barrier();
  if (group.rank === 0) console.log(JSON.stringify({ seconds: median(times), bytes }));
  group.close();
}


/** Runs W copies of a command as ranks; rank 0's stdout. */
async function ranks(W: number, command: string, args: (rank: number, port: number) => string[], env: Record<string, string> = {}): Promise<string> {
  const port = await freePort();
  const outputs = await Promise.all(Array.from({ length: W }, (_, r) => new Promise<string>((res, rej) => {
    const child = spawn(command, args(r, port), {
      env: { ...process.env, RANK: String(r), WORLD_SIZE: String(W), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), MEMGPT_NUM_THREADS: '1', ...env },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('exit', (code) => (code === 0 ? res(out) : rej(new Error(`${command} rank ${r} exited with ${code}`))));
  })));
  return outputs[0];
}

const busBandwidth = (bytes: number, seconds: number, W: number) => (bytes * 2 * (W - 1)) / W / seconds / 1e9;

async function main(): Promise<void> {
  const W = Number(flags.ranks);
  // gloo's own all-reduce, compiled here against the same headers.
  const engineBench = join(mkdtempSync(join(tmpdir(), 'memgpt-allreduce-')), 'allreduce_bench');
  execFileSync('g++', ['-O2', '-std=c++17', `-I${join(root, 'native', 'parallel')}`, join(root, 'native', 'parallel', 'allreduce_bench.cc'),
    '-l:libgloo.so.0', '-pthread', '-o', engineBench], { stdio: 'inherit' });
  const self = [...process.execArgv, fileURLToPath(import.meta.url), '--repeats', String(repeats)];
  const rows = [];
  const rounds = Number(flags.rounds);  // engine and memgpt alternated, so that a noisy neighbour hits both alike
  const engineRun = async (elements: number) => Number(await ranks(W, engineBench, (r, port) => [String(r), String(W), String(port), String(elements), String(repeats)]));
  const oursRun = async (kind: string, elements = 0) => JSON.parse(await ranks(W, process.execPath, () => [...self, '--worker', kind, '--elements', String(elements)])) as { seconds: number; bytes: number };
  for (const elements of sizes) {
    const engine: number[] = [], ours: number[] = [];
    for (let round = 0; round < rounds; round++) {
      engine.push(await engineRun(elements));
      ours.push((await oursRun('buffer', elements)).seconds);
    }
    const row = {
      bytes: elements * 4, engineSeconds: median(engine), memgptSeconds: median(ours), engineRounds: engine, memgptRounds: ours,
      engineBusGBs: busBandwidth(elements * 4, median(engine), W), memgptBusGBs: busBandwidth(elements * 4, median(ours), W),
      memgptOfEngine: median(engine) / median(ours),
    };
    console.error(`all-reduce ${(row.bytes / 2 ** 20).toFixed(2)} MiB: gloo ${row.engineBusGBs.toFixed(2)} GB/s, memgpt ${row.memgptBusGBs.toFixed(2)} GB/s (${(row.memgptOfEngine * 100).toFixed(0)}%)`);
    rows.push(row);
  }
  // The small preset's gradients (one 20 MiB bucket), as a training step sums them.
  const gradRounds: number[] = [], gradEngineRounds: number[] = [];
  let gradBytes = 0;
  for (let round = 0; round < rounds; round++) {
    const g = await oursRun('gradients');
    gradBytes = g.bytes;
    gradRounds.push(g.seconds);
    gradEngineRounds.push(await engineRun(g.bytes / 4));
  }
  const gradients = {
    what: 'the small preset\'s gradients, summed by GradientAllReduce as a training step does (on the CPU the gradients are views of the buckets, summed where they lie)',
    bytes: gradBytes, memgptSeconds: median(gradRounds), engineSeconds: median(gradEngineRounds), memgptRounds: gradRounds, engineRounds: gradEngineRounds,
    memgptBusGBs: busBandwidth(gradBytes, median(gradRounds), W), engineBusGBs: busBandwidth(gradBytes, median(gradEngineRounds), W),
    memgptOfEngine: median(gradEngineRounds) / median(gradRounds),
  };
  console.error(`gradients ${(gradBytes / 2 ** 20).toFixed(2)} MiB: gloo ${gradients.engineBusGBs.toFixed(2)} GB/s, memgpt ${gradients.memgptBusGBs.toFixed(2)} GB/s (${(gradients.memgptOfEngine * 100).toFixed(0)}%)`);

  // Scaling: `memgpt train` (tiny preset) on 1 rank and on W ranks, one thread each, the same batch a rank.
  const data = join(tmpdir(), 'memgpt-parallel-bench.txt');
  writeFileSync(data, spawnSync('sh', ['-c', 'cat /usr/share/common-licenses/*'], { encoding: 'utf8' }).stdout.repeat(4));
  const train = (nproc: number, threads: number) => new Promise<number>((res, rej) => {
    const out = mkdtempSync(join(tmpdir(), 'memgpt-parallel-run-'));
    const args = [join(root, 'bin', 'memgpt.js'), 'train', '--preset', 'tiny', '--data', data, '--out', out, '--steps', flags.steps!, '--log-every', '1', '--json', '--held-out', '0'];
    if (nproc > 1) args.push('--nproc-per-node', String(nproc));
    const child = spawn(process.execPath, args, { env: { ...process.env, MEMGPT_NUM_THREADS: String(threads), MEMGPT_DEVICE: 'cpu' }, stdio: 'ignore' });
    child.on('exit', (code) => {
      if (code !== 0) return rej(new Error(`memgpt train exited with ${code}`));
      const rows = readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; tokensPerSecond: number; syncSeconds?: number })
        .filter((e) => e.step > 5);
      if (nproc > 1) {
        // The share of a step spent in the sums (the slowest rank's wait included), from rank 0's log.
        const tokensPerStep = 8 * nproc * 4 * 32;
        syncShares.push(median(rows.map((e) => (e.syncSeconds ?? 0) / (tokensPerStep / e.tokensPerSecond))));
      }
      res(median(rows.map((e) => e.tokensPerSecond)));
    });
  });
  const syncShares: number[] = [];
  const scaling = { oneRankOneThread: [] as number[], ranksOneThreadEach: [] as number[], oneRankAllThreads: [] as number[], independentRunsAtOnce: [] as number[] };
  for (let round = 0; round < 3; round++) {  // alternated, so that a noisy neighbour hits all four alike
    scaling.oneRankOneThread.push(await train(1, 1));
    scaling.ranksOneThreadEach.push(await train(W, 1));
    scaling.oneRankAllThreads.push(await train(1, W));
    // W unrelated single-thread runs side by side: what this machine's cores give W processes with no communication.
    scaling.independentRunsAtOnce.push((await Promise.all(Array.from({ length: W }, () => train(1, 1)))).reduce((a, b) => a + b, 0));
  }
  const one = median(scaling.oneRankOneThread), many = median(scaling.ranksOneThreadEach);
  const result = {
    bench: 'parallel', engine: 'gloo 0.5.0 (Debian libgloo0), TCP over loopback', ranks: W,
    machine: { cpu: cpus()[0]?.model, cores: cpus().length, note: 'shared VM; every rank one thread' },
    allreduce: rows, gradients,
    scaling: {
      what: `memgpt train --preset tiny, batch 8 a rank, median tokens/s of steps 6-${flags.steps}; three rounds alternated`,
      tokensPerSecond: scaling, efficiency: many / (W * one),
      ofIndependentRuns: many / median(scaling.independentRunsAtOnce),
      syncShareOfStep: median(syncShares),
      oneRankAllThreadsTokensPerSecond: median(scaling.oneRankAllThreads),
      independentRunsAtOnceTokensPerSecond: median(scaling.independentRunsAtOnce),
    },
    date: new Date().toISOString(),
  };
  console.error(`scaling: 1 rank ${one.toFixed(0)} tok/s, ${W} ranks ${many.toFixed(0)} tok/s: ${(result.scaling.efficiency * 100).toFixed(0)}% efficiency; ` +
    `${W} independent runs at once ${result.scaling.independentRunsAtOnceTokensPerSecond.toFixed(0)} tok/s in all (${W} ranks make ${(result.scaling.ofIndependentRuns * 100).toFixed(0)}% of that); ` +
    `${(result.scaling.syncShareOfStep * 100).toFixed(1)}% of a step in the sums`);
  writeFileSync(`${flags.out}.partial`, JSON.stringify(result, null, 2) + '\n');
  renameSync(`${flags.out}.partial`, flags.out!);
  console.error(`wrote ${flags.out}`);
}

if (flags.worker) worker(flags.worker, Number(flags.elements ?? 0));
else await main();
