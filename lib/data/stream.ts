// Stream order for training with the memory carried across batches: each batch row is a lane that reads
// documents from their start, one sample of N tokens after another, so that the model is trained on the memory
// states that stream-mode evaluation and generation give it (state passing with truncated backpropagation, as
// Transformer-XL and the Block-Recurrent Transformer train). A sample never spans two documents: each document
// is cut into samples from its first token, the last one padded and masked, and a row whose sample starts a
// document (or starts the lane) has its memory reset to mem.init.
import { MemgptError } from '../core/errors.js';
import type { Corpus } from './corpus.js';

/** One epoch's lanes: piece p of lane b is the sample of batch p in row b. */
export interface StreamLayout {
  /** Batches in the epoch (samples a lane reads). */
  batches: number;
  /** Per lane and batch (lane-major, lanes × batches): the first input token of the piece in the corpus. */
  start: Int32Array;
  /** The same: where the piece's document ends (exclusive); inputs and targets past it are padding. */
  end: Int32Array;
  /** The same: 1 where the piece is the first of its document or of its lane (the memory starts from mem.init). */
  reset: Uint8Array;
}

/** The document spans [start, end) of a corpus, in corpus order; one span when it has no document starts. */
export function documentSpans(corpus: Corpus): { start: number; end: number }[] {
  const n = corpus.tokens.length;
  const starts = corpus.documentStarts && corpus.documentStarts.length > 0 ? Array.from(corpus.documentStarts) : [0];
  if (starts[0] !== 0) starts.unshift(0);
  return starts.map((s, i) => ({ start: s, end: i + 1 < starts.length ? starts[i + 1] : n })).filter((d) => d.end - d.start >= 2);
}

/** Pieces a document of n tokens is cut into for samples of N inputs (its n − 1 targets, N a sample). */
export function piecesIn(tokens: number, sampleLen: number): number {
  return tokens < 2 ? 0 : Math.ceil((tokens - 1) / sampleLen);
}

/**
 * The lanes of one epoch: the documents in the given order (the sampler draws another each epoch), cut into pieces,
 * laid end to end and split into `lanes` runs of equal length; the pieces left over (fewer than `lanes`) are
 * skipped this epoch.
 */
export function streamLayout(spans: readonly { start: number; end: number }[], order: ArrayLike<number>, sampleLen: number, lanes: number): StreamLayout {
  const total = spans.reduce((a, d) => a + piecesIn(d.end - d.start, sampleLen), 0);
  const batches = Math.floor(total / lanes);
  if (batches === 0) throw new MemgptError(`stream order: the corpus holds ${total} samples of ${sampleLen} tokens, fewer than the batch size ${lanes}`);
  const start = new Int32Array(lanes * batches), end = new Int32Array(lanes * batches), reset = new Uint8Array(lanes * batches);
  let i = 0;
  for (let o = 0; o < order.length; o++) {
    const d = spans[order[o]];
    for (let p = 0; p < piecesIn(d.end - d.start, sampleLen) && i < start.length; p++, i++) {
      start[i] = d.start + p * sampleLen;
      end[i] = d.end;
      reset[i] = p === 0 || i % batches === 0 ? 1 : 0;
    }
  }
  return { batches, start, end, reset };
}

/**
 * Batch `batch` of a layout: B rows of N + 1 tokens (padding past a document's end is token 0 with mask 0), the
 * target mask (null when every target counts), and which rows start from mem.init.
 */
export function gatherStreamBatch(corpus: Corpus, layout: StreamLayout, sampleLen: number, batch: number): { tokens: Int32Array; mask: Float32Array | null; reset: Uint8Array } {
  const lanes = layout.start.length / layout.batches, N = sampleLen;
  const tokens = new Int32Array(lanes * (N + 1));
  const mask = new Float32Array(lanes * N);
  const reset = new Uint8Array(lanes);
  let padded = corpus.lossMask !== null;
  for (let b = 0; b < lanes; b++) {
    const i = b * layout.batches + batch, from = layout.start[i], to = Math.min(layout.end[i], from + N + 1);
    tokens.set(corpus.tokens.subarray(from, to), b * (N + 1));
    for (let p = 0; p < N; p++) mask[b * N + p] = from + 1 + p < to ? (corpus.lossMask ? corpus.lossMask[from + 1 + p] : 1) : 0;
    if (to - from < N + 1) padded = true;
    reset[b] = layout.reset[i];
  }
  return { tokens, mask: padded ? mask : null, reset };
}
