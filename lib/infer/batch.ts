// Batched generation: several continuations at once on one BatchDecoder, each sequence with its own prompt,
// sampler (seeded seed + its index, so sample b is what a lone generation with that seed gives), repetition
// context and stop state. A sequence that stops sits out the remaining steps; the batch ends when all have.
import { MemgptError } from '../core/errors.js';
import { Rng } from '../core/random.js';
import type { MemGPT } from '../nn/model.js';
import { BatchDecoder, checkToken } from './decoder.js';
import { penalizeRepeats, sampleToken, validateOptions, type GenerateOptions } from './sampling.js';
import { TokenText, type TextCodec } from './text.js';

/** One sequence's continuation: its tokens, their log-probabilities, its text (with stop strings), and why it ended. */
export interface BatchSample {
  tokens: number[];
  logprobs: number[];
  /** The decoded continuation, cut before the first stop string (with a codec; as streamTokens releases it). */
  text?: string;
  reason: 'max-tokens' | 'stop' | 'stop-token' | 'aborted';
}

/** Options of generateBatch: generate's, with stop strings (cut from each text) and an abort signal. */
export interface BatchGenerateOptions extends GenerateOptions {
  stop?: string[];
  signal?: AbortSignal;
  /** Called after each step with the number of sequences still running. */
  onStep?: (running: number) => void;
}

/**
 * Generates a continuation of each prompt, all at once (one decoding step feeds every running sequence). With a
 * codec the texts are decoded and cut before the first stop string, a sequence ending as its text reaches one.
 */
export async function generateBatch(model: MemGPT, prompts: ArrayLike<number>[], options: BatchGenerateOptions, codec?: TextCodec): Promise<BatchSample[]> {
  const opts = validateOptions(options);
  const stops = options.stop ?? [];
  if (!Array.isArray(stops) || !stops.every((s) => typeof s === 'string' && s.length > 0)) throw new MemgptError('generate: stop must be a list of non-empty strings');
  if (stops.length > 0 && !codec) throw new MemgptError('generate: stop strings need a codec to decode the text');
  if (prompts.length === 0) throw new MemgptError('generate: no prompts given');
  prompts.forEach((p, b) => {
    if (p.length === 0) throw new MemgptError(`generate: prompt ${b} is empty`);
    for (let i = 0; i < p.length; i++) checkToken(model, p[i], `generate: prompt ${b} (index ${i})`);
  });
  const B = prompts.length, V = model.config.vocabSize;
  const decoder = new BatchDecoder(model, B);
  try {
    decoder.prefillAll(prompts);
    const rngs = prompts.map((_, b) => new Rng(opts.seed + b));
    const contexts = prompts.map((p) => Array.from(p));
    const out: BatchSample[] = prompts.map(() => ({ tokens: [], logprobs: [], reason: 'max-tokens', ...(codec ? { text: '' } : {}) }));
    const texts = codec ? prompts.map(() => new TokenText(codec, stops)) : null;
    const running = prompts.map(() => opts.maxTokens > 0);
    const next = new Int32Array(B);
    while (running.some(Boolean)) {
      if (options.signal?.aborted) {
        for (let b = 0; b < B; b++) if (running[b]) out[b].reason = 'aborted';
        break;
      }
      const probs = decoder.distributions();
      for (let b = 0; b < B; b++) {
        if (!running[b]) continue;
        const p = Float64Array.from(probs.subarray(b * V, (b + 1) * V));
        const token = sampleToken(opts.repetitionPenalty === 1 ? p : penalizeRepeats(p, contexts[b], opts.repetitionPenalty), opts, rngs[b]);
        contexts[b].push(token);
        out[b].tokens.push(token);
        out[b].logprobs.push(Math.log(p[token]));
        next[b] = token;
        const piece = texts?.[b].push(token);
        if (piece) out[b].text += piece.release;
        if (piece?.stopped) [running[b], out[b].reason] = [false, 'stop'];
        else if (opts.stopAt?.(token)) [running[b], out[b].reason] = [false, 'stop-token'];
        else if (out[b].tokens.length === opts.maxTokens) running[b] = false;
      }
      options.onStep?.(running.filter(Boolean).length);
      if (running.some(Boolean)) decoder.step(next, running);
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    texts?.forEach((t, b) => {
      if (out[b].reason === 'stop') return;
      const end = t.finish();
      out[b].text += end.release + end.held;
      if (end.stopped) out[b].reason = 'stop';
    });
    return out;
  } finally {
    decoder.dispose();
  }
}
