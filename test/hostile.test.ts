// The hostile set (test/hostile.ts) through the `memgpt` command: every crafted checkpoint through eval and generate,
// every crafted run folder through train --resume. Each ends within 30 s and 1.5 GB, with one clear line on stderr
// and a non-zero exit (no stack trace, no signal), or, where the input is valid, exit 0 and a finite result.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';

import { packageRoot } from '../lib/native/backend.js';
import { hostileConfig, writeHostileSet, type HostileCase } from './hostile.js';

const bin = join(packageRoot, 'bin', 'memgpt.js');
const env = { ...process.env, MEMGPT_DEVICE: 'cpu', MEMGPT_QUIET: '1', MEMGPT_NUM_THREADS: '1' };
const limitSeconds = 30, limitBytes = 1.5 * 2 ** 30;

interface Outcome { status: number | null; signal: string | null; stdout: string; stderr: string; seconds: number; peakBytes: number }

/** Runs the command, reading its peak resident set (VmHWM) as it runs; killed at the time limit. */
function run(args: string[]): Promise<Outcome> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, [bin, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '', peakBytes = 0;
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const poll = setInterval(() => {
      try {
        const kb = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
        if (kb) peakBytes = Math.max(peakBytes, Number(kb[1]) * 1024);
      } catch {
        // exited between polls
      }
    }, 20);
    const timer = setTimeout(() => child.kill('SIGKILL'), limitSeconds * 1000);
    child.on('exit', (status, signal) => {
      clearInterval(poll);
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr: stderr.trim(), seconds: (performance.now() - t0) / 1000, peakBytes });
    });
  });
}

/** Runs jobs two at a time (the CI machine's cores). */
async function pool<T, R>(items: T[], fn: (item: T) => Promise<R>, width = 2): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  }));
  return out;
}

/** What is wrong with one outcome ('' when it is as it must be). */
function judge(c: HostileCase, what: string, o: Outcome, finite: (o: Outcome) => boolean): string {
  const where = `${c.name} (${what})`;
  if (o.signal) return `${where}: ended by ${o.signal} after ${o.seconds.toFixed(1)} s`;
  if (o.seconds > limitSeconds) return `${where}: took ${o.seconds.toFixed(1)} s`;
  if (o.peakBytes > limitBytes) return `${where}: peak ${(o.peakBytes / 2 ** 20).toFixed(0)} MiB`;
  const ok = o.status === 0 && finite(o);
  const refused = o.status === 2 && /^memgpt: [^\n]+$/.test(o.stderr) && !/\n\s+at |node:internal/.test(o.stderr);
  if (c.valid === true) return ok ? '' : `${where}: valid input, but exit ${o.status}: ${o.stderr.slice(0, 300)}`;
  if (c.valid === 'either') return ok || refused ? '' : `${where}: exit ${o.status}, stderr: ${o.stderr.slice(0, 300)}`;
  return refused ? '' : `${where}: not one clear line and exit 2 (exit ${o.status}): ${o.stderr.slice(0, 300)}${o.stdout ? ` | stdout ${o.stdout.slice(0, 100)}` : ''}`;
}

describe('the hostile set', () => {
  let dir: string, data: string, cases: HostileCase[];
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'memgpt-hostile-'));
    data = join(dir, 'data.txt');
    writeFileSync(data, Array.from({ length: 60 }, (_, i) => `Line ${i}: the quick brown fox jumps over the lazy dog.`).join('\n'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify(hostileConfig));
    cases = writeHostileSet(join(dir, 'set'), (out) => {
      const r = spawnSync(process.execPath, [bin, 'train', '--config', join(dir, 'config.json'), '--data', data, '--out', out,
        '--steps', '2', '--batch-size', '2', '--segments', '2', '--checkpoint-every', '1', '--json'], { env, encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`making the base run failed: ${r.stderr}`);
    });
  });

  it('has 60 or more crafted checkpoints, and crafted run folders', () => {
    expect(cases.filter((c) => c.kind === 'checkpoint').length).toBeGreaterThanOrEqual(60);
    expect(cases.filter((c) => c.kind === 'run').length).toBeGreaterThanOrEqual(20);
  });

  it('eval and generate on every crafted checkpoint: one clear line, or a finite result', async () => {
    const checkpoints = cases.filter((c) => c.kind === 'checkpoint');
    const jobs = checkpoints.flatMap((c) => [
      { c, what: 'eval', args: ['eval', '--checkpoint', c.path, '--data', data, '--json'],
        finite: (o: Outcome) => Number.isFinite((JSON.parse(o.stdout) as { loss: number }).loss) },
      { c, what: 'generate', args: ['generate', '--checkpoint', c.path, '--prompt', 'Line', '--max-tokens', '4', '--seed', '1'],
        finite: (o: Outcome) => o.stdout.length > 0 },
    ]);
    const problems = await pool(jobs, async (j) => judge(j.c, j.what, await run(j.args), j.finite));
    expect(problems.filter(Boolean)).toEqual([]);
  }, 600_000);

  it('train --resume on every crafted run folder: one clear line, or the run continues', async () => {
    const runs = cases.filter((c) => c.kind === 'run');
    const problems = await pool(runs, async (c) => judge(c, 'train --resume', await run(['train', '--data', data, '--out', c.path, '--resume', '--steps', '3', '--json']),
      (o) => o.stdout.trim().split('\n').every((l) => Number.isFinite((JSON.parse(l) as { loss: number }).loss))));
    expect(problems.filter(Boolean)).toEqual([]);
  }, 600_000);
});
