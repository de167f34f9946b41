// Decoder: one sequence's incremental decoding (SPEC.md §5), a BatchDecoder of one with feed() and distribution().
import { BatchDecoder, checkToken, type DecoderOptions } from './decoder.js';
import type { MemGPT } from '../nn/model.js';

/** One sequence's incremental decoding: a BatchDecoder of one, with feed() and distribution() for it. */
export class Decoder {
  private readonly inner: BatchDecoder;

  constructor(model: MemGPT, options: DecoderOptions = {}) {
    this.inner = new BatchDecoder(model, 1, options);
  }

  get model(): MemGPT {
    return this.inner.model;
  }

  /** Tokens fed so far. */
  get length(): number {
    return this.inner.length(0);
  }

  /** Processes one token at the next position of the current segment. */
  feed(token: number): void {
    checkToken(this.model, token, 'feed');
    this.inner.step([token]);
  }

  /** Feeds a prompt (whole segments through the full-segment kernels, the rest token by token). */
  feedMany(tokens: ArrayLike<number>): void {
    this.inner.prefill(0, tokens);
  }

  /** P(y) over the vocabulary for the token after the last one fed (SPEC §3, copy mixture included). */
  distribution(): Float64Array {
    return Float64Array.from(this.inner.distributions());
  }

  /** Frees the device state; the Decoder cannot be used afterwards. */
  dispose(): void {
    this.inner.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
