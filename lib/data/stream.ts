// Batches for stream training (SPEC §4, "Stream training"): each batch row is a lane that reads a run of
// consecutive samples of one document, so that the memory a sample ends with is the memory the next sample
// of its lane starts from. Runs (up to runSamples samples each, cut from the documents' starts) are drawn
// in a seeded random order per epoch; a lane whose run ends takes the next run and starts from mem.init.
// Its state is a small JSON object, so that a resumed run draws exactly the batches an uninterrupted one would.
import { MemgptError } from '../errors.js';
import type { Corpus } from './corpus.js';
import { epochPermutation, samplesIn } from './sampler.js';

export interface StreamSamplerOptions {
  /** Batch rows, each reading its own run. */
  lanes: number;
  segments: number;
  segmentLen: number;
  /** Samples in a run: the memory is carried across at most this many samples, then starts again from mem.init. */
  runSamples: number;
  seed: number;
}

export interface StreamBatch {
  /** lanes × (N + 1) tokens: row i is lane i's sample, its inputs followed by its last target. */
  tokens: Int32Array;
  /** lanes × N: 1 where the target counts, or null when every target counts. */
  mask: Float32Array | null;
  /** Per lane: true when this sample starts a run (its memory starts from mem.init). */
  reset: boolean[];
  epoch: number;
}

export interface StreamSamplerState {
  order: 'stream';
  seed: number;
  lanes: number;
  sampleLen: number;
  runSamples: number;
  runs: number;
  epoch: number;
  /** Runs of this epoch's order already handed to a lane. */
  next: number;
  /** Per lane: the run it reads (an index into the runs) and the sample of that run it reads next. */
  position: { run: number; sample: number }[];
}

interface Run {
  /** Token index of the run's first sample. */
  start: number;
  samples: number;
}

/** The runs of a corpus: each document's samples from its start, in runs of up to runSamples. */
export function streamRuns(corpus: Corpus, sampleLen: number, runSamples: number): Run[] {
  const n = corpus.tokens.length;
  const starts = corpus.documentStarts?.length ? Array.from(corpus.documentStarts) : [0];
  const runs: Run[] = [];
  starts.forEach((s, d) => {
    const end = d + 1 < starts.length ? starts[d + 1] : n;
    const samples = samplesIn(end - s, sampleLen);
    for (let first = 0; first < samples; first += runSamples) {
      runs.push({ start: s + first * sampleLen, samples: Math.min(runSamples, samples - first) });
    }
  });
  return runs;
}

export class StreamSampler {
  readonly sampleLen: number;
  readonly runs: Run[];
  /** Samples in one pass over every run (an epoch's worth of lane-samples). */
  readonly samplesPerEpoch: number;
  private readonly options: StreamSamplerOptions;
  private epoch = 0;
  private next = 0;
  private position: { run: number; sample: number }[] = [];
  private permutation: Uint32Array | null = null;

  constructor(private readonly corpus: Corpus, options: StreamSamplerOptions) {
    for (const key of ['lanes', 'segments', 'segmentLen', 'runSamples'] as const) {
      if (!Number.isSafeInteger(options[key]) || options[key] < 1) throw new MemgptError(`stream sampler: ${key} must be a positive integer, got ${options[key]}`);
    }
    if (!Number.isSafeInteger(options.seed)) throw new MemgptError(`stream sampler: seed must be an integer, got ${options.seed}`);
    this.options = { ...options };
    this.sampleLen = options.segments * options.segmentLen;
    this.runs = streamRuns(corpus, this.sampleLen, options.runSamples);
    this.samplesPerEpoch = this.runs.reduce((a, r) => a + r.samples, 0);
    if (this.runs.length < options.lanes) {
      throw new MemgptError(
        `${corpus.source}: its documents hold ${this.runs.length} runs of samples of ${options.segments} × ${options.segmentLen} tokens, ` +
          `fewer than the ${options.lanes} batch rows that stream training reads side by side (use a smaller batch, shorter samples or more text)`,
      );
    }
  }

  private takeRun(): number {
    if (this.next === this.runs.length) {
      this.epoch++;
      this.next = 0;
      this.permutation = null;
    }
    const perm = (this.permutation ??= epochPermutation(this.runs.length, this.options.seed, this.epoch));
    return perm[this.next++];
  }

  /** The next sample of every lane. */
  nextBatch(): StreamBatch {
    const { lanes } = this.options;
    const N = this.sampleLen;
    if (this.position.length === 0) for (let i = 0; i < lanes; i++) this.position.push({ run: this.takeRun(), sample: 0 });
    const tokens = new Int32Array(lanes * (N + 1));
    const lossMask = this.corpus.lossMask;
    const mask = lossMask ? new Float32Array(lanes * N) : null;
    const reset: boolean[] = [];
    const epoch = this.epoch;
    for (let i = 0; i < lanes; i++) {
      let p = this.position[i];
      if (p.sample === this.runs[p.run].samples) p = this.position[i] = { run: this.takeRun(), sample: 0 };
      const start = this.runs[p.run].start + p.sample * N;
      tokens.set(this.corpus.tokens.subarray(start, start + N + 1), i * (N + 1));
      if (mask) for (let t = 0; t < N; t++) mask[i * N + t] = lossMask![start + 1 + t];
      reset.push(p.sample === 0);
      p.sample++;
    }
    return { tokens, mask, reset, epoch };
  }

  state(): StreamSamplerState {
    const { seed, lanes, runSamples } = this.options;
    return {
      order: 'stream', seed, lanes, sampleLen: this.sampleLen, runSamples, runs: this.runs.length,
      epoch: this.epoch, next: this.next, position: this.position.map((p) => ({ ...p })),
    };
  }

  /** Restores a position saved by state(); the sampler must have been built with the same data and options. */
  setState(s: StreamSamplerState): void {
    const mine = this.state();
    for (const key of ['order', 'seed', 'lanes', 'sampleLen', 'runSamples', 'runs'] as const) {
      if (s?.[key] !== mine[key]) {
        throw new MemgptError(`stream sampler state: ${key} is ${JSON.stringify(s?.[key])} but this sampler has ${JSON.stringify(mine[key])} (resumed with different data or options?)`);
      }
    }
    const okPosition = Array.isArray(s.position) && (s.position.length === 0 || s.position.length === this.options.lanes) &&
      s.position.every((p) => Number.isSafeInteger(p?.run) && p.run >= 0 && p.run < this.runs.length && Number.isSafeInteger(p.sample) && p.sample >= 0 && p.sample <= this.runs[p.run].samples);
    if (!Number.isSafeInteger(s.epoch) || s.epoch < 0 || !Number.isSafeInteger(s.next) || s.next < 0 || s.next > this.runs.length || !okPosition) {
      throw new MemgptError('stream sampler state: a position outside the corpus (resumed with different data?)');
    }
    this.epoch = s.epoch;
    this.next = s.next;
    this.position = s.position.map((p) => ({ ...p }));
    this.permutation = null;
  }
}
