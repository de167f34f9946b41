#!/usr/bin/env node
// Builds the optional gloo addon (the CPU collectives of data-parallel training, native/parallel/) with g++ against
// the headers of the running Node.js and Debian's libgloo-dev, into prebuilds/linux-x64-gloo/memgpt_gloo.node: the
// prebuilt binary `npm pack` ships, loaded only by runs of more than one rank. It links libgloo.so.0 dynamically,
// so a machine without gloo installs and trains on one process as before; lib/parallel says in one line what to install.
// With --if-available a machine without gloo's headers is not an error (npm install); with --if-missing a prebuilt
// addon already present is kept.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const ifAvailable = process.argv.includes('--if-available');
const prebuilt = join(root, 'prebuilds', `${process.platform}-${process.arch}-gloo`, 'memgpt_gloo.node');

function skip(why) {
  console.error(`memgpt: ${why}; the gloo addon (data-parallel training on the CPU) was not built`);
  process.exit(ifAvailable ? 0 : 1);
}

if (process.argv.includes('--if-missing') && existsSync(prebuilt)) process.exit(0);

const glooInclude = process.env.GLOO_INCLUDE_DIR ?? '/usr/include';
if (!existsSync(join(glooInclude, 'gloo', 'allreduce.h'))) skip(`no gloo headers in ${glooInclude} (Debian/Ubuntu: apt-get install libgloo-dev)`);
const nodeInclude = [process.env.npm_config_nodedir, resolve(dirname(process.execPath), '..')]
  .filter(Boolean).map((d) => join(d, 'include', 'node')).find((d) => existsSync(join(d, 'node_api.h')));
if (!nodeInclude) skip('no Node.js headers (include/node/node_api.h) beside this node binary; set npm_config_nodedir');
let napiInclude;
try {
  napiInclude = require('node-addon-api').include_dir;
} catch {
  skip('node-addon-api is not installed');
}

mkdirSync(dirname(prebuilt), { recursive: true });
const partial = `${prebuilt}.partial`;
const args = [
  '-std=c++17', '-O2', '-fPIC', '-shared', '-Wall', '-Wno-unused-parameter',
  '-DNAPI_VERSION=8', '-DNAPI_CPP_EXCEPTIONS', '-DNODE_ADDON_API_DISABLE_DEPRECATED',
  `-I${nodeInclude}`, `-I${resolve(root, napiInclude)}`, `-I${glooInclude}`,
  join(root, 'native', 'parallel', 'gloo_addon.cc'),
  `-L${process.env.GLOO_LIB_DIR ?? '/usr/lib'}`, '-l:libgloo.so.0', '-pthread', '-s',
  '-o', partial,
];
const cxx = process.env.CXX ?? 'g++';
const result = spawnSync(cxx, args, { stdio: 'inherit' });
if (result.error) skip(`could not run ${cxx}: ${result.error.message}`);
if (result.status !== 0) {
  rmSync(partial, { force: true });
  console.error('memgpt: building the gloo addon failed');
  process.exit(1);
}
renameSync(partial, prebuilt);
console.error(`memgpt: built ${prebuilt}`);
