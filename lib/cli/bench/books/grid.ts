// The books benchmark's comparison grid: which variants run (memory off at T, 2T and 4T; memory with 8, 16, 32
// slots; BPTT depth 2 to 16), all at the same training tokens; the results file (one JSON document, rewritten
// atomically after every run, so that an interrupted benchmark resumes where it stopped); the summary over seeds
// (the memory's gain over memSlots 0 at the same T, and the share of the gap to 4T it closes); and the plot.
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

import type { ModelConfig } from '../../../nn/config.js';
import { MemgptError } from '../../../core/errors.js';
import { lineChart } from '../../../train/plot.js';
import type { BookCorpusName } from './corpora.js';
import type { BooksRunResult, BooksVariant } from './run.js';
import { positionBuckets } from './score.js';

export const variantNames = ['mem0@T', 'mem0@2T', 'mem0@4T', 'mem0@16T', 'S8', 'S16', 'S32', 'K2', 'K4', 'K8', 'K16', 'S8r0', 'S8r2', 'S8u2', 'S8s', 'S8g2'] as const;
export type VariantName = (typeof variantNames)[number];
/** The grid that runs without --variants: memory off at T, 2T and 4T, memory with 8, 16 and 32 slots, BPTT depths 2–16; the init ablations, stream order and mem0@16T run when asked. */
export const defaultVariants: readonly VariantName[] = variantNames.filter((n) => !/[rug]\d+$|s$|16T$/.test(n));

/** The training shape every variant shares: batch × segments × T tokens a step (SPEC §6's benchmark shapes). */
export interface BaseShape {
  batch: number;
  segments: number;
}

/**
 * A variant of the preset at the same tokens per step: memSlots 0 at kT takes 1/k of the segments (or of the batch,
 * when there are too few segments); memory with S slots is the preset at S; BPTT depth K scales the batch by K₀/K.
 */
export function booksVariant(name: VariantName, cfg: ModelConfig, shape: BaseShape): BooksVariant {
  const { segmentLen: T, memSlots: S } = cfg;
  const perStep = shape.batch * shape.segments * T;
  const widen = (k: number): BooksVariant => {
    const segments = Math.max(1, Math.floor(shape.segments / k));
    const batch = perStep / (segments * k * T);
    if (!Number.isInteger(batch)) throw new MemgptError(`books: ${name} cannot keep ${perStep} tokens a step`);
    return { name, memSlots: 0, segmentLen: k * T, segments, batch };
  };
  if (name === 'mem0@T') return { name, memSlots: 0, segmentLen: T, segments: shape.segments, batch: shape.batch };
  if (name === 'mem0@2T') return widen(2);
  if (name === 'mem0@4T') return widen(4);
  // How much context a model of this size uses at all, when its attention sees 16 segments: the loss by offset.
  if (name === 'mem0@16T') return widen(16);
  // S8r<n>: S8 with n slots of ptr.pos started as the shift register instead of ⌈S/2⌉ (the pass-key seed that never learned).
  const register = /^S(\d+)r(\d+)$/.exec(name);
  // S8u2: S8 with its write gates started mostly closed (mem.update.bias −2, σ ≈ 0.12) instead of half open.
  if (name === 'S8u2') return { name, memSlots: 8, segmentLen: T, segments: shape.segments, batch: shape.batch, writeGateBias: -2 };
  // S8g2: S8 with its read gates started at bias +2 instead of 0 (a larger share of the joint softmax for the memory).
  if (name === 'S8g2') return { name, memSlots: 8, segmentLen: T, segments: shape.segments, batch: shape.batch, readGateBias: 2 };
  // S8s: S8 trained in stream order, each row's memory carried from one batch to the next (lib/data/stream.ts).
  if (name === 'S8s') return { name, memSlots: 8, segmentLen: T, segments: shape.segments, batch: shape.batch, order: 'stream' };
  if (register) return { name, memSlots: Number(register[1]), segmentLen: T, segments: shape.segments, batch: shape.batch, registerSlots: Number(register[2]) };
  if (name.startsWith('S')) return { name, memSlots: Number(name.slice(1)), segmentLen: T, segments: shape.segments, batch: shape.batch };
  const K = Number(name.slice(1));
  const batch = (shape.batch * shape.segments) / K;
  if (!Number.isInteger(batch) || batch < 1) throw new MemgptError(`books: ${name} cannot keep ${perStep} tokens a step with a batch of ${shape.batch} × ${shape.segments} segments`);
  return { name, memSlots: S, segmentLen: T, segments: K, batch };
}

/** Two variants that train the same model the same way (the preset's S8 is also its K4, say) run once. */
export function variantKey(v: BooksVariant): string {
  return `S${v.memSlots}-T${v.segmentLen}-K${v.segments}-B${v.batch}${v.registerSlots !== undefined ? `-R${v.registerSlots}` : ''}${v.writeGateBias !== undefined ? `-U${v.writeGateBias}` : ''}${v.readGateBias !== undefined ? `-G${v.readGateBias}` : ''}${v.order ? `-${v.order}` : ''}`;
}

export interface BooksResults {
  format: 1;
  benchmark: 'books';
  /** The corpora used, with their Debian packages and documents. */
  corpora: Record<string, { description: string; packages: { name: string; version: string }[]; train: number; heldOut: number; heldOutBytes: number }>;
  runs: BooksRunResult[];
  summary?: BooksSummary[];
}

export interface BooksSummary {
  corpus: string;
  preset: string;
  steps: number;
  variant: string;
  seeds: number[];
  bitsPerByte: { mean: number; std: number };
  byPosition: { name: string; mean: number }[];
  tokensPerSecond: number;
  flopsPerToken: number;
  /** Memory variants: 1 − bpb / bpb(mem0@T), in percent, per seed-mean; and the share of the mem0@T → mem0@4T gap closed. */
  gainOverMem0AtT?: number;
  gapTo4TClosed?: number;
  /** Per position bucket: the gain over mem0@T in percent. */
  gainByPosition?: { name: string; gain: number }[];
}

export function readResults(path: string): BooksResults {
  if (!existsSync(path)) return { format: 1, benchmark: 'books', corpora: {}, runs: [] };
  let parsed: BooksResults;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8')) as BooksResults;
  } catch (e) {
    throw new MemgptError(`books: ${path} is not valid JSON (${(e as Error).message}); move it away to start afresh`);
  }
  if (parsed?.benchmark !== 'books' || !Array.isArray(parsed.runs)) throw new MemgptError(`books: ${path} is not a books benchmark results file`);
  return parsed;
}

export function writeResults(path: string, results: BooksResults): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, JSON.stringify({ ...results, summary: summarize(results.runs) }, null, 1) + '\n');
  renameSync(tmp, path);
}

/** The identity of a run in the results file: a finished run with the same key is not run again. */
export function runKey(r: { corpus: string; preset: string; variant: string; seed: number; steps: number }): string {
  return `${r.corpus}/${r.preset}/${r.variant}/${r.steps}/${r.seed}`;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const std = (xs: number[]) => (xs.length > 1 ? Math.sqrt(xs.reduce((a, x) => a + (x - mean(xs)) ** 2, 0) / (xs.length - 1)) : 0);

/** Means over seeds per (corpus, preset, steps, variant), with the memory's gains. */
export function summarize(runs: BooksRunResult[]): BooksSummary[] {
  const groups = new Map<string, BooksRunResult[]>();
  for (const r of runs) {
    const key = `${r.corpus}/${r.preset}/${r.train.steps}/${r.variant}`;
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  const out: BooksSummary[] = [];
  for (const rs of groups.values()) {
    const r0 = rs[0];
    out.push({
      corpus: r0.corpus, preset: r0.preset, steps: r0.train.steps, variant: r0.variant, seeds: rs.map((r) => r.seed).sort((a, b) => a - b),
      bitsPerByte: { mean: mean(rs.map((r) => r.bitsPerByte)), std: std(rs.map((r) => r.bitsPerByte)) },
      byPosition: positionBuckets.map((b, i) => ({ name: b.name, mean: mean(rs.map((r) => r.byPosition[i].bitsPerByte)) })),
      tokensPerSecond: mean(rs.map((r) => r.tokensPerSecond)), flopsPerToken: r0.flopsPerToken,
    });
  }
  for (const s of out) {
    if (s.variant.startsWith('mem0')) continue;
    const find = (v: string) => out.find((o) => o.corpus === s.corpus && o.preset === s.preset && o.steps === s.steps && o.variant === v);
    // (memSlots 0 computes the same function in either SPEC version: the v1 runs compare against the same baselines.)
    const base = find('mem0@T'), wide = find('mem0@4T');
    if (base) {
      s.gainOverMem0AtT = 100 * (1 - s.bitsPerByte.mean / base.bitsPerByte.mean);
      s.gainByPosition = s.byPosition.map((b, i) => ({ name: b.name, gain: 100 * (1 - b.mean / base.byPosition[i].mean) }));
    }
    if (base && wide) s.gapTo4TClosed = (base.bitsPerByte.mean - s.bitsPerByte.mean) / (base.bitsPerByte.mean - wide.bitsPerByte.mean);
  }
  return out.sort((a, b) => (a.corpus + a.preset + a.steps + a.variant < b.corpus + b.preset + b.steps + b.variant ? -1 : 1));
}

/** Bits per byte by position in the document, one line per variant (seed means), one chart per corpus and preset. */
export function booksPlot(summary: BooksSummary[], corpus: string, preset: string): string {
  const rows = summary.filter((s) => s.corpus === corpus && s.preset === preset);
  const series = rows.map((s) => ({
    name: `${s.variant} ${s.bitsPerByte.mean.toFixed(3)}`,
    points: s.byPosition.map((b, i) => [i + 1, b.mean] as [number, number]),
  }));
  return lineChart(series, {
    title: `${corpus}, ${preset}: held-out bits/byte by segment of the document (1, 2-4, 5-16, 17-64, 65+)`,
    xLabel: 'position bucket', yLabel: 'bits/byte', width: 820,
  });
}

/**
 * How much context each variant uses: held-out bits/byte by offset t inside the segment (seed 0, the runs that measured
 * it), averaged over the offsets of each power-of-two band (t = 0, 1, 2–3, 4–7, …). A curve flattens where more of
 * the segment no longer helps; the memory variants start lower at t = 0, where the memory is all the context there is.
 */
export function booksOffsetPlot(runs: BooksRunResult[], corpus: string, preset: string): string | null {
  const withOffsets = runs.filter((r) => r.corpus === corpus && r.preset === preset && r.seed === 0 && r.byOffset?.length);
  if (!withOffsets.length) return null;
  const series = withOffsets.map((r) => ({
    name: `${r.variant} (T ${r.config.segmentLen})`,
    points: offsetBands(r.byOffset!),
  }));
  return lineChart(series, {
    title: `${corpus}, ${preset}: held-out bits/byte by offset t in the segment, bands t = 0, 1, 2-3, 4-7, ... (seed 0)`,
    xLabel: 'band k: offsets 2^(k-1) … 2^k − 1 (k = 0: t = 0)', yLabel: 'bits/byte', width: 900,
  });
}

/** [band k, mean of the finite values at offsets 2^(k−1) … 2^k − 1] (band 0: offset 0). */
export function offsetBands(byOffset: readonly number[]): [number, number][] {
  const out: [number, number][] = [];
  for (let k = 0, lo = 0; lo < byOffset.length; k++, lo = 2 ** (k - 1)) {
    const values = byOffset.slice(lo, Math.min(byOffset.length, 2 ** k)).filter(Number.isFinite);
    if (values.length) out.push([k, values.reduce((a, b) => a + b, 0) / values.length]);
  }
  return out;
}

/**
 * The memory over training for the memory variants asked for (seed 0): each layer's read gate, write gate and
 * pointer entropy ÷ ln T per logged step — where v1's write gate closes and v2's memory stays in use.
 */
export function booksMemoryPlot(runs: BooksRunResult[], corpus: string, preset: string, variants: string[]): string {
  const series = [];
  for (const r of runs.filter((x) => x.corpus === corpus && x.preset === preset && x.seed === 0 && variants.includes(x.variant))) {
    const logged = r.diagnostics.filter((d) => d.memory?.length);
    const lnT = Math.log(r.config.segmentLen);
    for (let l = 0; l < (logged[0]?.memory?.length ?? 0); l++) {
      series.push({ name: `${r.variant} L${l} read`, points: logged.map((d) => [d.step, d.memory![l].readGate] as [number, number]) });
      series.push({ name: `${r.variant} L${l} write`, points: logged.map((d) => [d.step, d.memory![l].writeGate] as [number, number]) });
      series.push({ name: `${r.variant} L${l} ptr H/lnT`, points: logged.map((d) => [d.step, d.memory![l].pointerEntropy / lnT] as [number, number]) });
    }
  }
  return lineChart(series, { title: `${corpus}, ${preset}: read gate, write gate, pointer entropy ÷ ln T over training (seed 0)`, xLabel: 'step', yLabel: 'gate / entropy', width: 900 });
}
