#!/usr/bin/env node
// Builds the emulated CUDA addon, build-cuda-emu/memgpt_cuda_emu.node: the same native/cuda and native/binding
// sources as the real CUDA addon, compiled by the host C++ compiler against the CUDA emulator (native/emu), so
// that every CUDA kernel runs on a machine without a GPU. Two things in CUDA sources are not C++, and this
// script rewrites them into copies under build-cuda-emu/gen (the sources themselves are never touched):
//   kernel<<<grid, block, shared, stream>>>(args)  →  ::mg_emu::launch<&kernel>(::mg_emu::LaunchDims(grid, …), args)
//   __shared__ T name[N];                           →  auto& name = ::mg_emu::shared_var<T[N]>(id);
//   extern __shared__ T name[];                     →  T* const name = static_cast<T*>(::mg_emu::shared_dynamic());
// Incremental: a copy is rewritten only when it would change, and an object is rebuilt only when one of the
// files it includes (from the compiler's dependency list) or the flags changed.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const defaultOut = join(root, 'build-cuda-emu');

/** The kernel expression that ends just before `at` (an identifier with template arguments) and where it starts. */
function kernelBefore(src, at) {
  let end = at;
  while (end > 0 && /\s/.test(src[end - 1])) end--;
  let j = end;
  if (src[j - 1] === '>') {
    let depth = 0;
    do {
      j--;
      if (src[j] === '>') depth++;
      else if (src[j] === '<') depth--;
    } while (depth > 0 && j > 0);
  }
  while (j > 0 && /[\w:]/.test(src[j - 1])) j--;
  return { start: j, end, text: src.slice(j, end) };
}

function newlines(text) {
  return '\n'.repeat((text.match(/\n/g) ?? []).length);
}

export function rewriteLaunches(src, file) {
  let result = '';
  let pos = 0;
  for (let at = src.indexOf('<<<'); at >= 0; at = src.indexOf('<<<', pos)) {
    const kernel = kernelBefore(src, at);
    const close = src.indexOf('>>>', at);
    if (!kernel.text || close < 0) throw new Error(`${file}: cannot parse the launch at offset ${at}`);
    const config = src.slice(at + 3, close);
    let open = close + 3;
    while (/\s/.test(src[open])) open++;
    if (src[open] !== '(') throw new Error(`${file}: a launch without arguments at offset ${at}`);
    let depth = 0;
    let end = open;
    do {
      if (src[end] === '(') depth++;
      else if (src[end] === ')') depth--;
      end++;
    } while (depth > 0 && end < src.length);
    const args = src.slice(open + 1, end - 1);
    // Line numbers stay those of the source: whatever newlines the rewrite drops are put back after it.
    const dropped = newlines(src.slice(kernel.end, at)) + newlines(src.slice(close, open));
    const rest = args.trim() ? `, ${args}` : '';
    // A kernel named with its template arguments is one function: launch<&K> knows its address and its exact
    // name. A bare name may be a template whose arguments the call deduces: a generic lambda makes that call.
    const launch = kernel.text.endsWith('>')
      ? `::mg_emu::launch<&${kernel.text}>(::mg_emu::LaunchDims(${config})${rest})`
      : `::mg_emu::launch_call(${JSON.stringify(kernel.text)}, __PRETTY_FUNCTION__, ::mg_emu::LaunchDims(${config}), ` +
        `[](const auto&... a) { ${kernel.text}(a...); }${rest})`;
    result += src.slice(pos, kernel.start) + launch + dropped;
    pos = end;
  }
  return result + src.slice(pos);
}

export function rewriteShared(src, idBase) {
  let id = idBase;
  src = src.replace(/extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w:<>]+(?:\s+[\w:<>]+)*?)\s+(\w+)\s*\[\s*\]\s*;/g,
    (_m, type, name) => `${type}* const ${name} = static_cast<${type}*>(::mg_emu::shared_dynamic());`);
  src = src.replace(/__shared__\s+(?:__align__\((\d+)\)\s+)?([\w:<>]+(?:\s+[\w:<>]+)*?)\s+(\w+)\s*((?:\[[^\]]+\])*)\s*;/g,
    (_m, align, type, name, dims) => `auto& ${name} = ::mg_emu::shared_var<${type}${dims}>(${id++}${align ? `, ${align}` : ''});`);
  return src;
}

function listFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? listFiles(join(dir, e.name)) : [join(dir, e.name)]);
}

function writeIfChanged(path, text) {
  if (existsSync(path) && readFileSync(path, 'utf8') === text) return;
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
}

/** Copies cudaDir into gen/native/cuda, rewritten; returns the .cu files to compile. */
function generate(cudaDir, gen) {
  const units = [];
  listFiles(cudaDir).sort().forEach((file, index) => {
    const rel = join('native', 'cuda', relative(cudaDir, file));
    let text = readFileSync(file, 'utf8');
    if (/\.(cu|cuh)$/.test(file)) text = rewriteShared(rewriteLaunches(text, rel), (index + 1) * 1000);
    const target = join(gen, rel);
    writeIfChanged(target, text);
    if (file.endsWith('.cu')) units.push(target);
  });
  return units;
}

function includeDirs() {
  const require = createRequire(join(root, 'package.json'));
  return [require('node-addon-api').include_dir.replace(/^"|"$/g, ''), require('node-api-headers').include_dir];
}

function flags(cudaDir) {
  return [
    '-std=c++17', '-O2', '-g1', '-fPIC', '-fvisibility=hidden', '-pthread',
    // No contraction into FMAs: the kernels' _rn intrinsics and the CPU reference both round every step.
    '-ffp-contract=off',
    '-Wall', '-Wextra', '-Wno-unused-parameter', '-Wno-unused-function', '-Wno-unused-variable', '-Wno-unknown-pragmas', '-Wno-sign-compare',
    // The emulator has the sm_90a code paths too (used when MEMGPT_EMU_SM=90 makes its device an sm_90).
    '-DMG_CUDA_EMU', '-D__CUDA_ARCH_FEAT_SM90_ALL', '-DMG_BACKEND_CUDA', '-DNAPI_VERSION=8', '-DNAPI_CPP_EXCEPTIONS',
    '-DNODE_ADDON_API_DISABLE_DEPRECATED', '-DMG_CUDA_ARCHITECTURES="emulated sm_80"',
    `-I${join(root, 'native', 'emu', 'include')}`,
    // The rewritten copies include "elem.cuh" (found next to them) and "../common/…" (found from the sources).
    `-iquote${cudaDir}`,
    `-iquote${join(root, 'native', 'cuda')}`,
    ...includeDirs().map((d) => `-I${d}`),
  ];
}

/** native_cuda_linear.cu.o for gen/native/cuda/linear.cu, native_binding_ops.cc.o for native/binding/ops.cc. */
function objectOf(source, out) {
  const gen = join(out, 'gen');
  const rel = source.startsWith(gen) ? relative(gen, source) : relative(root, source);
  return join(out, 'obj', `${rel.replace(/[\\/]/g, '_')}.o`);
}

/** Whether obj is missing or older than anything its dependency file names (or the flags stamp). */
function stale(obj, stampTime) {
  if (!existsSync(obj) || !existsSync(`${obj}.d`)) return true;
  const built = statSync(obj).mtimeMs;
  if (stampTime > built) return true;
  const deps = readFileSync(`${obj}.d`, 'utf8').replace(/\\\n/g, ' ').split(':').slice(1).join(':').trim().split(/\s+/);
  return deps.some((d) => d && (!existsSync(d) || statSync(d).mtimeMs > built));
}

function run(cmd, args) {
  return new Promise((resolvePromise) => {
    const child = spawn(cmd, args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
    child.on('error', (e) => resolvePromise({ ok: false, error: e.message }));
    child.on('close', (code) => resolvePromise({ ok: code === 0 }));
  });
}

/**
 * Builds (incrementally) and returns the addon's path. cudaDir: the CUDA sources (native/cuda, or a copy with a
 * planted bug, bench/cuda-emu-bugs.mjs); out: the build folder.
 */
export async function buildEmulatedAddon({ quiet = false, cudaDir = join(root, 'native', 'cuda'), out = defaultOut } = {}) {
  const cxx = process.env.CXX || 'g++';
  const gen = join(out, 'gen');
  const objDir = join(out, 'obj');
  const addon = join(out, 'memgpt_cuda_emu.node');
  const units = [
    ...generate(cudaDir, gen),
    ...['addon_cuda.cc', 'memory.cc', 'memory_cuda.cc', 'ops.cc', 'ops_linear.cc', 'ops_attention.cc', 'ops_norm.cc',
      'ops_classifier.cc', 'ops_memwrite.cc', 'ops_optim.cc', 'nccl_cuda.cc'].map((f) => join(root, 'native', 'binding', f)),
    join(root, 'native', 'emu', 'emu.cpp'),
    join(root, 'native', 'common', 'threadpool.cpp'),
  ];
  mkdirSync(objDir, { recursive: true });
  const cflags = flags(cudaDir);
  const stamp = join(objDir, 'flags.txt');
  const flagText = `${cxx} ${cflags.join(' ')}`;
  if (!existsSync(stamp) || readFileSync(stamp, 'utf8') !== flagText) writeFileSync(stamp, flagText);
  const stampTime = statSync(stamp).mtimeMs;
  const todo = units.filter((u) => stale(objectOf(u, out), stampTime));
  const jobs = Math.max(1, Number(process.env.MEMGPT_BUILD_JOBS) || availableParallelism());
  let failed = false;
  const queue = [...todo];
  const started = Date.now();
  await Promise.all(Array.from({ length: Math.min(jobs, queue.length) }, async () => {
    while (queue.length && !failed) {
      const unit = queue.shift();
      const obj = objectOf(unit, out);
      if (!quiet) console.error(`memgpt: emulated CUDA addon: compiling ${relative(root, unit)}`);
      const lang = /\.cu$/.test(unit) ? ['-x', 'c++'] : [];
      const r = await run(cxx, [...cflags, '-MMD', '-MF', `${obj}.d`, '-c', ...lang, unit, '-o', obj]);
      if (!r.ok) failed = true;
    }
  }));
  if (failed) throw new Error('the emulated CUDA addon did not compile (see above)');
  const objects = units.map((u) => objectOf(u, out));
  const linked = existsSync(addon) ? statSync(addon).mtimeMs : 0;
  if (todo.length || objects.some((o) => statSync(o).mtimeMs > linked)) {
    const r = await run(cxx, ['-shared', '-pthread', '-o', `${addon}.tmp`, ...objects, '-ldl']);
    if (!r.ok) throw new Error('the emulated CUDA addon did not link (see above)');
    renameSync(`${addon}.tmp`, addon);
  }
  if (!quiet) {
    console.error(`memgpt: emulated CUDA addon ${relative(root, addon)} ` +
      `(${todo.length} of ${units.length} files compiled, ${((Date.now() - started) / 1000).toFixed(1)} s)`);
  }
  return addon;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  buildEmulatedAddon().catch((e) => {
    console.error(`memgpt: ${e.message}`);
    process.exit(1);
  });
}

