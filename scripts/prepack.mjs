#!/usr/bin/env node
// Runs before `npm pack` / `npm publish`: refuses to make a package whose prebuilt addons are
// missing or older than the native sources, since users install it without a compiler. The CUDA
// addon may be left out only on purpose (MEMGPT_PACK_CPU_ONLY=1).
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const tuple = `${process.platform}-${process.arch}`;

// The newest file under paths, leaving out the other addon's entry points (native/binding holds both).
function newestSource(paths, skip) {
  let newest = { path: '', mtime: 0 };
  const visit = (path) => {
    const st = statSync(path);
    if (st.isDirectory()) for (const entry of readdirSync(path)) visit(join(path, entry));
    else if (st.mtimeMs > newest.mtime && !skip.some((name) => path.endsWith(name))) newest = { path, mtime: st.mtimeMs };
  };
  for (const p of paths) visit(join(root, p));
  return newest;
}

function check(what, file, sources, skip, buildCommand) {
  if (!file || !existsSync(file)) return `no prebuilt ${what} addon (run ${buildCommand})`;
  const newest = newestSource(sources, skip);
  if (statSync(file).mtimeMs < newest.mtime) {
    return `the prebuilt ${what} addon is older than ${relative(root, newest.path)} (run ${buildCommand})`;
  }
  console.error(`memgpt: packing ${relative(root, file)} (${(statSync(file).size / 1e6).toFixed(1)} MB)`);
  return undefined;
}

const cpuDir = join(root, 'prebuilds', tuple);
const cpuFile = existsSync(cpuDir) ? readdirSync(cpuDir).filter((f) => f.endsWith('.node')).map((f) => join(cpuDir, f))[0] : undefined;
const cudaFile = join(root, 'prebuilds', `${tuple}-cuda`, 'memgpt_cuda.node');
const problems = [check('CPU', cpuFile, ['binding.gyp', 'native/binding', 'native/common', 'native/cpu'], ['_cuda.cc'], 'npm run build:cpu')];
if (existsSync(cudaFile) || process.env.MEMGPT_PACK_CPU_ONLY !== '1') {
  problems.push(check('CUDA', cudaFile, ['CMakeLists.txt', 'native/binding', 'native/common', 'native/cuda'], ['_cpu.cc'], 'npm run build:cuda, or set MEMGPT_PACK_CPU_ONLY=1'));
} else {
  console.error('memgpt: packing without the CUDA addon (MEMGPT_PACK_CPU_ONLY=1)');
}
// The gloo addon (data parallel on the CPU) is shipped when built; without it users are told to build it.
const glooFile = join(root, 'prebuilds', `${tuple}-gloo`, 'memgpt_gloo.node');
if (existsSync(glooFile)) problems.push(check('gloo', glooFile, ['native/parallel'], [], 'npm run build:gloo'));
else console.error('memgpt: packing without the gloo addon (no libgloo-dev here): data-parallel training on the CPU will ask users to build it');
const errors = problems.filter(Boolean);
for (const e of errors) console.error(`memgpt: cannot pack: ${e}`);
process.exit(errors.length ? 1 : 0);
