#!/usr/bin/env node
// Builds the CPU addon against the headers of the running Node.js (never downloaded).
// In a checkout (prebuildify installed) the build lands in prebuilds/linux-x64/ as
// memgpt.napi.glibc.node, the prebuilt binary `npm pack` ships; elsewhere (a user building
// from source) plain node-gyp leaves it in build/Release/. node-gyp-build loads either.
// With --if-missing (the npm install hook) it does nothing when an addon is already present and
// loads here; a prebuilt one that cannot load (a glibc or libstdc++ older than the build machine's)
// is built from source instead, or the install fails saying why.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

function addonPresent() {
  const dir = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  const prebuilt = existsSync(dir) && readdirSync(dir).some((f) => f.endsWith('.node'));
  return prebuilt || existsSync(join(root, 'build', 'Release', 'memgpt_cpu.node'));
}

// Loads the addon node-gyp-build picks, in a child process (a bad binary must not take this one down).
// Returns undefined when it loads, else the loader's first line.
function loadError() {
  const script = `require('node-gyp-build')(${JSON.stringify(root)})`;
  const child = spawnSync(process.execPath, ['-e', script], { cwd: root, encoding: 'utf8' });
  if (child.status === 0) return undefined;
  return (child.stderr.split('\n').find((l) => /Error/.test(l)) ?? `exit code ${child.status}`).trim();
}

// Node's own headers: npm's nodedir setting, else the prefix of this node binary.
function nodeDir() {
  if (process.env.npm_config_nodedir) return process.env.npm_config_nodedir;
  const prefix = resolve(dirname(process.execPath), '..');
  return existsSync(join(prefix, 'include', 'node', 'common.gypi')) ? prefix : undefined;
}

// npm passes its bundled node-gyp; otherwise look beside npm, then on PATH.
function nodeGyp() {
  if (process.env.npm_config_node_gyp) return process.env.npm_config_node_gyp;
  const bundled = resolve(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  return existsSync(bundled) ? bundled : 'node-gyp';
}

function fail(message) {
  console.error(`memgpt: ${message}`);
  process.exit(1);
}

if (process.argv.includes('--if-missing') && addonPresent()) {
  const error = loadError();
  if (!error) process.exit(0);
  console.error(`memgpt: the prebuilt CPU addon does not load here (${error}); building it from source`);
}

const dir = nodeDir();
if (!dir) fail('cannot find Node.js headers (include/node/common.gypi) beside this node binary; set npm_config_nodedir to the Node.js install prefix');
// node-gyp reads npm_config_nodedir, so both paths below build against these headers, offline.
process.env.npm_config_nodedir = dir;

let prebuildify;
try {
  prebuildify = require('prebuildify');
} catch {
  prebuildify = undefined; // a user's source build: prebuildify is a devDependency
}

if (prebuildify) {
  // A prebuild that came with a tarball is replaced, not kept beside the new one.
  const options = { cwd: root, napi: true, tagLibc: true, strip: true, nodeGyp: nodeGyp(), targets: [process.version.slice(1)] };
  prebuildify(options, (err) => {
    if (err) fail(`building the CPU addon failed: ${err.message}`);
  });
} else {
  const gyp = nodeGyp();
  const [cmd, ...pre] = gyp.endsWith('.js') ? [process.execPath, gyp] : [gyp];
  const result = spawnSync(cmd, [...pre, 'rebuild', `--nodedir=${dir}`, '-j', 'max'], { cwd: root, stdio: 'inherit' });
  if (result.error) fail(`could not run node-gyp: ${result.error.message}`);
  process.exit(result.status ?? 1);
}
