#!/usr/bin/env node
// The npm `prepare` hook: compiles lib/ to dist/ in a checkout. An installed tarball ships dist/ and not
// tsconfig.json or lib/, so there it has nothing to do (and must not fail).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
if (!existsSync(join(root, 'tsconfig.json')) || !existsSync(join(root, 'lib'))) process.exit(0);
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
const r = spawnSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.json')], { stdio: 'inherit' });
process.exit(r.status ?? 1);
