#!/usr/bin/env node
// Builds the optional CUDA addon (build-cuda/Release/memgpt_cuda.node) with
// cmake-js and nvcc. cmake-js uses the node-api-headers package because
// package.json declares "binary": {"napi_versions": [...]}, so nothing is
// downloaded. With --if-available a machine without nvcc or cmake is not an
// error: it gets the CPU addon only.
import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const ifAvailable = process.argv.includes('--if-available');

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

const nvcc = findNvcc();
if (!nvcc) unavailable('nvcc');
if (!onPath('cmake')) unavailable('cmake');

const cmakeJs = join(root, 'node_modules', 'cmake-js', 'bin', 'cmake-js');
if (!existsSync(cmakeJs)) {
  console.error('memgpt: node_modules/cmake-js is missing (run npm install); the CUDA addon was not built');
  process.exit(1);
}

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
if (result.status === 0 && !existsSync(join(root, 'build-cuda', 'Release', 'memgpt_cuda.node'))) {
  console.error('memgpt: cmake-js succeeded but build-cuda/Release/memgpt_cuda.node is missing');
  process.exit(1);
}
process.exit(result.status ?? 1);
