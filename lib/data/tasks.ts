// Synthetic long-range tasks for the byte tokenizer, where only a model that carries memory
// across segments can beat chance: a pass key stated in the first segment and asked for in the
// last, and a copy of a symbol string that spans several segments.
import { MemgptError } from '../core/errors.js';
import { Rng } from '../core/random.js';
import type { Corpus } from './corpus.js';

export interface PasskeyOptions {
  segments: number;
  segmentLen: number;
}

const FILLER = [
  'The grass is green. ', 'The sky is blue. ', 'The sun is yellow. ', 'Here we go. ', 'There and back again. ',
  'The river flows on. ', 'Birds sing in the trees. ', 'The night is dark. ', 'Snow falls in winter. ',
  'The sea is wide. ', 'A cat sleeps by the fire. ', 'Wind moves the clouds. ',
];

// Long forms when a segment can hold them, short ones otherwise (the tiny preset has T = 32).
const LONG = { key: (k: string) => `The pass key is ${k}. Remember it. `, question: 'What is the pass key? The pass key is ' };
const SHORT = { key: (k: string) => `The pass key is ${k}. `, question: 'The pass key is ' };
const KEY_DIGITS = 5;

function checkInt(value: number, name: string, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) throw new MemgptError(`${name} must be an integer ≥ ${min}, got ${value}`);
}

/** Whole filler sentences (no digits) while they fit, then spaces: exactly `length` characters. */
function filler(rng: Rng, length: number): string {
  let text = '';
  for (;;) {
    const room = length - text.length;
    const fits = FILLER.filter((s) => s.length <= room);
    if (fits.length === 0) break;
    text += fits[rng.int(fits.length)];
  }
  return text + ' '.repeat(length - text.length);
}

function passkeyForms(options: PasskeyOptions): typeof LONG {
  const { segments: k, segmentLen: T } = options;
  checkInt(k, 'passkey: segments', 2); // the key and the question must be in different segments
  checkInt(T, 'passkey: segmentLen', 1);
  // The key sentence must fit in segment 0 after at least one filler byte (byte 0 is shared with the
  // previous document in a corpus), and the question plus the first 4 answer digits in the last segment.
  const fits = (f: typeof LONG) => T >= 1 + f.key('00000').length && T >= f.question.length + KEY_DIGITS - 1;
  if (fits(LONG)) return LONG;
  if (fits(SHORT)) return SHORT;
  throw new MemgptError(`passkey: segmentLen must be at least ${1 + SHORT.key('00000').length}, got ${T}`);
}


/**
 * One document of exactly segments·segmentLen + 1 bytes (ASCII): filler, the key sentence inside
 * segment 0, filler, and at the very end the question and the 5 key digits, which are the last
 * 5 targets of the sample. answerStart is the index of the first answer digit.
 */
export function passkeyDocument(rng: Rng, options: PasskeyOptions): { text: string; answerStart: number; key: string } {
  const forms = passkeyForms(options);
  const length = options.segments * options.segmentLen + 1;
  const key = String(10000 + rng.int(90000));
  const keySentence = forms.key(key);
  const offset = 1 + rng.int(options.segmentLen - keySentence.length); // key sentence ends by byte T − 1
  const middle = length - offset - keySentence.length - forms.question.length - KEY_DIGITS;
  const text = filler(rng, offset) + keySentence + filler(rng, middle) + forms.question + key;
  return { text, answerStart: length - KEY_DIGITS, key };
}

export interface PasskeyCorpusOptions extends PasskeyOptions {
  /**
   * A curriculum over the corpus order (train it with order 'sequential'): document j has the
   * easiness e = 1 − j / (curriculum · count), clamped to [0, 1], so easy documents fade out over
   * the first `curriculum` fraction of the corpus (0, the default, means none). At easiness e each
   * segment but the last is, with probability e, the 5 key digits repeated (from a random phase)
   * instead of its filler and key sentence. Why: with the key once in 64 bytes of filler and two
   * segments before the question, the gradient that teaches the memory to read, keep and find the
   * digits is too weak to be found (measured: the answer loss stays at chance for thousands of
   * steps); learnt on easier documents first, each skill gives the next its signal
   * (bench/results/passkey-cpu.json).
   */
  curriculum?: number;
}

/**
 * count pass-key documents as one byte stream in which sample j (SPEC §4, N = segments·segmentLen)
 * is document j. Windows overlap by one token, so byte 0 of document j ≥ 1 is the last answer digit
 * of document j − 1 (byte 0 is filler and never a target of its own sample). lossMask is 1 on the
 * 5 answer digits of each document only.
 */
export function passkeyCorpus(count: number, seed: number, options: PasskeyCorpusOptions): Corpus {
  checkInt(count, 'passkey: count', 1);
  passkeyForms(options);
  const curriculum = options.curriculum ?? 0;
  if (!(curriculum >= 0 && curriculum <= 1)) throw new MemgptError(`passkey: curriculum must be in [0, 1], got ${curriculum}`);
  const { segments: k, segmentLen: T } = options;
  const N = k * T;
  const rng = new Rng(seed);
  const tokens = new Int32Array(count * N + 1);
  const lossMask = new Uint8Array(count * N + 1);
  for (let j = 0; j < count; j++) {
    let { text, key } = passkeyDocument(rng, options);
    const e = curriculum > 0 ? Math.min(1, Math.max(0, 1 - j / (curriculum * count))) : 0;
    for (let s = 0; e > 0 && s < k - 1; s++) {
      if (rng.uniform() >= e) continue;
      const phase = rng.int(KEY_DIGITS);
      text = text.slice(0, s * T) + key.repeat(Math.ceil(T / KEY_DIGITS) + 1).slice(phase, phase + T) + text.slice((s + 1) * T);
    }
    for (let i = j === 0 ? 0 : 1; i <= N; i++) tokens[j * N + i] = text.charCodeAt(i);
    lossMask.fill(1, j * N + N + 1 - KEY_DIGITS, j * N + N + 1);
  }
  return {
    tokens, lossMask, bytes: tokens.length, documents: count,
    source: `passkey(count ${count}, seed ${seed}, ${k}×${T}${curriculum > 0 ? `, curriculum ${curriculum}` : ''})`,
  };
}

export interface CopyOptions {
  /** Symbols to copy (default 24). */
  symbols?: number;
  /** Distinct symbols, 2 … 52: the letters a–z then A–Z (default 16). */
  alphabet?: number;
  /** Segment length the samples are cut for (default 8). */
  segmentLen?: number;
  /**
   * A curriculum over the corpus order (train with order 'sequential'), as in passkeyCorpus: sample j
   * is periodic with probability 1 − j / (curriculum · count) (clamped to [0, 1]; 0, the default, means
   * none): its symbols repeat with period segmentLen, so the last segment written holds all the copy
   * needs. Measured (bench/copy.ts): the read side is learnt on those first, then the real task.
   */
  curriculum?: number;
}

const COPY_SYMBOLS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ';
const COPY_DELIMITER = '|'.charCodeAt(0);
const COPY_PAD = '.'.charCodeAt(0);

/** How copy samples are laid out: N = segments·segmentLen inputs, `padding` pad bytes first. */
export function segmentedCopyLayout(options: CopyOptions = {}): { symbols: number; alphabet: number; segmentLen: number; segments: number; sampleLen: number; padding: number } {
  const { symbols = 24, alphabet = 16, segmentLen = 8 } = options;
  checkInt(symbols, 'copy: symbols', 1);
  checkInt(alphabet, 'copy: alphabet', 2);
  if (alphabet > COPY_SYMBOLS.length) throw new MemgptError(`copy: alphabet must be at most ${COPY_SYMBOLS.length}, got ${alphabet}`);
  checkInt(segmentLen, 'copy: segmentLen', 1);
  // symbols + delimiter + symbols = 2s + 1 tokens = N + 1 with N = 2s, rounded up to whole segments.
  const segments = Math.ceil((2 * symbols) / segmentLen);
  const sampleLen = segments * segmentLen;
  return { symbols, alphabet, segmentLen, segments, sampleLen, padding: sampleLen - 2 * symbols };
}

/**
 * count copy samples (byte tokens): padding '.', s random symbols, '|', the same s symbols again;
 * each sample is N + 1 bytes with N a whole number of segments, and sample j of SPEC §4 is exactly
 * one of them. lossMask is 1 on the copied half only. As in passkeyCorpus, byte 0 of sample j ≥ 1 is
 * the last byte of sample j − 1 (when there is no padding, that is also the first symbol to copy).
 */
export function segmentedCopyCorpus(count: number, seed: number, options: CopyOptions = {}): Corpus {
  checkInt(count, 'copy: count', 1);
  const { symbols: s, alphabet, segmentLen, sampleLen: N, padding: p } = segmentedCopyLayout(options);
  const curriculum = options.curriculum ?? 0;
  if (!(curriculum >= 0 && curriculum <= 1)) throw new MemgptError(`copy: curriculum must be in [0, 1], got ${curriculum}`);
  const rng = new Rng(seed);
  const tokens = new Int32Array(count * N + 1);
  const lossMask = new Uint8Array(count * N + 1);
  for (let j = 0; j < count; j++) {
    const base = j * N;
    // Byte 0 of sample j ≥ 1 is already there: the last byte of sample j − 1.
    if (j === 0) tokens[base] = p > 0 ? COPY_PAD : COPY_SYMBOLS.charCodeAt(rng.int(alphabet));
    for (let i = 1; i < p; i++) tokens[base + i] = COPY_PAD;
    const e = curriculum > 0 ? Math.min(1, Math.max(0, 1 - j / (curriculum * count))) : 0;
    const period = e > 0 && rng.uniform() < e ? segmentLen : s;
    for (let i = p === 0 ? 1 : 0; i < s; i++) {
      tokens[base + p + i] = i < period ? COPY_SYMBOLS.charCodeAt(rng.int(alphabet)) : tokens[base + p + (i % period)];
    }
    tokens[base + p + s] = COPY_DELIMITER;
    for (let i = 0; i < s; i++) tokens[base + p + s + 1 + i] = tokens[base + p + i];
    lossMask.fill(1, base + p + s + 1, base + N + 1);
  }
  return {
    tokens, lossMask, bytes: tokens.length, documents: count,
    source: `copy(count ${count}, seed ${seed}, ${s} symbols of ${alphabet}, segments of ${segmentLen}${curriculum > 0 ? `, curriculum ${curriculum}` : ''})`,
  };
}
