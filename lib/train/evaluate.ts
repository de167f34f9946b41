// Held-out evaluation: the mean loss over a corpus's samples in order, without gradients; with a process group the
// ranks share each batch's rows and add their sums, so that every rank gets the loss one process would.
import { noGrad } from '../core/autograd.js';
import { MemgptError } from '../core/errors.js';
import { tidy } from '../core/tensor.js';
import { sequentialBatches, type Corpus } from '../data/index.js';
import type { MemGPT } from '../nn/model.js';
import { ProcessGroup } from '../parallel/group.js';

/** Rows [from, to) of a batch of samples of N tokens (tokens: rows of N + 1; mask: rows of N). */
export function batchRows(tokens: Int32Array, mask: Float32Array | null, N: number, from: number, to: number) {
  return { tokens: tokens.subarray(from * (N + 1), to * (N + 1)), mask: mask ? mask.subarray(from * N, to * N) : null };
}

/** The loss weight of a batch's targets: its mask's sum, or every target. */
export const targetCount = (mask: Float32Array | null, rows: number, N: number) => (mask ? mask.reduce((a, m) => a + m, 0) : rows * N);

/**
 * Mean loss over the first `batches` batches of every sample in order (all of them by default), without gradients.
 * With a process group of W ranks each rank scores its share of every batch's rows and the sums are added over the
 * ranks: every rank gets the loss one process would.
 */
export function evaluateLoss(model: MemGPT, corpus: Corpus, batchSize: number, segments: number, batches = Infinity,
  group: ProcessGroup = ProcessGroup.single()): { loss: number; tokens: number } {
  const N = segments * model.config.segmentLen;
  let nll = 0, tokens = 0, seen = 0;
  for (const batch of sequentialBatches(corpus, N, batchSize)) {
    if (seen++ >= batches) break;
    const share = Math.ceil(batch.count / group.worldSize);
    const from = Math.min(batch.count, group.rank * share), to = Math.min(batch.count, from + share);
    const rows = batchRows(batch.tokens, batch.mask, N, from, to);
    if (to === from || targetCount(rows.mask, to - from, N) === 0) continue;  // no target of this share counts
    const out = noGrad(() => tidy(() => {
      const r = model.forward(rows.tokens, to - from, segments, rows.mask ?? undefined);
      r.loss.dispose();
      return { nllSum: r.nllSum, tokens: r.tokens };
    }));
    nll += out.nllSum;
    tokens += out.tokens;
  }
  const sums = Float64Array.of(nll, tokens);
  group.allreduce(sums);
  [nll, tokens] = sums;
  if (tokens === 0) throw new MemgptError(`${corpus.source}: no token to evaluate (the loss mask selects none)`);
  return { loss: nll / tokens, tokens };
}

