// Batches of sample windows (SPEC §4): sample j is t[jN … jN+N] (N inputs, targets shifted by one).
// Sequential or seeded-random order, or stream order (lanes that read whole documents, for training with the
// memory carried across batches: stream.ts); its state is a small JSON object so that a resumed run draws
// exactly the batches that an uninterrupted one would.
import { MemgptError } from '../core/errors.js';
import { Rng } from '../core/random.js';
import type { Corpus } from './corpus.js';
import { documentSpans, gatherStreamBatch, piecesIn, streamLayout, type StreamLayout } from './stream.js';

/** How batches are drawn: windows in a seeded random order, windows in corpus order, or lanes of whole documents. */
export type SampleOrder = 'random' | 'sequential' | 'stream';

export interface SamplerOptions {
  batchSize: number;
  segments: number;
  segmentLen: number;
  order: SampleOrder;
  seed: number;
}

export interface Batch {
  /** batch × (N + 1) tokens: row i is sample i's inputs followed by its last target. */
  tokens: Int32Array;
  /** batch × N: 1 where the target counts, or null when every target counts. */
  mask: Float32Array | null;
  /** The epoch this batch belongs to (0-based). */
  epoch: number;
  /** Stream order only: per row, 1 where its memory starts from mem.init (the row starts a document or a lane), 0 where it carries on. */
  reset?: Uint8Array;
}

/** Where a sampler stands; plain JSON. */
export interface SamplerState {
  order: SampleOrder;
  seed: number;
  batchSize: number;
  sampleLen: number;
  samplesPerEpoch: number;
  epoch: number;
  /** Batches already drawn in this epoch. */
  batch: number;
}

/** Samples a corpus of n tokens holds for N-token inputs: those j with jN + N + 1 ≤ n. */
export function samplesIn(tokenCount: number, sampleLen: number): number {
  return tokenCount < sampleLen + 1 ? 0 : Math.floor((tokenCount - 1) / sampleLen);
}

function checkPositiveInt(value: number, name: string): void {
  if (!Number.isSafeInteger(value) || value < 1) throw new MemgptError(`sampler: ${name} must be a positive integer, got ${value}`);
}

/** Copies samples js into a batch (tokens and, when the corpus has one, the target mask). */
export function gatherSamples(corpus: Corpus, sampleLen: number, js: ArrayLike<number>): { tokens: Int32Array; mask: Float32Array | null } {
  const N = sampleLen;
  const tokens = new Int32Array(js.length * (N + 1));
  const mask = corpus.lossMask ? new Float32Array(js.length * N) : null;
  for (let i = 0; i < js.length; i++) {
    const start = js[i] * N;
    tokens.set(corpus.tokens.subarray(start, start + N + 1), i * (N + 1));
    if (mask) {
      const m = corpus.lossMask!;
      for (let p = 0; p < N; p++) mask[i * N + p] = m[start + 1 + p];
    }
  }
  return { tokens, mask };
}

/**
 * Draws batches of B samples, whole batches only: an epoch is floor(samples / B) batches and the
 * samples left over are skipped that epoch (in random order, different ones each epoch).
 */
export class BatchSampler {
  readonly samplesPerEpoch: number;
  readonly batchesPerEpoch: number;
  readonly sampleLen: number;
  private readonly options: SamplerOptions;
  private epoch = 0;
  private batch = 0;
  private permutation: Uint32Array | null = null; // of the current epoch, random order only
  private readonly spans: { start: number; end: number }[] = []; // the documents, stream order only
  private layout: StreamLayout | null = null; // of the current epoch, stream order only

  constructor(private readonly corpus: Corpus, options: SamplerOptions) {
    checkPositiveInt(options.batchSize, 'batchSize');
    checkPositiveInt(options.segments, 'segments');
    checkPositiveInt(options.segmentLen, 'segmentLen');
    if (options.order !== 'random' && options.order !== 'sequential' && options.order !== 'stream') {
      throw new MemgptError(`sampler: order must be "random", "sequential" or "stream", got ${JSON.stringify(options.order)}`);
    }
    if (!Number.isSafeInteger(options.seed)) throw new MemgptError(`sampler: seed must be an integer, got ${options.seed}`);
    if (corpus.lossMask && corpus.lossMask.length !== corpus.tokens.length) {
      throw new MemgptError(`${corpus.source}: loss mask has ${corpus.lossMask.length} entries for ${corpus.tokens.length} tokens`);
    }
    this.options = { ...options };
    const N = options.segments * options.segmentLen;
    const n = corpus.tokens.length;
    this.sampleLen = N;
    if (options.order === 'stream') this.spans = documentSpans(corpus);
    this.samplesPerEpoch = options.order === 'stream' ? this.spans.reduce((a, d) => a + piecesIn(d.end - d.start, N), 0) : samplesIn(n, N);
    if (this.samplesPerEpoch === 0) {
      throw new MemgptError(
        `${corpus.source}: ${n} tokens is too short for one sample of ${options.segments} × ${options.segmentLen} tokens (needs ${N + 1})`,
      );
    }
    if (this.samplesPerEpoch < options.batchSize) {
      throw new MemgptError(
        `${corpus.source}: ${n} tokens hold ${this.samplesPerEpoch} samples of ${N} tokens, fewer than the batch size ${options.batchSize} ` +
          `(a batch needs ${options.batchSize * N + 1} tokens)`,
      );
    }
    this.batchesPerEpoch = Math.floor(this.samplesPerEpoch / options.batchSize);
  }

  next(): Batch {
    if (this.options.order === 'stream') return this.nextStream();
    const B = this.options.batchSize;
    const first = this.batch * B;
    const js = new Uint32Array(B);
    if (this.options.order === 'sequential') {
      for (let i = 0; i < B; i++) js[i] = first + i;
    } else {
      const perm = (this.permutation ??= epochPermutation(this.samplesPerEpoch, this.options.seed, this.epoch));
      js.set(perm.subarray(first, first + B));
    }
    const { tokens, mask } = gatherSamples(this.corpus, this.sampleLen, js);
    const epoch = this.epoch;
    if (++this.batch === this.batchesPerEpoch) {
      this.batch = 0;
      this.epoch++;
      this.permutation = null;
    }
    return { tokens, mask, epoch };
  }

  private nextStream(): Batch {
    this.layout ??= streamLayout(this.spans, epochPermutation(this.spans.length, this.options.seed, this.epoch), this.sampleLen, this.options.batchSize);
    const batch = { ...gatherStreamBatch(this.corpus, this.layout, this.sampleLen, this.batch), epoch: this.epoch };
    if (++this.batch === this.batchesPerEpoch) {
      this.batch = 0;
      this.epoch++;
      this.layout = null;
    }
    return batch;
  }

  state(): SamplerState {
    const { order, seed, batchSize } = this.options;
    return { order, seed, batchSize, sampleLen: this.sampleLen, samplesPerEpoch: this.samplesPerEpoch, epoch: this.epoch, batch: this.batch };
  }

  /** Restores a position saved by state(); the sampler must have been built with the same data and options. */
  setState(s: SamplerState): void {
    const mine = this.state();
    for (const key of ['order', 'seed', 'batchSize', 'sampleLen', 'samplesPerEpoch'] as const) {
      if (s?.[key] !== mine[key]) {
        throw new MemgptError(
          `sampler state: ${key} is ${JSON.stringify(s?.[key])} but this sampler has ${JSON.stringify(mine[key])} (resumed with different data or options?)`,
        );
      }
    }
    if (!Number.isSafeInteger(s.epoch) || s.epoch < 0 || !Number.isSafeInteger(s.batch) || s.batch < 0 || s.batch >= this.batchesPerEpoch) {
      throw new MemgptError(`sampler state: bad position epoch ${s.epoch}, batch ${s.batch} (an epoch has ${this.batchesPerEpoch} batches)`);
    }
    this.epoch = s.epoch;
    this.batch = s.batch;
    this.permutation = null;
    this.layout = null;
  }
}

/** A Fisher–Yates permutation of 0 … n−1 that depends only on (seed, epoch), so any epoch can be rebuilt. */
export function epochPermutation(n: number, seed: number, epoch: number): Uint32Array {
  const rng = new Rng(mixSeed(seed, epoch));
  const perm = new Uint32Array(n);
  for (let i = 0; i < n; i++) perm[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const k = rng.int(i + 1);
    const t = perm[i];
    perm[i] = perm[k];
    perm[k] = t;
  }
  return perm;
}

// A hash of (seed, epoch) to one 32-bit seed (murmur3 finaliser), so that neighbouring epochs and
// seeds get unrelated generators rather than shifted copies of one splitmix sequence.
function mixSeed(seed: number, epoch: number): number {
  let h = (Math.imul(seed | 0, 0x9e3779b1) ^ Math.imul(epoch + 1, 0x85ebca77) ^ Math.floor(seed / 4294967296)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * Every sample of a corpus in order, in batches of up to batchSize (the last may be smaller):
 * what evaluation wants, as opposed to the training sampler's whole batches.
 */
export function* sequentialBatches(corpus: Corpus, sampleLen: number, batchSize: number): Generator<{ tokens: Int32Array; mask: Float32Array | null; count: number }> {
  checkPositiveInt(sampleLen, 'sampleLen');
  checkPositiveInt(batchSize, 'batchSize');
  const total = samplesIn(corpus.tokens.length, sampleLen);
  if (total === 0) {
    throw new MemgptError(`${corpus.source}: ${corpus.tokens.length} tokens is too short for one sample of ${sampleLen} tokens (needs ${sampleLen + 1})`);
  }
  for (let first = 0; first < total; first += batchSize) {
    const count = Math.min(batchSize, total - first);
    const js = new Uint32Array(count);
    for (let i = 0; i < count; i++) js[i] = first + i;
    yield { ...gatherSamples(corpus, sampleLen, js), count };
  }
}
