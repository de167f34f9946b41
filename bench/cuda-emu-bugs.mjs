#!/usr/bin/env node
// Plants bugs in copies of the CUDA sources, one at a time, builds each into the emulated addon and runs the CUDA
// test cases of the op family it touches: a planted bug the emulated tests do not fail is a hole in the emulator
// or in the tests. Writes bench/results/cuda-emu-bugs.json (what was planted, whether it was caught, the first
// failure). Usage: node bench/cuda-emu-bugs.mjs [--only NAME,…] [--out FILE] (--only reruns those and keeps the
// others' results in FILE)
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { buildEmulatedAddon } from '../scripts/build-cuda-emu.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

// Each bug: the file, the exact text it changes (which must occur exactly once), and the test files to run.
export const bugs = [
  {
    name: 'barrier-removed-gemm-f32', kind: 'a barrier removed', file: 'linear.cu',
    what: 'the fp32 GEMM stores the next K step into the other buffer with no barrier before the next step reads it',
    from: '      stash_f32<BK>(Bs[buf ^ 1], rb);\n    }\n    __syncthreads();\n',
    to: '      stash_f32<BK>(Bs[buf ^ 1], rb);\n    }\n',
    tests: ['test/linear.test.ts'],
  },
  {
    name: 'barrier-removed-attention', kind: 'a barrier removed', file: 'attention.cu',
    what: 'attention forward loads the values over the keys while other threads may still read the keys',
    from: '    __syncthreads();  // every thread is done reading the keys: kvs takes the values\n',
    to: '\n',
    tests: ['test/attention.test.ts'],
  },
  {
    name: 'barrier-removed-block-sum', kind: 'a barrier removed', file: 'elem.cuh',
    what: 'block_sum reads the per-warp partial sums before every warp has written its own',
    from: '  if (lane == 0) shared[warp] = v;\n  __syncthreads();\n',
    to: '  if (lane == 0) shared[warp] = v;\n',
    tests: ['test/norm.test.ts', 'test/ops.test.ts', 'test/optim.test.ts', 'test/memwrite.test.ts', 'test/classifier.test.ts'],
  },
  {
    name: 'warp-reduction-short', kind: 'a reduction cut short', file: 'elem.cuh',
    what: 'the float warp sum stops one butterfly early (lanes 0 and 1 are never added together)',
    from: '__device__ __forceinline__ float warp_sum(float v) {\n  for (int offset = 16; offset > 0; offset >>= 1)',
    to: '__device__ __forceinline__ float warp_sum(float v) {\n  for (int offset = 16; offset > 1; offset >>= 1)',
    tests: ['test/norm.test.ts', 'test/ops.test.ts', 'test/optim.test.ts', 'test/memwrite.test.ts', 'test/classifier.test.ts'],
  },
  {
    name: 'row-sum-short', kind: 'a reduction cut short', file: 'attention.cu',
    what: 'the 16-lane row sum of the attention tiles skips the widest butterfly',
    from: '  for (int offset = 8; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);',
    to: '  for (int offset = 4; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);',
    tests: ['test/attention.test.ts'],
  },
  {
    name: 'ldmatrix-row-off', kind: 'a fragment row or column index off', file: 'linear.cu',
    what: 'the bf16 GEMM hands lanes 8-15 the ldmatrix row addresses of lanes 0-7 (A rows 8-15 never read)',
    from: '  const int a_mn = AK ? (lane & 15) : ((lane >> 3) & 1) * 8;',
    to: '  const int a_mn = AK ? (lane & 7) : ((lane >> 3) & 1) * 8;',
    tests: ['test/linear.test.ts'],
  },
  {
    name: 'mma-fragment-row-off', kind: 'a fragment row or column index off', file: 'attention.cu',
    what: 'attention builds the upper half of each A fragment from row g + 7 instead of g + 8',
    from: '  const float* p1 = p0 + 8 * ld;',
    to: '  const float* p1 = p0 + 7 * ld;',
    tests: ['test/attention.test.ts'],
  },
  {
    name: 'epilogue-column-off', kind: 'a fragment row or column index off', file: 'linear.cu',
    what: 'the bf16 GEMM epilogue writes each accumulator pair one column pair to the left for odd quads',
    from: '  const int g = lane >> 2, c2 = (lane & 3) * 2;',
    to: '  const int g = lane >> 2, c2 = (lane & 2) * 2;',
    tests: ['test/linear.test.ts'],
  },
  {
    name: 'cp-async-not-waited', kind: 'a cp.async group not waited for', file: 'linear.cu',
    what: 'the bf16 GEMM waits for one cp.async group too few, so the stage it reads has not landed',
    from: '    cp_async_wait<kStages - 2>();',
    to: '    cp_async_wait<kStages - 1>();',
    tests: ['test/linear.test.ts'],
  },
  {
    name: 'split-k-overlap', kind: 'overlapping split-K partitions', file: 'linear.cu',
    what: 'each fp32 split-K partition runs one K step into the next partition, so that step is summed twice',
    from: 'const int64_t k_begin = int64_t(blockIdx.z) * k_chunk, k_end = min(K, k_begin + k_chunk);\n  const int64_t ksteps',
    to: 'const int64_t k_begin = int64_t(blockIdx.z) * k_chunk, k_end = min(K, k_begin + k_chunk + kFBK);\n  const int64_t ksteps',
    tests: ['test/linear.test.ts'],
  },
  {
    name: 'online-softmax-min', kind: 'a min where a max belongs', file: 'attention.cu',
    what: "attention's online softmax keeps the running minimum of the scores instead of the maximum",
    from: '    const float m_new = fmaxf(m[i], mx);',
    to: '    const float m_new = fminf(m[i], mx);',
    tests: ['test/attention.test.ts'],
  },
  {
    name: 'pointer-softmax-min', kind: 'a min where a max belongs', file: 'memwrite.cu',
    what: "the memory write's pointer softmax shifts its scores by the row minimum instead of the maximum",
    from: '  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));',
    to: '  for (int offset = 16; offset > 0; offset >>= 1) v = fminf(v, __shfl_xor_sync(kFullMask, v, offset));',
    tests: ['test/memwrite.test.ts'],
  },
  {
    name: 'layernorm-bound-off-by-one', kind: 'a bound off by one', file: 'norm.cu',
    what: "layer norm's cached forward loads one vector past the end of each row into the mean",
    from: '      if (k < nvec) {\n        load_vec<V>(xr + k * V, v[c]);',
    to: '      if (k <= nvec) {\n        load_vec<V>(xr + k * V, v[c]);',
    tests: ['test/norm.test.ts'],
  },
  {
    name: 'collective-not-reached', kind: 'a warp collective that not every lane reaches', file: 'memwrite.cu',
    what: "lane 31 skips the pointer softmax's warp max, which the other lanes wait in with a full mask",
    from: '    mx = warp_max(mx);\n    double total = 0;',
    to: '    if (lane < 31) mx = warp_max(mx);\n    double total = 0;',
    tests: ['test/memwrite.test.ts'],
  },
  {
    name: 'store-bound-removed', kind: 'an out-of-bounds store', file: 'linear.cu',
    what: "the GEMM epilogue stops checking rows: a tile's rows past M are written past the end of C",
    from: '  if (i >= ep.rows || j >= ep.cols) return;',
    to: '  if (j >= ep.cols) return;',
    tests: ['test/linear.test.ts'],
  },
  {
    name: 'bf16-truncation', kind: 'wrong rounding', file: 'elem.cuh',
    what: 'float32 → bfloat16 truncates instead of rounding to nearest even',
    from: '  u += 0x7fffu + ((u >> 16) & 1u);',
    to: '',
    tests: ['test/ops.test.ts', 'test/norm.test.ts'],
  },
  {
    name: 'descriptor-swizzle-64b', kind: 'a wrong swizzle bit', file: 'linear.cu',
    what: "the Hopper GEMM's wgmma descriptors say 64-byte swizzle (layout 2) for tiles TMA wrote with the 128-byte one",
    from: '(uint64_t((sbo & 0x3FFFF) >> 4) << 32) | (uint64_t(1) << 62);',
    to: '(uint64_t((sbo & 0x3FFFF) >> 4) << 32) | (uint64_t(2) << 62);',
    tests: ['test/linear.test.ts'], env: { MEMGPT_EMU_SM: '90' },
  },
  {
    name: 'wgmma-not-waited', kind: 'an asynchronous group not waited for', file: 'linear.cu',
    what: "the Hopper GEMM's consumers run the epilogue without waiting for the last K step's wgmma group",
    from: '      wgmma_wait<0>();\n',
    to: '\n',
    tests: ['test/linear.test.ts'], env: { MEMGPT_EMU_SM: '90' },
  },
  {
    name: 'mbarrier-wrong-parity', kind: 'a wrong mbarrier phase', file: 'linear.cu',
    what: "the Hopper GEMM's producer waits on the parity of the current lap of a stage's empty barrier, not the last",
    from: '          mbar_wait(empty_bar(stage), phase ^ 1);',
    to: '          mbar_wait(empty_bar(stage), phase);',
    tests: ['test/linear.test.ts'], env: { MEMGPT_EMU_SM: '90' },
  },
];

function plant(dir, bug) {
  const path = join(dir, bug.file);
  const text = readFileSync(path, 'utf8');
  const count = text.split(bug.from).length - 1;
  if (count !== 1) throw new Error(`${bug.name}: the text to change occurs ${count} times in ${bug.file}`);
  writeFileSync(path, text.replace(bug.from, bug.to));
}

function firstFailure(output) {
  const line = output.split('\n').find((l) => /AssertionError|Error:|FAIL /.test(l));
  return line ? line.trim().slice(0, 300) : undefined;
}

async function main() {
  const args = process.argv.slice(2);
  const only = args.includes('--only') ? args[args.indexOf('--only') + 1].split(',') : undefined;
  const outFile = args.includes('--out') ? args[args.indexOf('--out') + 1] : join(root, 'bench', 'results', 'cuda-emu-bugs.json');
  const chosen = bugs.filter((b) => !only || only.includes(b.name));
  const work = join(tmpdir(), `memgpt-cuda-bugs-${process.pid}`);
  const cudaDir = join(work, 'native', 'cuda');
  const out = join(root, 'build-cuda-emu-bugs');  // kept between runs: each bug recompiles only its file
  const vitest = join(root, 'node_modules', 'vitest', 'vitest.mjs');
  const results = [];
  mkdirSync(work, { recursive: true });
  try {
    for (const bug of chosen) {
      rmSync(cudaDir, { recursive: true, force: true });
      cpSync(join(root, 'native', 'cuda'), cudaDir, { recursive: true });
      plant(cudaDir, bug);
      const started = Date.now();
      const addon = await buildEmulatedAddon({ quiet: true, cudaDir, out });
      const run = spawnSync(process.execPath, [vitest, 'run', '-t', 'on cuda', ...bug.tests], {
        cwd: root, encoding: 'utf8', timeout: 900_000,
        env: { ...process.env, ...bug.env, MEMGPT_CUDA_ADDON: addon, NO_COLOR: '1' },
      });
      const output = `${run.stdout ?? ''}\n${run.stderr ?? ''}`.replace(/\x1b\[[0-9;]*m/g, '');
      const failed = Number(/Tests\s+(\d+) failed/.exec(output)?.[1] ?? 0);
      const caught = run.status !== 0;
      results.push({
        name: bug.name, kind: bug.kind, file: `native/cuda/${bug.file}`, what: bug.what, tests: bug.tests,
        caught, failedTests: failed, timedOut: run.error?.code === 'ETIMEDOUT', firstFailure: caught ? firstFailure(output) : undefined,
        seconds: Math.round((Date.now() - started) / 100) / 10,
      });
      console.error(`${caught ? 'caught ' : 'MISSED '} ${bug.name}: ${failed} failing tests (${results.at(-1).seconds} s)`);
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  // With --only, the other bugs' entries of an existing results file are kept (a rerun of some).
  if (only && existsSync(outFile)) {
    const earlier = JSON.parse(readFileSync(outFile, 'utf8')).results ?? [];
    const byName = new Map([...earlier, ...results].map((r) => [r.name, r]));
    results.splice(0, results.length, ...bugs.map((b) => byName.get(b.name)).filter(Boolean));
  }
  const caught = results.filter((r) => r.caught).length;
  const kinds = [...new Set(results.map((r) => r.kind))];
  const report = {
    benchmark: 'cuda-emu-bugs',
    date: new Date().toISOString(),
    machine: `${cpus().length} × ${cpus()[0]?.model ?? 'CPU'}`,
    planted: results.length, caught, kinds: kinds.length,
    results,
  };
  mkdirSync(dirname(outFile), { recursive: true });
  writeFileSync(`${outFile}.tmp`, `${JSON.stringify(report, null, 2)}\n`);
  renameSync(`${outFile}.tmp`, outFile);
  console.log(`planted ${results.length} bugs of ${kinds.length} kinds; the emulated CUDA tests caught ${caught} (${outFile})`);
}

main().catch((e) => {
  console.error(`memgpt: ${e.message}`);
  process.exit(1);
});
