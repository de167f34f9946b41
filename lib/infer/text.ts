// Text generation: a token stream decoded into whole characters, with stop strings cut off and cancellation by an
// AbortSignal; what `memgpt generate` prints.
import { MemgptError } from '../core/errors.js';
import type { MemGPT } from '../nn/model.js';
import { sampledTokens, type GenerateOptions, type SampledToken } from './sampling.js';

/** What streamText needs of a tokenizer. */
export interface TextCodec {
  encode(text: string): ArrayLike<number>;
  decode(tokens: ArrayLike<number>): string;
}

/** Options of streamTokens and streamText: the token-level options, plus stop strings and cancellation. */
export interface TextGenerateOptions extends GenerateOptions {
  /** Generation ends when the output contains one of these; that string and anything after it are not returned. */
  stop?: string[];
  /** Ends generation before the next token (Ctrl-C, a timeout): everything released so far stays returned. */
  signal?: AbortSignal;
}

/** A generated token, its log-probability, and the text it releases (token −1: no token, the end releasing held text). */
export interface TextToken extends SampledToken {
  /** Text completed by this token: empty while a multi-byte character, or what may be a stop string, is held back. */
  text: string;
}

/** Why generation ended: maxTokens reached, a stop string, options.stopAt, or options.signal. */
export type StopReason = 'max-tokens' | 'stop' | 'stop-token' | 'aborted';

// A UTF-8 character spans at most 4 bytes, so at most 4 tokens: a piece still incomplete after that is invalid text.
const maxHeldTokens = 4;

/**
 * Decodes a token stream into text pieces. Tokens that end inside a multi-byte character (the decoded text
 * ends in U+FFFD) are held until the character is complete, or until 4 are held (then the bytes are invalid).
 */
export function* textPieces(tokens: Iterable<number>, decode: (tokens: ArrayLike<number>) => string): Generator<string> {
  const text = new TokenText({ decode }, []);
  for (const token of tokens) {
    const { release } = text.push(token);
    if (release) yield release;
  }
  const end = text.finish();
  if (end.release + end.held) yield end.release + end.held;
}

/** Holds back text that may be the start of a stop string, and finds the first stop string in the output. */
class StopMatcher {
  private held = '';
  constructor(private readonly stops: string[]) {}

  /** The text that can be released after `text` arrives, and whether a stop string ended it. */
  push(text: string): { release: string; stopped: boolean } {
    const all = this.held + text;
    let first = -1;
    for (const s of this.stops) {
      const at = all.indexOf(s);
      if (at >= 0 && (first < 0 || at < first)) first = at;
    }
    if (first >= 0) {
      this.held = '';
      return { release: all.slice(0, first), stopped: true };
    }
    // Keep the longest end of the text that some stop string starts with: it may yet complete.
    let keep = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, all.length); k > keep; k--) {
        if (all.endsWith(s.slice(0, k))) {
          keep = k;
          break;
        }
      }
    }
    this.held = all.slice(all.length - keep);
    return { release: all.slice(0, all.length - keep), stopped: false };
  }

  /** What is still held when generation ends without a stop string. */
  flush(): string {
    const rest = this.held;
    this.held = '';
    return rest;
  }
}

/**
 * A token stream's text as it may be released: tokens inside a multi-byte character are held until it is
 * complete (or 4 are held: then the bytes are invalid), text that may begin a stop string is held, and a stop
 * string ends it. What streamTokens and generateBatch share.
 */
export class TokenText {
  private bytes: number[] = [];
  private readonly stops: StopMatcher;

  constructor(private readonly codec: Pick<TextCodec, 'decode'>, stop: string[]) {
    this.stops = new StopMatcher(stop);
  }

  /** The text that token releases, and whether a stop string ended the stream with it. */
  push(token: number): { release: string; stopped: boolean } {
    this.bytes.push(token);
    let piece = this.codec.decode(this.bytes);
    if (piece.endsWith('\uFFFD') && this.bytes.length < maxHeldTokens) piece = '';
    else this.bytes = [];
    return this.stops.push(piece);
  }

  /** At the end: the held bytes decoded (release, which may complete a stop string), then the text still held. */
  finish(): { release: string; stopped: boolean; held: string } {
    const rest = this.bytes.length ? this.codec.decode(this.bytes) : '';
    this.bytes = [];
    const tail = this.stops.push(rest);
    return { ...tail, held: tail.stopped ? '' : this.stops.flush() };
  }
}

function validateTextOptions(options: TextGenerateOptions): string[] {
  const stop = options.stop ?? [];
  if (!Array.isArray(stop) || !stop.every((s) => typeof s === 'string' && s.length > 0)) {
    throw new MemgptError('generate: stop must be a list of non-empty strings');
  }
  if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) throw new MemgptError('generate: signal must be an AbortSignal');
  return stop;
}

/**
 * Generates from a text prompt: yields each token with its log-probability and the text it releases (whole
 * characters, stop strings cut off), and returns why it stopped. Between tokens the event loop runs, so output
 * flushes and a signal can end it.
 */
export async function* streamTokens(model: MemGPT, codec: TextCodec, prompt: string, options: TextGenerateOptions): AsyncGenerator<TextToken, StopReason> {
  const text = new TokenText(codec, validateTextOptions(options));
  const tokens = sampledTokens(model, codec.encode(prompt), options);
  let count = 0;
  try {
    for (;;) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (options.signal?.aborted) {
        const end = text.finish();
        if (end.release + end.held) yield { token: -1, logprob: 0, text: end.release + end.held };
        return 'aborted';
      }
      const next = tokens.next();
      if (next.done) break;
      count++;
      const { release, stopped } = text.push(next.value.token);
      yield { ...next.value, text: release };
      if (stopped) return 'stop';
    }
    const end = text.finish();
    if (end.release || end.stopped) yield { token: -1, logprob: 0, text: end.release };
    if (end.stopped) return 'stop';
    if (end.held) yield { token: -1, logprob: 0, text: end.held };
    return count === options.maxTokens ? 'max-tokens' : 'stop-token';
  } finally {
    // Stopped early: closing the token generator disposes the decoder.
    tokens.return(undefined);
  }
}

/** Generates from a text prompt and yields the continuation as text pieces: whole characters, stop strings cut off. */
export async function* streamText(model: MemGPT, codec: TextCodec, prompt: string, options: TextGenerateOptions): AsyncGenerator<string> {
  for await (const t of streamTokens(model, codec, prompt, options)) if (t.text) yield t.text;
}
