// Crash-safe run folders, end to end through the `memgpt` command: kill -9 at every point of a checkpoint's commit
// and at random moments (each kill leaves a folder that evaluates and resumes, and the run's losses equal an
// uninterrupted run's bit for bit), the lock against a second process, resume with the saved options, and the
// clean-up of a killed run's leftovers.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import * as mg from '../lib/index.js';
import { packageRoot } from '../lib/native/backend.js';
import { loadModel } from '../lib/io/checkpoint.js';
import { getTokenizer, loadCorpus } from '../lib/data/index.js';
import { committedCheckpoint, runFiles } from '../lib/train/run-folder.js';
import { evaluateLoss } from '../lib/train/trainer.js';
import { runMemgpt } from './helpers.js';

const bin = join(packageRoot, 'bin', 'memgpt.js');
const tinyConfig = { tokenizer: 'byte', dModel: 16, nHeads: 2, dFF: 32, nLayers: 1, segmentLen: 8, memSlots: 2 };
const env = { ...process.env, MEMGPT_DEVICE: 'cpu', MEMGPT_QUIET: '1', MEMGPT_NUM_THREADS: '1' };

const memgpt = (args: string[], extra: Record<string, string> = {}) => runMemgpt(args, { MEMGPT_NUM_THREADS: '1', ...extra });

/**
 * Starts the command and kills it with SIGKILL `ms` after it printed the JSON line of step `afterStep` (0: after it
 * started), if it is still running: its exit code, or 'killed'. Counting from the run's own progress rather than
 * from the clock keeps the kills where they were meant to fall on a machine of any speed or load.
 */
function killAfter(args: string[], ms: number, afterStep = 0): Promise<{ status: number | 'killed'; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [bin, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let stdout = '';
    let timer: NodeJS.Timeout | undefined;
    const arm = () => (timer ??= setTimeout(() => child.kill('SIGKILL'), ms));
    if (afterStep === 0) arm();
    child.stdout.on('data', (d) => {
      stdout += d;
      const lines = stdout.split('\n');
      stdout = lines.pop()!;
      if (lines.some((l) => (JSON.parse(l) as { step?: number }).step! >= afterStep)) arm();
    });
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ status: signal === 'SIGKILL' ? 'killed' : code ?? -1, stderr: stderr.trim() });
    });
  });
}

function workspace() {
  const dir = mkdtempSync(join(tmpdir(), 'memgpt-runfolder-'));
  const text = Array.from({ length: 80 }, (_, i) => `Line ${i}: the quick brown fox jumps over the lazy dog ${i * 7}.`).join('\n');
  writeFileSync(join(dir, 'data.txt'), text);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(tinyConfig));
  return dir;
}

const steps = 24;
const runArgs = (dir: string, out: string) => ['train', '--config', join(dir, 'config.json'), '--data', join(dir, 'data.txt'), '--out', out,
  '--steps', String(steps), '--batch-size', '2', '--segments', '2', '--lr', '3e-3', '--seed', '5', '--checkpoint-every', '1', '--log-every', '1', '--json'];
// A resume names only the data and the folder: everything else comes from the saved options.
const resumeArgs = (dir: string, out: string) => ['train', '--data', join(dir, 'data.txt'), '--out', out, '--resume', '--json'];

/** The (step, loss) rows of a run folder's metrics.jsonl. */
function losses(out: string): [number, number][] {
  return readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; loss: number })
    .map((r) => [r.step, r.loss]);
}

/** What a kill must leave: no checkpoint, or a committed one whose model loads and evaluates to a finite loss. */
function checkAfterKill(dir: string, out: string): number | null {
  const cp = committedCheckpoint(runFiles(out));
  if (!cp) return null;
  const model = loadModel(join(out, 'model.safetensors'));
  try {
    const corpus = loadCorpus(join(dir, 'data.txt'), getTokenizer('byte'));
    expect(Number.isFinite(evaluateLoss(model, corpus, 2, 2, 1).loss)).toBe(true);
  } finally {
    model.dispose();
  }
  return cp.step;
}

/** A finished run folder: every step logged once with the reference's loss, one step folder, no leftovers, no lock. */
function checkFinished(out: string, reference: [number, number][]): void {
  expect(losses(out)).toEqual(reference);
  expect(readdirSync(join(out, 'checkpoints'))).toEqual([`step-${steps}`]);
  expect(readdirSync(out).filter((f) => /tmp|lock/.test(f))).toEqual([]);
}

describe('crash-safe run folders', () => {
  it('kill -9 at every point of a checkpoint commit, and at 20 random moments: each folder evaluates and resumes, bit for bit', async () => {
    const dir = workspace();
    const t0 = performance.now();
    const whole = memgpt(runArgs(dir, join(dir, 'whole')));
    const wholeMs = performance.now() - t0;  // start-up and steps, for placing the kills below
    expect(whole.stderr).toBe('');
    const reference = losses(join(dir, 'whole'));
    expect(reference.map(([s]) => s)).toEqual(Array.from({ length: steps }, (_, i) => i + 1));

    // Every point between writing the step folder and removing the previous one.
    const points = ['written', 'renamed', 'committed', 'linked-model', 'linked-optimizer'];
    const out = join(dir, 'points');
    for (const [i, point] of points.entries()) {
      const step = 3 + 2 * i;
      const args = existsSync(join(out, 'checkpoint.json')) ? resumeArgs(dir, out) : runArgs(dir, out);
      const killed = memgpt(args, { MEMGPT_FAULT_KILL_AT: `${step}:${point}` });
      expect(killed.signal).toBe('SIGKILL');
      // Killed before the commit point: the previous step's checkpoint; after it: this step's.
      expect(checkAfterKill(dir, out)).toBe(['written', 'renamed'].includes(point) ? step - 1 : step);
    }
    const finished = memgpt(resumeArgs(dir, out));
    expect(finished.stderr).toBe('');
    expect(finished.status).toBe(0);
    checkFinished(out, reference);

    // Random moments: up to 4 kills in a folder, then a resume to the end, until 20 kills. A kill falls in start-up (1 in 5),
    // or in a random step still to run, a random time after its line is printed (into the step's checkpoint or
    // the next step's work).
    const stepMs = (1000 * (JSON.parse(readFileSync(join(dir, 'whole', 'metrics.jsonl'), 'utf8').trim().split('\n').at(-1)!) as
      { elapsedSeconds: number }).elapsedSeconds) / steps;
    const startMs = wholeMs - stepMs * steps;
    const rng = new mg.Rng(11);
    const killedAt = new Set<number | null>();
    let total = 0;
    for (let folder = 0; total < 20; folder++) {
      expect(folder).toBeLessThan(8);
      const run = join(dir, `random-${folder}`);
      let kills = 0;
      for (let attempt = 0; ; attempt++) {
        expect(attempt).toBeLessThan(10);
        const args = existsSync(join(run, 'checkpoint.json')) ? resumeArgs(dir, run) : runArgs(dir, run);
        const done = committedCheckpoint(runFiles(run))?.step ?? 0;
        const [ms, afterStep] = kills === 4 || total === 20 ? [600_000, 0]
          : rng.uniform() < 0.2 ? [startMs * rng.uniform(), 0]
          : [2 * stepMs * rng.uniform(), done + 1 + Math.floor(rng.uniform() * (steps - done))];
        const r = await killAfter(args, ms, afterStep);
        if (r.status !== 'killed') {
          expect(r.stderr.replace(/^memgpt: .* stopped before its first checkpoint; starting it again$/m, '').trim()).toBe('');
          expect(r.status).toBe(0);
          break;
        }
        kills++;
        total++;
        killedAt.add(checkAfterKill(dir, run));
      }
      checkFinished(run, reference);
    }
    // The kills fell at many points of the run, not only in start-up (null: before the first checkpoint).
    expect(killedAt.size).toBeGreaterThanOrEqual(5);
  }, 300_000);

  it('one process at a time: a live lock refuses a second training, a stale one is taken over', async () => {
    const dir = workspace();
    const out = join(dir, 'run');
    mkdirSync(out);
    // A live owner (this test process) holds the lock: refused with one line naming it, nothing written.
    writeFileSync(join(out, 'run.lock'), JSON.stringify({ pid: process.pid, host: hostname(), start: null }));
    const refused = memgpt(runArgs(dir, out));
    expect(refused.status).toBe(2);
    expect(refused.stderr).toBe(`memgpt: train: ${out} is in use by process ${process.pid} (its ${join(out, 'run.lock')}); wait for it to end, or give another --out`);
    expect(readdirSync(out)).toEqual(['run.lock']);
    // The lock of a process that is gone (killed): taken over, and released at the end.
    const gone = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' });
    writeFileSync(join(out, 'run.lock'), JSON.stringify({ pid: Number(gone.stdout.trim()), host: hostname(), start: null }));
    const taken = memgpt([...runArgs(dir, out), '--steps', '2']);
    expect(taken.stderr).toBe('');
    expect(taken.status).toBe(0);
    expect(existsSync(join(out, 'run.lock'))).toBe(false);
    // Two trainings started together into one new folder: one runs, the other is refused.
    for (let race = 0; race < 3; race++) {
      const both = join(dir, `race-${race}`);
      const results = await Promise.all([0, 1].map(() => killAfter([...runArgs(dir, both), '--steps', '3'], 60_000)));
      expect(results.map((r) => r.status).sort()).toEqual([0, 2]);
      expect(results.find((r) => r.status === 2)!.stderr).toMatch(/is in use by process \d+|already holds a run/);
      expect(losses(both).map(([s]) => s)).toEqual([1, 2, 3]);
    }
  }, 120_000);

  it('resume keeps the saved options: a different one is refused by name, --steps may grow', () => {
    const dir = workspace();
    const out = join(dir, 'run');
    expect(memgpt([...runArgs(dir, out), '--steps', '3']).status).toBe(0);
    for (const [flag, value] of [['--lr', '0.01'], ['--batch-size', '4'], ['--seed', '6'], ['--schedule', 'constant'], ['--held-out', '0.2']]) {
      const r = memgpt([...resumeArgs(dir, out), flag, value]);
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(new RegExp(`^memgpt: train --resume: ${flag} ${value} differs from the run's`));
    }
    writeFileSync(join(dir, 'other.txt'), 'a different corpus, '.repeat(200));
    const otherData = memgpt(['train', '--data', join(dir, 'other.txt'), '--out', out, '--resume']);
    expect(otherData.stderr).toMatch(/^memgpt: train --resume: --data .* gives \d+ training tokens; the run was trained on \d+ .*resume with the same data$/);
    const shorter = memgpt([...resumeArgs(dir, out), '--steps', '2']);
    expect(shorter.stderr).toBe("memgpt: train --resume: --steps 2 is below the checkpoint's step 3");
    // The same values again are fine, and --steps extends the run (its schedule now ends at step 5).
    const grown = memgpt([...resumeArgs(dir, out), '--lr', '3e-3', '--seed', '5', '--steps', '5']);
    expect(grown.stderr).toBe('');
    expect(grown.status).toBe(0);
    expect(losses(out).map(([s]) => s)).toEqual([1, 2, 3, 4, 5]);
  }, 120_000);

  it('a run killed before its first checkpoint starts again; leftovers of a kill are cleared', () => {
    const dir = workspace();
    const out = join(dir, 'run');
    mkdirSync(out);
    writeFileSync(join(out, 'metrics.jsonl'), '{"step":1,"loss":5}\n{"step":2,"lo');
    const resume = memgpt(resumeArgs(dir, out));
    expect(resume.status).toBe(2);
    expect(resume.stderr).toBe(`memgpt: --resume: ${out} has no checkpoint to resume from (its run stopped before the first one); run the same command without --resume to start it again`);
    const again = memgpt([...runArgs(dir, out), '--steps', '2']);
    expect(again.stderr).toBe(`memgpt: ${out} holds a run that stopped before its first checkpoint; starting it again`);
    expect(again.status).toBe(0);
    expect(losses(out).map(([s]) => s)).toEqual([1, 2]);
    // What a kill leaves (temp files of a dead process, a step folder never committed) is gone after the next run.
    writeFileSync(join(out, 'model.safetensors.tmp-999999-abc'), 'x');
    writeFileSync(join(out, 'checkpoint.json.tmp-999999'), 'x');
    mkdirSync(join(out, 'checkpoints', '.step-3.tmp-999999'));
    mkdirSync(join(out, 'checkpoints', 'step-7'));
    expect(memgpt([...resumeArgs(dir, out), '--steps', '3']).status).toBe(0);
    expect(readdirSync(out).filter((f) => f.includes('tmp'))).toEqual([]);
    expect(readdirSync(join(out, 'checkpoints'))).toEqual(['step-3']);
  }, 120_000);
});
