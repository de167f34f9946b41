// Stream-mode scoring of whole documents (SPEC §4) for the books benchmark: each document read from its
// start with the memory carried across every segment, the loss kept per segment so that it can be shown by
// position in the document, and the memory probes (reset, or swap in another document's memory, mid-stream).
import { noGrad } from '../../../core/autograd.js';
import { MemgptError } from '../../../core/errors.js';
import type { MemGPT } from '../../../nn/model.js';
import { keep, tensor, tidy, type Tensor } from '../../../core/tensor.js';

/** Buckets of the segment index in the document (1-based, inclusive): the first segment, 2–4, 5–16, 17–64, 65+. */
export const positionBuckets = [
  { name: '1', from: 1, to: 1 },
  { name: '2-4', from: 2, to: 4 },
  { name: '5-16', from: 5, to: 16 },
  { name: '17-64', from: 17, to: 64 },
  { name: '65+', from: 65, to: Infinity },
] as const;

export interface BucketLoss {
  name: string;
  /** Mean −log P over the predicted tokens of the bucket, nats. */
  loss: number;
  tokens: number;
}

export interface DocumentScore {
  nllSum: number;
  tokens: number;
  /** Per segment of the document: the sum of −log P over its predicted tokens. */
  segmentNll: number[];
  segmentTokens: number[];
  /** Per position inside a segment (0 … T−1): the sum of −log P over the document's tokens at that offset. */
  offsetNll: number[];
  offsetTokens: number[];
}

/** What to do with the memory at a segment boundary: keep it (the model's function), reset it, or replace it. */
export type MemoryHook = (segment: number, memory: Tensor[]) => Tensor[] | null;

/**
 * Streams tokens through the model one segment at a time (batch 1), memory carried (SPEC §4 stream mode), and
 * keeps the loss of every segment. `hook`, when given, may replace the memory before a segment (a probe);
 * `onMemory` sees the memory after each segment (for a probe to copy it).
 */
export function scoreDocument(
  model: MemGPT, tokens: Int32Array, options: { maxTokens?: number; hook?: MemoryHook; onMemory?: (segment: number, memory: Tensor[]) => void } = {},
): DocumentScore {
  const n = Math.min(tokens.length, (options.maxTokens ?? Infinity) + 1);
  if (n < 2) throw new MemgptError(`books: a document needs at least 2 tokens (got ${n})`);
  const T = model.config.segmentLen, device = model.device;
  let memory = noGrad(() => model.initialMemory(1)).map((m) => keep(m));
  const segmentNll: number[] = [], segmentTokens: number[] = [];
  const offsetNll = new Array<number>(T).fill(0), offsetTokens = new Array<number>(T).fill(0);
  let nllSum = 0;
  try {
    for (let start = 0, seg = 0; start < n - 1; start += T, seg++) {
      if (options.hook) {
        const replaced = options.hook(seg, memory);
        if (replaced) {
          for (const m of memory) m.dispose();
          memory = replaced.map((m) => keep(m));
        }
      }
      const len = Math.min(T, n - 1 - start);
      const ids = (shift: number) => tensor(tokens.subarray(start + shift, start + shift + len), [1, len], { dtype: 'int32', device });
      const out = noGrad(() =>
        tidy(() => {
          const x = ids(0);
          const s = model.segment(x, memory);
          return { nll: model.segmentNLL(s.hf, x, ids(1)), memory: s.memory };
        }),
      );
      const perToken = out.nll.toArray();
      out.nll.dispose();
      let nll = 0;
      for (let t = 0; t < len; t++) {
        nll += perToken[t];
        offsetNll[t] += perToken[t];
        offsetTokens[t]++;
      }
      for (const m of memory) m.dispose();
      memory = out.memory.map((m) => keep(m));
      options.onMemory?.(seg, memory);
      segmentNll.push(nll);
      segmentTokens.push(len);
      nllSum += nll;
    }
  } finally {
    for (const m of memory) m.dispose();
  }
  return { nllSum, tokens: n - 1, segmentNll, segmentTokens, offsetNll, offsetTokens };
}

/** The loss by position bucket, summed over documents (segments counted from each document's start). */
export function bucketLosses(scores: readonly DocumentScore[], offset = 0): BucketLoss[] {
  return positionBuckets.map((b) => {
    let nll = 0, tokens = 0;
    for (const s of scores) {
      for (let i = 0; i < s.segmentNll.length; i++) {
        const pos = i + 1 - offset;
        if (pos >= b.from && pos <= b.to) {
          nll += s.segmentNll[i];
          tokens += s.segmentTokens[i];
        }
      }
    }
    return { name: b.name, loss: tokens ? nll / tokens : NaN, tokens };
  });
}

/** A copy of each layer's memory, kept out of every tidy scope. */
function copyMemory(memory: readonly Tensor[]): Tensor[] {
  return memory.map((m) => keep(tensor(m.toArray() as Float32Array, m.shape, { device: m.device })));
}

export interface MemoryProbeResult {
  /** The segment of document A before which the memory was changed (0-based). */
  atSegment: number;
  /** Mean −log P over the segments after the change, unchanged / memory reset to mem.init / memory of document B. */
  lossCarried: number;
  lossReset: number;
  lossSwapped: number;
  /** The same three by distance from the change (segments after it: 1, 2–4, 5–16, 17–64, 65+). */
  byDistance: { name: string; carried: number; reset: number; swapped: number; tokens: number }[];
}

/**
 * The memory probe: reads document A to segment k, then goes on (a) with its own memory, (b) with the memory
 * reset to mem.init, (c) with the memory document B had after its own k segments. If the memory holds what A
 * was about, (b) and (c) cost loss on what follows, and the cost fades with the distance from the change.
 */
export function memoryProbe(model: MemGPT, a: Int32Array, b: Int32Array, atSegment: number, maxTokens?: number): MemoryProbeResult {
  const T = model.config.segmentLen;
  if (b.length < atSegment * T + 1) throw new MemgptError(`books: the probe's second document is shorter than ${atSegment} segments`);
  let fromB: Tensor[] | null = null;
  if (atSegment === 0) fromB = noGrad(() => model.initialMemory(1)).map((m) => keep(m)); // B's memory before any segment
  else scoreDocument(model, b, { maxTokens: atSegment * T, onMemory: (seg, m) => { if (seg === atSegment - 1) fromB = copyMemory(m); } });
  const swapTo = fromB as Tensor[] | null;
  if (!swapTo) throw new MemgptError('books: the probe could not read the second document');
  try {
    const carried = scoreDocument(model, a, { maxTokens });
    const reset = scoreDocument(model, a, { maxTokens, hook: (seg) => (seg === atSegment ? noGrad(() => model.initialMemory(1)) : null) });
    const swapped = scoreDocument(model, a, { maxTokens, hook: (seg) => (seg === atSegment ? copyMemory(swapTo) : null) });
    const after = (s: DocumentScore) => {
      let nll = 0, tokens = 0;
      for (let i = atSegment; i < s.segmentNll.length; i++) {
        nll += s.segmentNll[i];
        tokens += s.segmentTokens[i];
      }
      return nll / tokens;
    };
    const [bc, br, bs] = [carried, reset, swapped].map((s) => bucketLosses([s], atSegment));
    return {
      atSegment, lossCarried: after(carried), lossReset: after(reset), lossSwapped: after(swapped),
      byDistance: bc.map((c, i) => ({ name: c.name, carried: c.loss, reset: br[i].loss, swapped: bs[i].loss, tokens: c.tokens })),
    };
  } finally {
    for (const m of swapTo) m.dispose();
  }
}
