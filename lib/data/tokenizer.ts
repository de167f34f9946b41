// Tokenizers of SPEC §1/§4: `byte` (the UTF-8 bytes, V = 256) and `gpt2` (GPT-2 BPE
// from js-tiktoken, V = 50257; its ranks ship inside the package, so nothing is downloaded).
import { createRequire } from 'node:module';

import { Tiktoken, type TiktokenBPE } from 'js-tiktoken/lite';

import { MemgptError } from '../core/errors.js';

export type TokenizerName = 'byte' | 'gpt2';

export interface Tokenizer {
  readonly name: TokenizerName;
  readonly vocabSize: number;
  /** Text (or its UTF-8 bytes) to token ids. Special tokens such as <|endoftext|> are plain text. */
  encode(text: string | Uint8Array): Int32Array;
  /** Token ids to text; bytes that are not valid UTF-8 become U+FFFD. */
  decode(ids: ArrayLike<number>): string;
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8'); // not fatal: a cut multi-byte character decodes to U+FFFD

function checkIds(ids: ArrayLike<number>, vocabSize: number, name: string): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw new MemgptError(`${name} tokenizer: token id ${id} at index ${i} is outside [0, ${vocabSize})`);
    }
  }
}

const byteTokenizer: Tokenizer = {
  name: 'byte',
  vocabSize: 256,
  encode(text) {
    const bytes = typeof text === 'string' ? utf8Encoder.encode(text) : text;
    return Int32Array.from(bytes);
  },
  decode(ids) {
    checkIds(ids, 256, 'byte');
    return utf8Decoder.decode(Uint8Array.from(ids as ArrayLike<number>));
  },
};

class Gpt2Tokenizer implements Tokenizer {
  readonly name = 'gpt2' as const;
  readonly vocabSize = 50257;
  private readonly bpe: Tiktoken;
  private readonly pieces: RegExp;
  // Ids of each pre-tokenised piece seen so far: BPE runs once per distinct word, not once per
  // occurrence, which makes encoding a corpus about 9x faster than calling js-tiktoken on it whole.
  private readonly cache = new Map<string, number[]>();

  constructor() {
    // Loaded on first use (about 150 ms), and synchronously so that getTokenizer stays synchronous.
    const require = createRequire(import.meta.url);
    const module = require('js-tiktoken/ranks/gpt2') as TiktokenBPE | { default: TiktokenBPE };
    const ranks = 'default' in module ? module.default : module;
    this.bpe = new Tiktoken(ranks);
    this.pieces = new RegExp(ranks.pat_str, 'gu');
  }

  encode(text: string | Uint8Array): Int32Array {
    const s = typeof text === 'string' ? text : utf8Decoder.decode(text);
    const out: number[] = [];
    // The same pre-tokenisation as js-tiktoken; with no special tokens allowed or disallowed
    // (the [] arguments), "<|endoftext|>" in the text is encoded as the plain text it is.
    for (const match of s.matchAll(this.pieces)) {
      const piece = match[0];
      let ids = this.cache.get(piece);
      if (ids === undefined) {
        ids = this.bpe.encode(piece, [], []);
        if (this.cache.size < MAX_CACHED_PIECES) this.cache.set(piece, ids);
      }
      for (const id of ids) out.push(id);
    }
    return Int32Array.from(out);
  }

  decode(ids: ArrayLike<number>): string {
    checkIds(ids, this.vocabSize, 'gpt2');
    return this.bpe.decode(Array.from(ids));
  }
}

const MAX_CACHED_PIECES = 200_000;

let gpt2: Gpt2Tokenizer | null = null;

export function getTokenizer(name: TokenizerName): Tokenizer {
  if (name === 'byte') return byteTokenizer;
  if (name === 'gpt2') return (gpt2 ??= new Gpt2Tokenizer());
  throw new MemgptError(`unknown tokenizer ${JSON.stringify(name)}: expected "byte" or "gpt2"`);
}
