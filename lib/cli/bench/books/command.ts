// `memgpt bench books`: the long-document language-modelling benchmark. Sets up the corpora (Debian packages,
// cached), runs the grid of variants × seeds × corpora (in parallel child processes with --jobs), appends each
// finished run to the results file, and writes the summary and one plot per corpus and preset beside it.
import { spawn } from 'node:child_process';
import { writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';

import { numThreads, packageRoot } from '../../../native/backend.js';
import { presets, type PresetName, type SpecVersion } from '../../../nn/config.js';
import { choice, int, parse, type Flags } from '../../flags.js';
import { flagTable, specOf } from '../../flag-docs.js';
import { MemgptError } from '../../../core/errors.js';
import { recipeFor } from '../../../train/trainer.js';
import { bookCorpusNames, defaultBooksCache, ensureBookCorpus, type BookCorpusName } from './corpora.js';
import { booksMemoryPlot, booksOffsetPlot, booksPlot, booksVariant, defaultVariants, readResults, runKey, summarize, variantKey, variantNames, writeResults, type VariantName } from './grid.js';
import { runBooks, type BooksRunResult, type BooksRunSpec } from './run.js';

export const booksUsage = `memgpt bench books — stream-mode bits/byte on held-out long documents (Debian's KJV Bible,
Linux kernel documentation, Jane Austen's novels), memory against no memory at equal training tokens

Usage:
  memgpt bench books [--corpus kjv|linux-doc|austen|all|LIST] [--preset tiny|small] [--variants LIST]
                     [--seeds N | --seed-list LIST] [--steps N] [--lr X] [--jobs N] [--out FILE.json]
                     [--eval-bytes N] [--spec-version 1|2] [--cache DIR] [--keep-runs] [--setup] [--json]
  memgpt bench books --merge A.json,B.json --out FILE.json   (runs from several files, e.g. machines)

Flags:
${flagTable('books')}

Variants (default: ${defaultVariants.join(', ')}):
  mem0@kT   memSlots 0 at k times the segment length (mem0@16T: how far back a model of this size uses
            context at all, from its loss by offset)
  S<n>      memory with n slots
  K<n>      n segments a sample (BPTT depth), the batch scaled to keep the tokens a step
  S8r<n>    S8 with n of its slots started as the shift register (default 4); S8u2: S8 with its write
            gates started mostly closed (bias −2, default 0); S8g2: its read gates started at bias +2
            (default 0): ablations of the init
  S8s       S8 trained in stream order (each row's memory carried from batch to batch)
  all:      ${variantNames.join(', ')}`;

const flagSpec = specOf('books');

function parseVariants(flags: Flags): VariantName[] {
  if (typeof flags.variants !== 'string') return [...defaultVariants];
  const names = flags.variants.split(',').map((s) => s.trim()).filter(Boolean);
  for (const n of names) if (!variantNames.includes(n as VariantName)) throw new MemgptError(`--variants: unknown variant '${n}' (${variantNames.join(', ')})`);
  return names as VariantName[];
}

/** The specs of every run the flags ask for, in the order they run (seed-major, so that early results cover all variants). */
function planRuns(flags: Flags): BooksRunSpec[] {
  const corpora = flags.corpus === undefined || flags.corpus === 'all' ? [...bookCorpusNames] : String(flags.corpus).split(',').map((c) => {
    if (!bookCorpusNames.includes(c as BookCorpusName)) throw new MemgptError(`--corpus must be ${bookCorpusNames.join(', ')}, all, or a comma-separated list of them (got '${c}')`);
    return c as BookCorpusName;
  });
  const preset = choice(flags, 'preset', ['tiny', 'small', 'base'] as const, 'tiny') as PresetName;
  // --spec-version 1: the grid on SPEC v1's memory (the diagnosis of why it did not pay); its runs are named "<variant> v1".
  const specVersion = flags['spec-version'] === undefined ? presets[preset].specVersion : Number(flags['spec-version']);
  if (specVersion !== 1 && specVersion !== 2) throw new MemgptError(`--spec-version must be 1 or 2 (got '${String(flags['spec-version'])}')`);
  const base = { ...presets[preset], specVersion: specVersion as SpecVersion };
  const suffix = specVersion === presets[preset].specVersion ? '' : ` v${specVersion}`;
  const recipe = recipeFor(preset);
  const seedList = typeof flags['seed-list'] === 'string'
    ? flags['seed-list'].split(',').map((x) => {
        const n = Number(x);
        if (!Number.isSafeInteger(n) || n < 0) throw new MemgptError(`--seed-list must be comma-separated integers ≥ 0 (got '${String(flags['seed-list'])}')`);
        return n;
      })
    : Array.from({ length: int(flags, 'seeds', 3) }, (_, i) => i);
  const steps = int(flags, 'steps', 3000);
  const lr = flags.lr === undefined ? recipe.lr : Number(flags.lr);
  if (!(lr > 0 && Number.isFinite(lr))) throw new MemgptError(`--lr must be a positive number (got '${String(flags.lr)}')`);
  const evalBytes = int(flags, 'eval-bytes', 0, 0);
  const cache = typeof flags.cache === 'string' ? flags.cache : defaultBooksCache();
  const specs: BooksRunSpec[] = [];
  for (const seed of seedList) {
    for (const corpus of corpora) {
      for (const name of parseVariants(flags)) {
        const variant = { ...booksVariant(name, base, { batch: recipe.batchSize, segments: recipe.segments }), name: name + suffix };
        specs.push({
          corpus, preset, base, variant, seed, steps, lr, warmup: Math.min(recipe.warmup, Math.floor(steps / 10)), evalBytes, cache,
          runDir: join(cache, 'runs', `${corpus}-${preset}-${name.replace('@', '-')}${suffix.replace(' ', '-')}-${steps}-s${seed}`), keepRun: flags['keep-runs'] === true,
        });
      }
    }
  }
  return specs;
}

/** Runs one spec in a child process (so that jobs use separate cores and thread pools); resolves with its result. */
function runInChild(spec: BooksRunSpec, threads: number, log: (line: string) => void): Promise<BooksRunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(packageRoot, 'bin', 'memgpt.js'), 'bench', 'books', '--one', JSON.stringify(spec)], {
      env: { ...process.env, MEMGPT_NUM_THREADS: String(threads) }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '', err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => {
      err += b.toString();
      const lines = err.split('\n');
      err = lines.pop() ?? '';
      for (const l of lines) if (l.startsWith('books ')) log(l);
    });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) return reject(new MemgptError(`books: the run ${spec.corpus} ${spec.variant.name} seed ${spec.seed} failed (exit ${code}): ${err.trim().split('\n').pop() ?? ''}`));
      try {
        resolve(JSON.parse(out.trim().split('\n').pop()!) as BooksRunResult);
      } catch {
        reject(new MemgptError(`books: the run ${spec.corpus} ${spec.variant.name} seed ${spec.seed} printed no result`));
      }
    });
  });
}

/** `memgpt bench books`: returns the exit code. */
export async function booksCommand(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(booksUsage);
    return 0;
  }
  const flags = parse(argv, flagSpec);
  const log = (line: string) => console.error(line);
  if (typeof flags.merge === 'string') {
    // Runs of several results files into one (the later file wins a run both hold), with its summary and plots.
    const out = typeof flags.out === 'string' ? flags.out : 'books-cpu.json';
    const merged = readResults(out);
    const byKey = new Map(merged.runs.map((r) => [runKey({ ...r, steps: r.train.steps }), r]));
    for (const path of flags.merge.split(',')) {
      const part = readResults(path);
      if (part.runs.length === 0) throw new MemgptError(`--merge: ${path} holds no runs`);
      Object.assign(merged.corpora, part.corpora);
      for (const r of part.runs) byKey.set(runKey({ ...r, steps: r.train.steps }), r);
    }
    merged.runs = [...byKey.values()];
    writeResults(out, merged);
    writePlots(out, merged.runs);
    console.log(formatSummary(summarize(merged.runs)));
    return 0;
  }
  if (typeof flags.one === 'string') {
    // A child of --jobs: one run, its result as one JSON line on stdout.
    console.log(JSON.stringify(runBooks(JSON.parse(flags.one) as BooksRunSpec, log)));
    return 0;
  }
  const specs = planRuns(flags);
  const corpusNames = [...new Set(specs.map((s) => s.corpus))];
  const out = typeof flags.out === 'string' ? flags.out : 'books-cpu.json';
  const results = readResults(out);
  for (const name of corpusNames) {
    const c = ensureBookCorpus(name, specs[0]?.cache, log);
    results.corpora[name] = {
      description: c.description, packages: c.packages, train: c.train.length, heldOut: c.heldOut.length,
      heldOutBytes: c.heldOut.reduce((a, d) => a + d.bytes, 0),
    };
  }
  if (flags.setup) {
    for (const name of corpusNames) console.log(`${name}: ${results.corpora[name].description}`);
    return 0;
  }
  const jobs = int(flags, 'jobs', 1);
  const threads = Math.max(1, Math.floor(numThreads() / jobs));
  const done = new Map(results.runs.map((r) => [runKey({ ...r, steps: r.train.steps }), r]));
  const keyOf = (s: BooksRunSpec) => runKey({ corpus: s.corpus, preset: s.preset, variant: s.variant.name, seed: s.seed, steps: s.steps });
  // Variants that train the same model the same way share one run (e.g. the tiny preset's S8 is its K4).
  const sameAs = (s: BooksRunSpec) => specs.find((o) => o.corpus === s.corpus && o.seed === s.seed && variantKey(o.variant) === variantKey(s.variant));
  const pending = specs.filter((s) => !done.has(keyOf(s)) && sameAs(s) === s);
  log(`books: ${specs.length} runs asked for, ${specs.length - pending.length} already in ${out} or shared, ${pending.length} to run, ${jobs} at a time on ${threads} thread${threads > 1 ? 's' : ''} each`);
  const record = (r: BooksRunResult) => {
    results.runs.push(r);
    for (const twin of specs.filter((o) => o !== sameAs(o) && sameAs(o)?.variant.name === r.variant && o.corpus === r.corpus && o.seed === r.seed)) {
      if (!done.has(keyOf(twin))) results.runs.push({ ...r, variant: twin.variant.name });
    }
    writeResults(out, results);
    writePlots(out, results.runs);
    log(`books: ${r.corpus} ${r.preset} ${r.variant} seed ${r.seed}: ${r.bitsPerByte.toFixed(4)} bits/byte (${r.trainSeconds.toFixed(0)} s)`);
  };
  let next = 0;
  const worker = async () => {
    while (next < pending.length) {
      const spec = pending[next++];
      record(jobs > 1 ? await runInChild(spec, threads, log) : runBooks(spec, log));
    }
  };
  await Promise.all(Array.from({ length: Math.min(jobs, pending.length) }, worker));
  writeResults(out, results);
  writePlots(out, results.runs);
  const summary = summarize(results.runs);
  if (flags.json) console.log(JSON.stringify(summary, null, 1));
  else console.log(formatSummary(summary));
  return 0;
}

function writePlots(out: string, runs: BooksRunResult[]): void {
  const summary = summarize(runs);
  const write = (path: string, svg: string) => {
    writeFileSync(`${path}.tmp-${process.pid}`, svg);
    renameSync(`${path}.tmp-${process.pid}`, path);
  };
  for (const key of new Set(summary.map((s) => `${s.corpus}\t${s.preset}`))) {
    const [corpus, preset] = key.split('\t');
    const base = `${out.replace(/\.json$/, '')}-${corpus}-${preset}`;
    write(`${base}.svg`, booksPlot(summary, corpus, preset));
    const memoryVariants = [...new Set(runs.filter((r) => r.corpus === corpus && r.preset === preset && r.seed === 0 && r.config.memSlots > 0).map((r) => r.variant))]
      .filter((v) => v === 'S8' || v === 'S16' || v.endsWith(' v1'));
    if (memoryVariants.length) write(`${base}-memory.svg`, booksMemoryPlot(runs, corpus, preset, memoryVariants));
    const offsets = booksOffsetPlot(runs, corpus, preset);
    if (offsets) write(`${base}-offset.svg`, offsets);
  }
}

export function formatSummary(summary: ReturnType<typeof summarize>): string {
  const lines = ['corpus     preset  steps variant   seeds  bits/byte (±sd)   gain vs mem0@T  4T gap closed  tok/s   MFLOP/tok'];
  for (const s of summary) {
    const gain = s.gainOverMem0AtT === undefined ? '' : `${s.gainOverMem0AtT.toFixed(2)}%`;
    const gap = s.gapTo4TClosed === undefined ? '' : `${(100 * s.gapTo4TClosed).toFixed(0)}%`;
    lines.push(`${s.corpus.padEnd(10)} ${s.preset.padEnd(7)} ${String(s.steps).padStart(5)} ${s.variant.padEnd(9)} ${String(s.seeds.length).padStart(5)}  ${s.bitsPerByte.mean.toFixed(4)} (±${s.bitsPerByte.std.toFixed(4)})  ${gain.padStart(13)}  ${gap.padStart(13)}  ${s.tokensPerSecond.toFixed(0).padStart(6)}  ${(s.flopsPerToken / 1e6).toFixed(2).padStart(9)}`);
  }
  return lines.join('\n');
}
