#!/usr/bin/env node
// `npm run test:cuda-emu [-- FILTER…]`: builds the emulated CUDA addon from the current sources (incrementally),
// runs every CUDA test case on it (the "on cuda" cases of the test files, or of those matching FILTER: attention,
// linear, norm, memwrite, classifier, optim, …) on an emulated sm_80, the GEMM cases also on an emulated sm_90
// (TMA + wgmma, every tile plan), and prints which CUDA kernels ran, how often, and which never did.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { buildEmulatedAddon } from './build-cuda-emu.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const filters = process.argv.slice(2);

let addon;
try {
  addon = await buildEmulatedAddon();
} catch (e) {
  console.error(`memgpt: ${e.message}`);
  process.exit(1);
}

const report = join(tmpdir(), `memgpt-emu-launches-${process.pid}.jsonl`);
rmSync(report, { force: true });
const vitest = join(root, 'node_modules', 'vitest', 'vitest.mjs');
const vitestOn = (files, env) => spawnSync(process.execPath, [vitest, 'run', '-t', 'on cuda', ...files], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, MEMGPT_CUDA_ADDON: addon, MEMGPT_EMU_REPORT: report, ...env },
}).status;
// Every CUDA test case on the emulated sm_80 (mma.sync, cp.async); then the GEMM cases again on the emulated
// sm_90, where the bf16 GEMMs take the TMA + wgmma path, once per tile plan (chosen per shape, each width forced,
// and a forced split-K).
let status = vitestOn(filters, {});
if (filters.length === 0 || filters.some((f) => 'linear'.includes(f) || f.includes('linear'))) {
  for (const plan of ['', '128', '192', '256', '192x3']) {
    console.log(`\n== emulated sm_90 (TMA + wgmma), MEMGPT_LINEAR_WGMMA=${plan || '(chosen per shape)'}`);
    status ||= vitestOn(['test/linear.test.ts'], { MEMGPT_EMU_SM: '90', MEMGPT_LINEAR_WGMMA: plan });
  }
}

// Every kernel the CUDA sources define, by name, against what ran.
const defined = new Set();
for (const f of readdirSync(join(root, 'native', 'cuda'))) {
  if (!/\.(cu|cuh)$/.test(f)) continue;
  const text = readFileSync(join(root, 'native', 'cuda', f), 'utf8');
  for (const m of text.matchAll(/__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(/g)) defined.add(m[1]);
}
const counts = new Map();
if (existsSync(report)) {
  for (const line of readFileSync(report, 'utf8').split('\n').filter(Boolean)) {
    for (const [name, n] of Object.entries(JSON.parse(line))) counts.set(name, (counts.get(name) ?? 0) + n);
  }
  rmSync(report, { force: true });
}
const base = (name) => name.split(/[<\s[]/)[0];
const ran = new Set([...counts.keys()].map(base));
const listed = [...counts.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([name, n]) => `${name} ×${n}`);
console.log(`\nemulated CUDA kernels launched (${[...defined].filter((k) => ran.has(k)).length} of ${defined.size} kernels, ` +
  `${counts.size} instantiations): ${listed.join('; ')}`);
const never = [...defined].filter((k) => !ran.has(k)).sort();
console.log(never.length ? `never launched: ${never.join(', ')}` : 'every kernel in native/cuda was launched');
process.exit(status ?? 1);
