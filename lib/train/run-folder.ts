// The run folder of a training run (`--out`): its files; checkpoints committed as one unit (a step folder
// renamed into place, then checkpoint.json naming it, written last), the previous one kept until the new one is
// complete; the lock that keeps a second process out; and the clean-up of what a killed process leaves behind.
import {
  closeSync, constants as fsConstants, copyFileSync, existsSync, fstatSync, fsyncSync, linkSync, mkdirSync, openSync,
  readdirSync, readFileSync, readSync, renameSync, rmdirSync, rmSync, unlinkSync, writeFileSync, writeSync,
} from 'node:fs';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';

import { MemgptError } from '../core/errors.js';

export interface RunFiles {
  dir: string;
  /** The latest committed model, for eval, generate and --init (a hard link to the committed step folder's copy). */
  model: string;
  /** The latest committed optimizer state (a link, as model); a folder of before checkpoint.json has only these two. */
  optimizer: string;
  /** Names the committed checkpoint; written last, so a checkpoint exists exactly when this file names it. */
  manifest: string;
  /** The step folders, checkpoints/step-N/{model,optimizer}.safetensors. */
  checkpoints: string;
  lock: string;
  metrics: string;
  lossPlot: string;
  memoryPlot: string;
  /** The learning rate and the gradient's global norm over the steps. */
  optimizerPlot: string;
}

export function runFiles(dir: string): RunFiles {
  return {
    dir,
    model: join(dir, 'model.safetensors'),
    optimizer: join(dir, 'optimizer.safetensors'),
    manifest: join(dir, 'checkpoint.json'),
    checkpoints: join(dir, 'checkpoints'),
    lock: join(dir, 'run.lock'),
    metrics: join(dir, 'metrics.jsonl'),
    lossPlot: join(dir, 'loss.svg'),
    memoryPlot: join(dir, 'memory.svg'),
    optimizerPlot: join(dir, 'optimizer.svg'),
  };
}

/** The checkpoint a run folder holds: the model and optimizer files of one step. */
export interface Checkpoint {
  step: number;
  model: string;
  optimizer: string;
  /** A folder of before checkpoint.json: the two top-level files, whose steps resume compares. */
  legacy: boolean;
}

const MANIFEST_FORMAT = 1;
const stepFolderName = (step: number) => `step-${step}`;

/** Reads a small text file that must be a regular file (a FIFO or a device would block or never end). */
function readSmallFile(path: string, maxBytes: number): string {
  const fd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new MemgptError(`${path} is not a regular file`);
    if (st.size > maxBytes) throw new MemgptError(`${path} is ${st.size} bytes, more than a ${maxBytes}-byte ${path.endsWith('.json') ? 'manifest' : 'file'} can be`);
    const buf = Buffer.alloc(st.size);
    let done = 0;
    while (done < st.size) {
      const n = readSync(fd, buf, done, st.size - done, done);
      if (n === 0) break;
      done += n;
    }
    return buf.subarray(0, done).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

/** The run folder's committed checkpoint, or null when it has none (a new folder, or a run killed before its first). */
export function committedCheckpoint(files: RunFiles): Checkpoint | null {
  if (existsSync(files.manifest)) {
    let m: { format?: unknown; step?: unknown; folder?: unknown };
    try {
      m = JSON.parse(readSmallFile(files.manifest, 64 * 1024)) as typeof m;
    } catch (e) {
      if (e instanceof MemgptError) throw e;
      throw new MemgptError(`${files.manifest} is not valid JSON (${(e as Error).message})`);
    }
    const step = m?.step;
    if (m?.format !== MANIFEST_FORMAT || typeof step !== 'number' || !Number.isSafeInteger(step) || step < 0 || m.folder !== stepFolderName(step)) {
      throw new MemgptError(`${files.manifest} is not a checkpoint manifest of format ${MANIFEST_FORMAT} (it needs "format", a whole "step" ≥ 0 and "folder": "step-<step>")`);
    }
    const folder = join(files.checkpoints, m.folder);
    const cp = { step, model: join(folder, 'model.safetensors'), optimizer: join(folder, 'optimizer.safetensors'), legacy: false };
    for (const f of [cp.model, cp.optimizer]) if (!existsSync(f)) throw new MemgptError(`${files.manifest} names step ${step}, but ${f} is missing`);
    return cp;
  }
  if (existsSync(files.model) && existsSync(files.optimizer)) return { step: NaN, model: files.model, optimizer: files.optimizer, legacy: true };
  return null;
}

/** Writes `text` to `path` atomically: a temp file of this process's own, fsynced, renamed over it. */
export function writeFileAtomic(path: string, text: string): void {
  const temp = `${path}.tmp-${process.pid}`;
  try {
    writeFileSync(temp, text);
    const fd = openSync(temp, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temp, path);
  } catch (e) {
    rmSync(temp, { force: true });
    throw e;
  }
}

/** Test-only fault injection: MEMGPT_FAULT_KILL_AT=<step>:<point> kills this process at that point of that step's commit. */
function faultPoint(step: number, point: string): void {
  if (process.env.MEMGPT_FAULT_KILL_AT === `${step}:${point}`) process.kill(process.pid, 'SIGKILL');
}

/**
 * Commits the checkpoint of `step` as one unit. `write(model, optimizer)` writes the two files into a temp step
 * folder; the folder is renamed to checkpoints/step-N; checkpoint.json, renamed into place, is the commit; then the
 * top-level model.safetensors is pointed at the new model and the older step folders are removed. A kill at any
 * point leaves either the previous checkpoint or this one, complete.
 */
export function commitCheckpoint(files: RunFiles, step: number, write: (model: string, optimizer: string) => void): void {
  mkdirSync(files.checkpoints, { recursive: true });
  const name = stepFolderName(step);
  const temp = join(files.checkpoints, `.${name}.tmp-${process.pid}`);
  const final = join(files.checkpoints, name);
  rmSync(temp, { recursive: true, force: true });
  mkdirSync(temp);
  write(join(temp, 'model.safetensors'), join(temp, 'optimizer.safetensors'));
  faultPoint(step, 'written');
  const committed = committedCheckpoint(files);
  if (committed && !committed.legacy && committed.step === step) {
    // The same step again (nothing trained since): the committed folder already holds these weights.
    rmSync(temp, { recursive: true, force: true });
    return;
  }
  rmSync(final, { recursive: true, force: true });  // an uncommitted leftover of a killed run
  renameSync(temp, final);
  faultPoint(step, 'renamed');
  writeFileAtomic(files.manifest, JSON.stringify({ format: MANIFEST_FORMAT, step, folder: name }) + '\n');
  faultPoint(step, 'committed');
  // model.safetensors and optimizer.safetensors at the top: hard links to the committed pair (copies where links are
  // not supported), each swapped in by rename, for eval, generate and --init. The manifest, not they, is the checkpoint.
  for (const [file, top] of [['model.safetensors', files.model], ['optimizer.safetensors', files.optimizer]] as const) {
    const link = `${top}.tmp-${process.pid}`;
    rmSync(link, { force: true });
    try {
      linkSync(join(final, file), link);
    } catch {
      copyFileSync(join(final, file), link);
    }
    renameSync(link, top);
    faultPoint(step, `linked-${file.split(".")[0]}`);
  }
  for (const entry of readdirSync(files.checkpoints)) {
    if (entry !== name && /^step-\d+$/.test(entry)) rmSync(join(files.checkpoints, entry), { recursive: true, force: true });
  }
}

/**
 * Removes what killed processes left in the run folder: temp files (`*.tmp-PID…`) and temp or uncommitted step
 * folders. Only the lock holder writes into the folder, so while it is held every temp file is a leftover.
 */
export function clearLeftovers(files: RunFiles): void {
  if (!existsSync(files.dir)) return;
  const isTemp = (name: string) => /\.tmp-\d+/.test(name);
  for (const entry of readdirSync(files.dir)) if (isTemp(entry)) rmSync(join(files.dir, entry), { recursive: true, force: true });
  if (!existsSync(files.checkpoints)) return;
  let keep: string | null = null;
  try {
    const cp = committedCheckpoint(files);
    if (cp && !cp.legacy) keep = stepFolderName(cp.step);
  } catch {
    return;  // an unreadable manifest: leave the step folders for the user (resume will say what is wrong)
  }
  for (const entry of readdirSync(files.checkpoints)) {
    if (isTemp(entry) || (/^step-\d+$/.test(entry) && entry !== keep)) rmSync(join(files.checkpoints, entry), { recursive: true, force: true });
  }
}

/**
 * Keeps the metrics rows of steps up to `step` (a resumed run logs the later steps again) and drops a line torn by a
 * kill in mid-write; rewritten atomically, and only when something is dropped.
 */
export function truncateMetrics(files: RunFiles, step: number): void {
  if (!existsSync(files.metrics)) return;
  const lines = readFileSync(files.metrics, 'utf8').split('\n').filter(Boolean);
  const kept = lines.filter((line) => {
    try {
      const row = JSON.parse(line) as { step?: unknown };
      return typeof row.step === 'number' && row.step <= step;
    } catch {
      return false;
    }
  });
  if (kept.length !== lines.length) writeFileAtomic(files.metrics, kept.map((l) => l + '\n').join(''));
}

// ---------------------------------------------------------------- the lock

interface LockOwner {
  pid: number;
  host: string;
  /** The owner's start time in clock ticks since boot (/proc/PID/stat field 22), so that a reused PID is not taken for it. */
  start: string | null;
}

function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces and parentheses) start after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

function isAlive(owner: LockOwner): boolean {
  if (owner.host !== hostname()) return true;  // another machine's process (a shared filesystem): never assume it dead
  try {
    process.kill(owner.pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return false;
  }
  const start = processStart(owner.pid);
  return owner.start === null || start === null || start === owner.start;
}

function readOwner(path: string): LockOwner | null {
  try {
    const o = JSON.parse(readSmallFile(path, 4096)) as Partial<LockOwner>;
    if (typeof o.pid === 'number' && Number.isSafeInteger(o.pid) && o.pid > 0 && typeof o.host === 'string') {
      return { pid: o.pid, host: o.host, start: typeof o.start === 'string' ? o.start : null };
    }
  } catch {
    // unreadable or torn: treated as stale below
  }
  return null;
}

const held = new Map<string, { count: number }>();

/**
 * An exclusive lock on a run folder: run.lock, created with O_EXCL, holding this process's PID, host and start time.
 * A lock whose process is gone (killed) is stale and taken over. Re-entrant within one process (the CLI and its
 * Trainer both take it); the folder is released when the last holder releases it.
 */
export class RunLock {
  private released = false;

  private constructor(readonly files: RunFiles, private readonly key: string) {}

  /** Folders this process created to lock them: removed again at release if still empty (a refused run leaves none). */
  private static created = new Set<string>();

  static acquire(files: RunFiles, what = 'train'): RunLock {
    const key = resolve(files.dir);
    const mine = held.get(key);
    if (mine) {
      mine.count++;
      return new RunLock(files, key);
    }
    if (!existsSync(files.dir)) {
      mkdirSync(files.dir, { recursive: true });
      RunLock.created.add(key);
    }
    const me: LockOwner = { pid: process.pid, host: hostname(), start: processStart(process.pid) };
    for (let attempt = 0; ; attempt++) {
      try {
        const fd = openSync(files.lock, 'wx', 0o644);
        try {
          writeSync(fd, JSON.stringify(me) + '\n');
          fsyncSync(fd);
        } finally {
          closeSync(fd);
        }
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new MemgptError(`${what}: cannot lock ${files.dir} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
        }
        const owner = readOwner(files.lock);
        if (owner && isAlive(owner)) {
          throw new MemgptError(`${what}: ${files.dir} is in use by process ${owner.pid}${owner.host !== me.host ? ` on ${owner.host}` : ''} ` +
            `(its ${files.lock}); wait for it to end, or give another --out`);
        }
        // Stale (its process is gone): move it aside under a name of our own and try again. Two processes taking
        // over the same stale lock: the second may move the first's new lock aside; it sees that its owner is alive
        // and puts it back, and then refuses as above.
        if (attempt >= 3) throw new MemgptError(`${what}: cannot take the stale lock ${files.lock}; remove it if no training runs in ${files.dir}`);
        const aside = `${files.lock}.stale.tmp-${process.pid}`;
        try {
          renameSync(files.lock, aside);
        } catch {
          continue;  // another process moved it first
        }
        const moved = readOwner(aside);
        if (moved && isAlive(moved)) renameSync(aside, files.lock);
        else rmSync(aside, { force: true });
      }
    }
    held.set(key, { count: 1 });
    clearLeftovers(files);
    return new RunLock(files, key);
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    const mine = held.get(this.key);
    if (!mine || --mine.count > 0) return;
    held.delete(this.key);
    const owner = readOwner(this.files.lock);
    if (owner && owner.pid === process.pid) unlinkSync(this.files.lock);
    if (RunLock.created.delete(this.key)) {
      try {
        rmdirSync(this.files.dir);  // only if empty: a run that wrote nothing leaves no folder
      } catch {
        // it holds the run's files
      }
    }
  }
}
