// Sampling (SPEC.md §5): temperature, top-k, min-p, top-p and the repetition penalty over a Decoder's
// distribution, and the token generators built on it (with each token's log-probability).
import { MemgptError } from '../core/errors.js';
import { Rng } from '../core/random.js';
import type { MemGPT } from '../nn/model.js';
import { checkToken } from './decoder.js';
import { Decoder } from './single-decoder.js';

/** Options of generateTokens, sampledTokens and streamText. */
export interface GenerateOptions {
  /** How many tokens to generate (an integer ≥ 0). */
  maxTokens: number;
  /** Divides log P before sampling; 0 is greedy (the most likely token, the lowest id on ties). Default 1. */
  temperature?: number;
  /** Keep only the k most likely tokens (k ≥ 1). */
  topK?: number;
  /** Keep the most likely tokens whose probabilities add up to at least p (0 < p ≤ 1). */
  topP?: number;
  /** Keep only tokens at least this fraction as likely as the most likely one, after temperature (0 ≤ minP ≤ 1; 0: off). */
  minP?: number;
  /**
   * Each token already in the context (prompt and output) has its probability P replaced by P^penalty before
   * sampling (renormalised): the CTRL penalty applied to log-probabilities, since the copy head mixes two
   * distributions and has no single logit. > 1 discourages repeats, 1 (the default) is off, < 1 encourages them.
   */
  repetitionPenalty?: number;
  /** Seed of the sampler's random numbers (default 0): the same seed gives the same tokens. */
  seed?: number;
  /** Stops after a token for which this returns true (that token is still yielded). */
  stopAt?: (token: number) => boolean;
}

type SamplerOptions = Required<Omit<GenerateOptions, 'stopAt' | 'topK'>> & Pick<GenerateOptions, 'stopAt' | 'topK'>;

/** Checks generate options and fills in their defaults (each bad one is one clear error). */
export function validateOptions(options: GenerateOptions): SamplerOptions {
  const { maxTokens, temperature = 1, topK, topP = 1, minP = 0, repetitionPenalty = 1, seed = 0, stopAt } = options;
  if (!Number.isSafeInteger(maxTokens) || maxTokens < 0) throw new MemgptError(`generate: maxTokens must be an integer ≥ 0 (got ${maxTokens})`);
  if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0) throw new MemgptError(`generate: temperature must be a number ≥ 0 (got ${temperature})`);
  if (topK !== undefined && (!Number.isSafeInteger(topK) || topK < 1)) throw new MemgptError(`generate: topK must be an integer ≥ 1 (got ${topK})`);
  if (typeof topP !== 'number' || !(topP > 0 && topP <= 1)) throw new MemgptError(`generate: topP must be in (0, 1] (got ${topP})`);
  if (typeof minP !== 'number' || !(minP >= 0 && minP <= 1)) throw new MemgptError(`generate: minP must be in [0, 1] (got ${minP})`);
  if (typeof repetitionPenalty !== 'number' || !(repetitionPenalty > 0 && Number.isFinite(repetitionPenalty))) {
    throw new MemgptError(`generate: repetitionPenalty must be a finite number > 0 (got ${repetitionPenalty})`);
  }
  if (!Number.isSafeInteger(seed)) throw new MemgptError(`generate: seed must be an integer (got ${seed})`);
  if (stopAt !== undefined && typeof stopAt !== 'function') throw new MemgptError('generate: stopAt must be a function of the token id');
  return { maxTokens, temperature, topK, topP, minP, repetitionPenalty, seed, stopAt };
}

/** Draws a token from probs: temperature on log P, then top-k, min-p and top-p. */
export function sampleToken(probs: Float64Array, options: { temperature: number; topK?: number; topP: number; minP?: number }, rng: Rng): number {
  const { temperature, topK, topP, minP = 0 } = options;
  // No finite, positive probability (NaN logits): there is no token to give, and saying so beats an undefined id.
  if (!probs.some((p) => p > 0 && Number.isFinite(p))) throw new MemgptError('generate: the model gives no token a finite, positive probability (are its weights finite?)');
  if (temperature === 0 || topK === 1) {
    let best = -1;
    for (let v = 0; v < probs.length; v++) if (Number.isFinite(probs[v]) && (best < 0 || probs[v] > probs[best])) best = v;
    return best;
  }
  // Most likely first, lowest id first on ties; tokens of probability 0 can never be drawn.
  let ids = Array.from(probs.keys()).filter((v) => probs[v] > 0 && Number.isFinite(probs[v]));
  ids.sort((a, b) => probs[b] - probs[a] || a - b);
  if (topK !== undefined) ids = ids.slice(0, topK);
  // P^(1/temperature), renormalised, is softmax(log P / temperature); weights are relative to the most likely (1).
  const top = Math.log(probs[ids[0]]);
  let weights = ids.map((v) => Math.exp((Math.log(probs[v]) - top) / temperature));
  if (minP > 0) {
    const kept = weights.findIndex((w) => w < minP);
    if (kept > 0) {
      ids = ids.slice(0, kept);
      weights = weights.slice(0, kept);
    }
  }
  let total = weights.reduce((a, w) => a + w, 0);
  if (topP < 1) {
    let kept = 0, mass = 0;
    while (kept < ids.length && mass < topP * total) mass += weights[kept++];
    ids = ids.slice(0, kept);
    weights.length = kept;
    total = mass;
  }
  let r = rng.uniform() * total;
  for (let i = 0; i < ids.length; i++) {
    r -= weights[i];
    if (r < 0) return ids[i];
  }
  return ids[ids.length - 1];
}

/** probs with each seen token's P replaced by P^penalty, renormalised (a copy; probs itself is untouched). */
export function penalizeRepeats(probs: Float64Array, seen: Iterable<number>, penalty: number): Float64Array {
  const out = Float64Array.from(probs);
  if (penalty === 1) return out;
  for (const v of new Set(seen)) if (v >= 0 && v < out.length && out[v] > 0) out[v] = Math.pow(out[v], penalty);
  const total = out.reduce((a, p) => a + (Number.isFinite(p) ? p : 0), 0);
  if (total > 0) for (let v = 0; v < out.length; v++) out[v] /= total;
  return out;
}

/** A generated token with the model's log-probability of it (before temperature, penalty and filters). */
export interface SampledToken {
  token: number;
  logprob: number;
}

/**
 * Feeds the prompt, then yields up to maxTokens sampled tokens with their log-probabilities, each fed back before
 * the next is drawn. Options are checked here, before the first token is asked for.
 */
export function sampledTokens(model: MemGPT, prompt: ArrayLike<number>, options: GenerateOptions): Generator<SampledToken> {
  const opts = validateOptions(options);
  if (prompt.length === 0) throw new MemgptError('generate: the prompt is empty');
  for (let i = 0; i < prompt.length; i++) checkToken(model, prompt[i], `generate: prompt (index ${i})`);
  return (function* () {
    const decoder = new Decoder(model);
    try {
      decoder.feedMany(prompt);
      const rng = new Rng(opts.seed);
      const context = Array.from(prompt);
      for (let n = 0; n < opts.maxTokens; n++) {
        const probs = decoder.distribution();
        const token = sampleToken(opts.repetitionPenalty === 1 ? probs : penalizeRepeats(probs, context, opts.repetitionPenalty), opts, rng);
        context.push(token);
        yield { token, logprob: Math.log(probs[token]) };
        if (opts.stopAt?.(token) || n === opts.maxTokens - 1) break;
        decoder.feed(token);
      }
    } finally {
      decoder.dispose();
    }
  })();
}

/** sampledTokens without the log-probabilities: the token ids (options checked at the call, as there). */
export function generateTokens(model: MemGPT, prompt: ArrayLike<number>, options: GenerateOptions): Generator<number> {
  const tokens = sampledTokens(model, prompt, options);
  return (function* () {
    try {
      for (const t of tokens) yield t.token;
    } finally {
      tokens.return(undefined);
    }
  })();
}
