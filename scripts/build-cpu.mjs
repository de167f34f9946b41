#!/usr/bin/env node
// Builds the CPU addon with node-gyp against the headers of the running Node.js
// (never downloaded). With --if-missing (the npm install hook) it does nothing
// when a prebuilt or already-built addon is present.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

function prebuiltPresent() {
  const dir = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  const prebuilt = existsSync(dir) && readdirSync(dir).some((f) => f.startsWith('memgpt_cpu') && f.endsWith('.node'));
  return prebuilt || existsSync(join(root, 'build', 'Release', 'memgpt_cpu.node'));
}

// Node's own headers: npm's nodedir setting, else the prefix of this node binary.
function nodeDir() {
  if (process.env.npm_config_nodedir) return process.env.npm_config_nodedir;
  const prefix = resolve(dirname(process.execPath), '..');
  return existsSync(join(prefix, 'include', 'node', 'common.gypi')) ? prefix : undefined;
}

// npm passes its bundled node-gyp; otherwise look beside npm, then on PATH.
function nodeGyp() {
  if (process.env.npm_config_node_gyp) return [process.execPath, process.env.npm_config_node_gyp];
  const bundled = resolve(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  if (existsSync(bundled)) return [process.execPath, bundled];
  return ['node-gyp'];
}

if (process.argv.includes('--if-missing') && prebuiltPresent()) process.exit(0);

const dir = nodeDir();
if (!dir) {
  console.error('memgpt: cannot find Node.js headers (include/node/common.gypi) beside this node binary; set npm_config_nodedir to the Node.js install prefix');
  process.exit(1);
}
const [cmd, ...pre] = nodeGyp();
const args = [...pre, 'rebuild', `--nodedir=${dir}`, '-j', 'max'];
const result = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
if (result.error) {
  console.error(`memgpt: could not run node-gyp: ${result.error.message}`);
  process.exit(1);
}
process.exit(result.status ?? 1);
