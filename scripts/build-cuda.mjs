#!/usr/bin/env node
// Builds the optional CUDA addon (build-cuda/Release/memgpt_cuda.node) with
// cmake-js and nvcc, and puts a stripped copy in prebuilds/linux-x64-cuda/, the
// prebuilt binary `npm pack` ships (a folder node-gyp-build never looks in, so it
// cannot mistake it for the CPU addon). cmake-js uses the node-api-headers package
// because package.json declares "binary": {"napi_versions": [...]}, so nothing is
// downloaded. With --if-available a machine without nvcc or cmake is not an
// error: it gets the CPU addon only; and it builds only where an NVIDIA driver is
// installed (a GPU to run it on), or when MEMGPT_BUILD_CUDA=1 asks (0 never builds):
// compiling it took a fresh install on a machine without a GPU from 2 to 12 minutes.
// With --if-missing (the npm install hook) a prebuilt CUDA addon already present is kept.
import { spawnSync } from 'node:child_process';
import { accessSync, constants, copyFileSync, existsSync, mkdirSync, renameSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const ifAvailable = process.argv.includes('--if-available');
const built = join(root, 'build-cuda', 'Release', 'memgpt_cuda.node');
const prebuilt = join(root, 'prebuilds', `${process.platform}-${process.arch}-cuda`, 'memgpt_cuda.node');

function executable(path) {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

function onPath(name) {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && executable(join(dir, name))) return join(dir, name);
  }
  return undefined;
}

// nvcc from PATH, then $CUDA_HOME/bin, then the usual install prefix.
function findNvcc() {
  const candidates = [onPath('nvcc')];
  if (process.env.CUDA_HOME) candidates.push(join(process.env.CUDA_HOME, 'bin', 'nvcc'));
  candidates.push('/usr/local/cuda/bin/nvcc');
  return candidates.find((p) => p && executable(p));
}

function unavailable(what) {
  console.error(`memgpt: ${what} not found; the CUDA addon was not built (CPU only)`);
  process.exit(ifAvailable ? 0 : 1);
}

if (process.argv.includes('--if-missing') && existsSync(prebuilt)) process.exit(0);

// Whether this machine has an NVIDIA driver: its kernel module, or its user-space library.
function hasNvidiaDriver() {
  if (existsSync('/proc/driver/nvidia/version') || existsSync('/dev/nvidiactl')) return true;
  const ldconfig = spawnSync('ldconfig', ['-p'], { encoding: 'utf8' });
  return ldconfig.status === 0 && /libcuda\.so\.1\b/.test(ldconfig.stdout);
}

if (ifAvailable) {
  const asked = process.env.MEMGPT_BUILD_CUDA;
  if (asked === '0') process.exit(0);
  if (asked !== '1' && !hasNvidiaDriver()) {
    console.error('memgpt: no NVIDIA driver here, so the CUDA addon was not built (CPU only); MEMGPT_BUILD_CUDA=1 npm install, or npm run build:cuda, builds it');
    process.exit(0);
  }
}

const nvcc = findNvcc();
if (!nvcc) unavailable('nvcc');
if (!onPath('cmake')) unavailable('cmake');

const cmakeJs = join(root, 'node_modules', 'cmake-js', 'bin', 'cmake-js');
if (!existsSync(cmakeJs)) unavailable('node_modules/cmake-js (a devDependency: run npm install in a checkout)');

// `build` configures build-cuda/ on first use and rebuilds incrementally after.
// (Not build/: node-gyp owns that one and wipes it.)
const args = [
  cmakeJs,
  'build',
  '--out', join(root, 'build-cuda'),
  '--parallel', String(availableParallelism()),
  `--CDCMAKE_CUDA_COMPILER=${nvcc}`,
  `--CDNODE_EXECUTABLE=${process.execPath}`,
];
const result = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
if (result.error) {
  console.error(`memgpt: could not run cmake-js: ${result.error.message}`);
  process.exit(1);
}
if (result.status !== 0) process.exit(result.status ?? 1);
if (!existsSync(built)) {
  console.error('memgpt: cmake-js succeeded but build-cuda/Release/memgpt_cuda.node is missing');
  process.exit(1);
}
// Copy, strip, then rename into place: a crash never leaves a half-written prebuild.
mkdirSync(dirname(prebuilt), { recursive: true });
const partial = `${prebuilt}.partial`;
copyFileSync(built, partial);
const strip = spawnSync('strip', ['--strip-unneeded', partial], { stdio: 'inherit' });
if (strip.error || strip.status !== 0) console.error('memgpt: strip failed; the CUDA prebuild keeps its symbols');
renameSync(partial, prebuilt);
