// The `memgpt` command (from dist/, as users run it): the demo trains and
// frees everything; bad flags get one clear line and a non-zero exit.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { packageRoot } from '../lib/native/backend.js';
import { flagDocs, type CommandName, type FlagDoc } from '../lib/cli/flag-docs.js';

function memgpt(...args: string[]) {
  const child = spawnSync(process.execPath, [join(packageRoot, 'bin', 'memgpt.js'), ...args], {
    encoding: 'utf8',
    env: { ...process.env, MEMGPT_DEVICE: 'cpu' },
    timeout: 120_000,
  });
  return { status: child.status, stdout: child.stdout, stderr: child.stderr.trim() };
}

describe('memgpt command', () => {
  it('runs the demo: the loss falls and no tensor is left alive', () => {
    const r = memgpt('demo', '--steps', '60');
    expect(r.status).toBe(0);
    const done = r.stdout.trim().split('\n').at(-1)!;
    const [, first, last] = /loss (\S+) -> (\S+)/.exec(done)!;
    expect(Number(last)).toBeLessThan(Number(first));
    expect(done).toContain('live tensors 0');
  });

  it('bench books --help says what the benchmark does and what each flag means', () => {
    const r = memgpt('bench', 'books', '--help');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/stream-mode bits\/byte on held-out long documents/);
    // Every flag it parses has its line, with its default where it has one (the table of lib/cli/flag-docs.ts).
    for (const doc of flagDocs.books as FlagDoc[]) {
      const line = r.stdout.split('\n').find((l) => l.startsWith(`  --${doc.name} `));
      expect(line, `bench books --${doc.name}`).toBeDefined();
      expect(line).toContain(doc.help);
      if (doc.default) expect(line).toContain(`(default: ${doc.default})`);
    }
    expect(r.stdout).toContain('S8s');
  });

  it('prints help and version', () => {
    expect(memgpt('--help').stdout).toContain('memgpt demo');
    expect(memgpt('--version').stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it('every command answers --help (and -h) with its own usage, exit 0, doing nothing else', () => {
    for (const command of ['train', 'eval', 'generate', 'bench', 'demo', 'doctor']) {
      for (const flag of ['--help', '-h']) {
        const r = memgpt(command, flag);
        expect(r.status, `${command} ${flag}`).toBe(0);
        expect(r.stdout).toMatch(new RegExp(`^memgpt ${command} — `));
        expect(r.stdout).toContain(`  memgpt ${command} `);
        if (command !== 'doctor') expect(r.stdout).not.toContain('  memgpt doctor'); // its own lines, not the whole usage
      }
      // Every flag the command parses has a line of its own in the help, with its default where it has one.
      const help = memgpt(command, '--help').stdout;
      for (const doc of flagDocs[command as CommandName] as FlagDoc[]) {
        const line = help.split('\n').find((l) => l.startsWith(`  --${doc.name} `) || l === `  --${doc.name}` || l.startsWith(`  --${doc.name}  `));
        expect(line, `${command} --${doc.name}`).toBeDefined();
        expect(line).toContain(doc.help);
        if (doc.default) expect(line).toContain(`(default: ${doc.default})`);
      }
    }
    // Help wins over the other flags: nothing is trained, and no run folder is asked for.
    expect(memgpt('train', '--data', 'missing.txt', '--help').status).toBe(0);
    expect(memgpt('bench', 'books', '--help').stdout).toContain('memgpt bench books');
  });

  it('doctor says what it found and which backend runs, as text or JSON', () => {
    const text = memgpt('doctor');
    expect(text.status).toBe(0);
    expect(text.stdout).toMatch(/^memgpt \d+\.\d+\.\d+ on Node\.js v\d+/);
    expect(text.stdout).toMatch(/^CPU addon: +\S+\.node \(\d+ threads, /m);
    expect(text.stdout).toMatch(/^CUDA usable: +(yes|no) \(.+\)$/m);
    expect(text.stdout).toContain('Backend:      cpu — MEMGPT_DEVICE=cpu'); // this harness forces the CPU
    const json = JSON.parse(memgpt('doctor', '--json').stdout) as { backend: { device: string }; cpu: { threads: number } };
    expect(json.backend.device).toBe('cpu');
    expect(json.cpu.threads).toBeGreaterThan(0);
    expect(memgpt('doctor', '--bogus').status).toBe(2);
  });

  it('rejects unknown commands, unknown flags and bad values with one line', () => {
    for (const [args, pattern] of [
      [['frobnicate'], /^memgpt: unknown command 'frobnicate'/],
      [['demo', '--bogus'], /^memgpt: Unknown option '--bogus'/],
      [['demo', '--steps', 'ten'], /^memgpt: --steps must be a decimal integer ≥ 1 \(got 'ten'\)$/],
      [['demo', '--device', 'tpu'], /^memgpt: --device: unknown device 'tpu'/],
      [['bench', 'books', '--variants', 'S8,S9'], /^memgpt: --variants: unknown variant 'S9'/],
      [['bench', 'books', '--corpus', 'kjv,quran'], /^memgpt: --corpus must be kjv, linux-doc, austen, all, or a comma-separated list of them \(got 'quran'\)$/],
      [['bench', 'books', '--seed-list', '0,-1'], /^memgpt: --seed-list must be comma-separated integers ≥ 0 \(got '0,-1'\)$/],
      [['bench', 'books', '--merge', '/nonexistent/a.json', '--out', '/nonexistent/b.json'], /^memgpt: --merge: \/nonexistent\/a.json holds no runs$/],
      [['bench', 'sideways'], /^memgpt: bench: unknown benchmark 'sideways' \(kernels, train, decode or books\)$/],
      // A config that is not a small regular file is refused before anything is read.
      [['train', '--config', '/dev/zero', '--data', 'x.txt', '--out', 'x'], /^memgpt: --config: \/dev\/zero is not a regular file$/],
      // A bad --out is refused before training (it used to fail with a stack trace after the first step).
      [['train', '--data', 'README.md', '--out', 'README.md'], /^memgpt: train: --out README\.md is a file, not a folder$/],
      [['train', '--data', 'README.md', '--out', 'README.md/run'], /^memgpt: train: --out README\.md\/run lies below .*README\.md, which is a file$/],
      [['train', '--data', 'README.md', '--out', '/proc/self/run'], /^memgpt: train: --out \/proc\/self\/run is under \/proc, not a place for a run folder$/],
      // Names every object has are not presets.
      [['train', '--preset', '__proto__', '--data', 'x.txt', '--out', 'x'], /^memgpt: --preset must be one of tiny, small, base \(got '__proto__'\)$/],
      [['train', '--preset', 'toString', '--data', 'x.txt', '--out', 'x'], /^memgpt: --preset must be one of tiny, small, base \(got 'toString'\)$/],
    ] as const) {
      const r = memgpt(...args);
      expect(r.status).toBe(2);
      expect(r.stderr.split('\n').filter((l) => l.startsWith('memgpt:')).at(-1)).toMatch(pattern);
    }
  });
});
