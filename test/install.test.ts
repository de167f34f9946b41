// The offline install test: packs this package, installs the tarball into a fresh project with no
// compiler, no CUDA toolkit and no registry reachable, then runs the installed `memgpt`: --help,
// doctor and a short training run. What users get from `npm install ./memgpt-*.tgz`.
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

import { packageRoot } from '../lib/native/backend.js';
import { glooAddonPath } from '../lib/parallel/group.js';

const tuple = `${process.platform}-${process.arch}`;
const compilers = ['cc', 'gcc', 'g++', 'c++', 'clang', 'make', 'cmake', 'nvcc'];

function onPath(name: string, path = process.env.PATH ?? ''): string | undefined {
  return path.split(delimiter).map((dir) => join(dir, name)).find((p) => existsSync(p));
}

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { cwd, env, encoding: 'utf8', timeout: 300_000 });
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).map((f) => join(dir, f)).filter((f) => statSync(f).isFile());
}

// npm test compiles lib/ first; a stale dist/ would pack yesterday's code.
function staleDist(): string | undefined {
  for (const src of filesUnder(join(packageRoot, 'lib')).filter((f) => f.endsWith('.ts'))) {
    const out = join(packageRoot, 'dist', relative(join(packageRoot, 'lib'), src)).replace(/\.ts$/, '.js');
    if (!existsSync(out) || statSync(out).mtimeMs < statSync(src).mtimeMs) return relative(packageRoot, src);
  }
  return undefined;
}

describe('npm pack, then an offline install without a compiler', () => {
  it('installs the tarball, then --help, doctor and a training step work', { timeout: 600_000 }, () => {
    const stale = staleDist();
    expect(stale, `dist/ is older than ${stale}: run npm run build:ts`).toBeUndefined();
    // With nvcc here (as in CI), the package must carry the CUDA addon; without it, a CPU-only package is all we can make.
    const withCuda = onPath('nvcc') !== undefined || existsSync('/usr/local/cuda/bin/nvcc');
    const env = { ...process.env, MEMGPT_PACK_CPU_ONLY: withCuda ? undefined : '1' };
    const prepack = run(process.execPath, ['scripts/prepack.mjs'], packageRoot, env);
    expect(prepack.status, prepack.stderr).toBe(0);

    const work = mkdtempSync(join(tmpdir(), 'memgpt-install-'));
    const tarballs = join(work, 'tarballs');
    mkdirSync(tarballs);
    // Scripts already ran above (prepack) and before the tests (tsc): packing again must not rebuild dist/ under the other tests.
    const pack = run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', tarballs], packageRoot);
    expect(pack.status, pack.stderr).toBe(0);
    const packed = (JSON.parse(pack.stdout) as { filename: string; files: { path: string }[] }[])[0];
    const shipped = packed.files.map((f) => f.path);
    expect(shipped).toContain('dist/cli/main.js');
    expect(shipped).toContain('bin/memgpt.js');
    expect(shipped).toContain('LICENSE');
    expect(shipped).toContain('bench/torch_load.py');
    expect(shipped.some((p) => p.startsWith(`prebuilds/${tuple}/`) && p.endsWith('.node'))).toBe(true);
    expect(shipped.includes(`prebuilds/${tuple}-cuda/memgpt_cuda.node`)).toBe(withCuda);
    expect(shipped.filter((p) => /^(build|build-cuda|lib|test|node_modules)\//.test(p))).toEqual([]);

    // The runtime dependencies as local tarballs, so the install needs no registry at all.
    const ls = run('npm', ['ls', '--omit=dev', '--all', '--parseable'], packageRoot);
    expect(ls.status, ls.stderr).toBe(0);
    const deps = ls.stdout.trim().split('\n').slice(1);
    expect(deps.length).toBeGreaterThan(0);
    for (const dep of deps) {
      const r = run('npm', ['pack', '--ignore-scripts', '--pack-destination', tarballs], dep);
      expect(r.status, `${dep}: ${r.stderr}`).toBe(0);
    }

    // A PATH holding node, npm, npx and sh only: nothing to compile with.
    const bin = join(work, 'bin');
    mkdirSync(bin);
    for (const tool of ['node', 'npm', 'npx']) symlinkSync(onPath(tool) ?? process.execPath, join(bin, tool));
    symlinkSync('/bin/sh', join(bin, 'sh'));
    const bare = { ...process.env, PATH: bin, CUDA_HOME: undefined, npm_config_nodedir: undefined, MEMGPT_DEVICE: undefined };
    for (const tool of compilers) expect(onPath(tool, bin), `${tool} is reachable`).toBeUndefined();

    const project = join(work, 'project');
    mkdirSync(project);
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'memgpt-install-check', version: '1.0.0', private: true }));
    const all = readdirSync(tarballs).map((f) => join(tarballs, f));
    const install = run('npm', ['install', '--offline', '--registry', 'http://127.0.0.1:9/', '--no-audit', '--no-fund', ...all], project, bare);
    expect(install.status, install.stderr).toBe(0);
    const installed = join(project, 'node_modules', 'memgpt');
    expect(existsSync(join(installed, 'build')), 'the install compiled something').toBe(false);

    const help = run('npx', ['memgpt', '--help'], project, bare);
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toMatch(/^memgpt — the Memory-Gated Pointer Transformer/);

    const doctor = run('npx', ['memgpt', 'doctor', '--json'], project, bare);
    expect(doctor.status, doctor.stderr).toBe(0);
    const report = JSON.parse(doctor.stdout) as {
      cpu: { loaded: string }; cuda: { addon: string | null; usable: boolean }; backend: { device: string }; parallel: { cpu: { detail: string } };
    };
    expect(report.cpu.loaded).toMatch(new RegExp(`^prebuilds/${tuple}/.*\\.node$`));
    expect(report.cuda.addon).toBe(withCuda ? `prebuilds/${tuple}-cuda/memgpt_cuda.node` : null);
    if (!report.cuda.usable) expect(report.backend.device).toBe('cpu');

    writeFileSync(join(project, 'corpus.txt'), readFileSync(join(packageRoot, 'docs', 'SPEC.md')));
    const train = run('npx', ['memgpt', 'train', '--preset', 'tiny', '--data', 'corpus.txt', '--out', 'run', '--steps', '3',
      '--batch-size', '2', '--segments', '2', '--json'], project, bare);
    expect(train.status, train.stderr).toBe(0);
    const steps = train.stdout.trim().split('\n').map((l) => JSON.parse(l) as { step: number; loss: number });
    expect(steps.at(-1)?.step).toBe(3);
    expect(steps.every((s) => Number.isFinite(s.loss))).toBe(true);
    expect(existsSync(join(project, 'run', 'model.safetensors'))).toBe(true);

    // Where the package carries the gloo addon (packed where libgloo-dev is), data parallel runs from the install.
    if (glooAddonPath()) {
      expect(report.parallel.cpu.detail).toContain(`prebuilds/${tuple}-gloo/memgpt_gloo.node`);
      const dp = run('npx', ['memgpt', 'train', '--preset', 'tiny', '--data', 'corpus.txt', '--out', 'run-dp', '--steps', '2',
        '--batch-size', '1', '--segments', '2', '--nproc-per-node', '2', '--json'], project, bare);
      expect(dp.status, dp.stderr).toBe(0);
      expect(dp.stderr).toContain('data parallel over 2 ranks');
    }
  });

  it('the typings compile for a consumer on lib es2022 with @types/node (no esnext needed for Symbol.dispose)', () => {
    const work = mkdtempSync(join(tmpdir(), 'memgpt-types-'));
    writeFileSync(join(work, 'use.ts'), [
      `import * as mg from ${JSON.stringify(join(packageRoot, 'dist', 'index.js'))};`,
      'const t: mg.Tensor = mg.zeros([2]);',
      'const d = new mg.Decoder(mg.MemGPT.init(mg.presets.tiny));',
      'd.dispose();',
      'export const shape: readonly number[] = t.shape;',
    ].join('\n'));
    writeFileSync(join(work, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        target: 'es2022', lib: ['es2022'], module: 'nodenext', moduleResolution: 'nodenext', strict: true, noEmit: true,
        typeRoots: [join(packageRoot, 'node_modules', '@types')], types: ['node'],
      },
      files: ['use.ts'],
    }));
    const r = run(process.execPath, [join(packageRoot, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', work], work);
    expect(r.stdout + r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('the install hook keeps a prebuilt addon that loads, and rebuilds (here: fails saying why) one that does not', () => {
    const pkg = mkdtempSync(join(tmpdir(), 'memgpt-hook-'));
    mkdirSync(join(pkg, 'scripts'));
    copyFileSync(join(packageRoot, 'scripts', 'build-cpu.mjs'), join(pkg, 'scripts', 'build-cpu.mjs'));
    copyFileSync(join(packageRoot, 'binding.gyp'), join(pkg, 'binding.gyp'));
    writeFileSync(join(pkg, 'package.json'), JSON.stringify({ name: 'memgpt', version: '0.0.0' }));
    mkdirSync(join(pkg, 'node_modules'));
    symlinkSync(join(packageRoot, 'node_modules', 'node-gyp-build'), join(pkg, 'node_modules', 'node-gyp-build'));
    const prebuilds = join(pkg, 'prebuilds', tuple);
    mkdirSync(prebuilds, { recursive: true });
    const bin = mkdtempSync(join(tmpdir(), 'memgpt-bin-'));
    symlinkSync(process.execPath, join(bin, 'node'));
    const bare = { ...process.env, PATH: bin };
    const hook = () => run(process.execPath, ['scripts/build-cpu.mjs', '--if-missing'], pkg, bare);

    const real = readdirSync(join(packageRoot, 'prebuilds', tuple)).find((f) => f.endsWith('.node'))!;
    copyFileSync(join(packageRoot, 'prebuilds', tuple, real), join(prebuilds, real));
    const kept = hook();
    expect(kept.status, kept.stderr).toBe(0);
    expect(kept.stderr).toBe('');

    writeFileSync(join(prebuilds, real), 'not a shared library'); // as a prebuild for a newer glibc behaves
    const rebuilt = hook();
    expect(rebuilt.status).not.toBe(0); // no compiler on this PATH, so the source build cannot succeed
    expect(rebuilt.stderr).toMatch(/^memgpt: the prebuilt CPU addon does not load here \(.*\); building it from source$/m);
  });
});
