// Data side (SPEC §4): tokenizer round trips, corpora from files, folders and .jsonl records,
// every bad input, sample windows, batch order, exact resume, held-out split.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import {
  BatchSampler, MemgptError, getTokenizer, loadCorpus, sequentialBatches, splitCorpus, type Corpus,
} from '../lib/index.js';

const root = mkdtempSync(join(tmpdir(), 'memgpt-data-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let fileCount = 0;

/** Writes a file with a fresh name under the temp root. */
function file(name: string, content: string | Uint8Array): string {
  const path = join(root, `${fileCount++}-${name}`);
  writeFileSync(path, content);
  return path;
}

function folder(files: Record<string, string | Uint8Array>): string {
  const dir = join(root, `dir${fileCount++}`);
  for (const [name, content] of Object.entries(files)) {
    const path = join(dir, name);
    mkdirSync(join(path, '..'), { recursive: true });
    writeFileSync(path, content);
  }
  mkdirSync(dir, { recursive: true });
  return dir;
}

function arangeCorpus(n: number, withMask = false): Corpus {
  const tokens = Int32Array.from({ length: n }, (_, i) => i);
  const lossMask = withMask ? Uint8Array.from({ length: n }, (_, i) => i % 3 === 0 ? 1 : 0) : null;
  return { tokens, lossMask, bytes: n, documents: 1, source: 'arange' };
}

/** Expects one MemgptError, on one line, whose message contains every part. */
function expectError(fn: () => unknown, ...parts: string[]): void {
  let error: unknown;
  try {
    fn();
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(MemgptError);
  const message = (error as Error).message;
  expect(message).not.toContain('\n');
  for (const part of parts) expect(message).toContain(part);
}

const byte = getTokenizer('byte');
const gpt2 = getTokenizer('gpt2');

describe('tokenizers', () => {
  it('byte: UTF-8 bytes both ways; invalid UTF-8 decodes to U+FFFD', () => {
    expect(byte.vocabSize).toBe(256);
    expect(Array.from(byte.encode('Hé!'))).toEqual([72, 0xc3, 0xa9, 33]);
    expect(Array.from(byte.encode(Uint8Array.of(1, 2, 255)))).toEqual([1, 2, 255]);
    const text = 'memory ⊙ gates, 記憶 🧠\n';
    expect(byte.decode(byte.encode(text))).toBe(text);
    expect(byte.decode([72, 0xc3])).toBe('H\uFFFD');
    expectError(() => byte.decode([256]), 'byte tokenizer', '256');
  });

  it('gpt2: the GPT-2 BPE; special tokens are plain text', () => {
    expect(gpt2.vocabSize).toBe(50257);
    expect(Array.from(gpt2.encode('Hello world'))).toEqual([15496, 995]);
    const text = 'Memory-gated pointers, 記憶 and <|endoftext|> as text.\n\n';
    const ids = gpt2.encode(text);
    expect(ids).not.toContain(50256);
    expect(gpt2.decode(ids)).toBe(text);
    expect(Array.from(gpt2.encode(new TextEncoder().encode('Hello world')))).toEqual([15496, 995]);
    expectError(() => gpt2.decode([50257]), 'gpt2 tokenizer');
  });

  it('gpt2: encoding piece by piece (cached) gives what js-tiktoken gives on the whole text', async () => {
    const { getEncoding } = await import('js-tiktoken');
    const reference = getEncoding('gpt2');
    const text = "It's   here:\n\n  we'll see 1234567 ünï 記憶 🧠 <|endoftext|> x\t\t y  \n  z's... don't   \r\n end  ";
    for (let i = 0; i < 2; i++) expect(Array.from(gpt2.encode(text))).toEqual(reference.encode(text, [], []));
    const spec = readFileSync(new URL('../docs/SPEC.md', import.meta.url), 'utf8'); // real prose, tables, formulas
    expect(Array.from(gpt2.encode(spec))).toEqual(reference.encode(spec, [], []));
  });

  it('rejects an unknown name', () => {
    expectError(() => getTokenizer('bpe' as 'byte'), 'unknown tokenizer', 'bpe');
  });
});

describe('loadCorpus', () => {
  it('a text file: its bytes, no mask', () => {
    const path = file('a.txt', 'hello\nworld');
    const c = loadCorpus(path, byte);
    expect(byte.decode(c.tokens)).toBe('hello\nworld');
    expect(c).toMatchObject({ lossMask: null, bytes: 11, documents: 1, source: path });
  });

  it('a folder: every non-hidden file below it in sorted path order, joined by a blank line', () => {
    const dir = folder({
      'b.txt': 'B', 'a/z.txt': 'AZ', 'a/b/c.txt': 'ABC', 'A.txt': 'upper', '.hidden': 'no', '.git/x.txt': 'no', 'c/empty.txt': '',
    });
    const c = loadCorpus(dir, byte);
    // Code-unit order of the relative paths: "A.txt" < "a/b/c.txt" < "a/z.txt" < "b.txt"; empty files skipped.
    expect(byte.decode(c.tokens)).toBe('upper\n\nABC\n\nAZ\n\nB');
    expect(c.documents).toBe(4);
    expect(c.lossMask).toBeNull();
    symlinkSync(dir, join(dir, 'a', 'loop')); // a folder that contains itself is read once
    expect(byte.decode(loadCorpus(dir, byte).tokens)).toBe('upper\n\nABC\n\nAZ\n\nB');
  });

  it('.jsonl: prompt, completion, separator; loss on the completion and the separator only', () => {
    const path = file('two.jsonl', '{"prompt": "Q1?", "completion": " A1"}\n\n{"prompt":"Q2","completion":"é","extra":1}\n');
    const c = loadCorpus(path, byte);
    expect(byte.decode(c.tokens)).toBe('Q1? A1\n\nQ2é\n\n');
    //                 Q  1  ?  ␠  A  1  \n \n Q  2  é(2 bytes) \n \n
    expect(Array.from(c.lossMask!)).toEqual([0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1]);
    expect(c.documents).toBe(2);
    expect(c.bytes).toBe(14);

    const g = loadCorpus(path, gpt2);
    const expected = [...gpt2.encode('Q1?'), ...gpt2.encode(' A1'), ...gpt2.encode('\n\n'), ...gpt2.encode('Q2'), ...gpt2.encode('é'), ...gpt2.encode('\n\n')];
    expect(Array.from(g.tokens)).toEqual(expected);
    const nPrompt1 = gpt2.encode('Q1?').length, nRest1 = gpt2.encode(' A1').length + gpt2.encode('\n\n').length;
    expect(Array.from(g.lossMask!.subarray(0, nPrompt1 + nRest1))).toEqual([...Array(nPrompt1).fill(0), ...Array(nRest1).fill(1)]);
  });

  it('a folder mixing text and .jsonl: text counts in full', () => {
    const dir = folder({ 'a.txt': 'xy', 'b.jsonl': '{"prompt":"p","completion":"c"}\n' });
    const c = loadCorpus(dir, byte);
    expect(byte.decode(c.tokens)).toBe('xy\n\npc\n\n');
    expect(Array.from(c.lossMask!)).toEqual([1, 1, 1, 1, 0, 1, 1, 1]);
    expect(c.documents).toBe(2);
  });

  it('every bad input is one clear error naming the path', () => {
    const missing = join(root, 'nope.txt');
    expectError(() => loadCorpus(missing, byte), missing, 'no such file');
    const empty = folder({});
    expectError(() => loadCorpus(empty, byte), empty, 'folder has no files');
    const onlyHidden = folder({ '.a': 'x' });
    expectError(() => loadCorpus(onlyHidden, byte), onlyHidden, 'folder has no files');
    const emptyFile = file('empty.txt', '');
    expectError(() => loadCorpus(emptyFile, byte), emptyFile, 'empty file');
    const emptyFiles = folder({ 'a.txt': '', 'b.txt': '' });
    expectError(() => loadCorpus(emptyFiles, byte), emptyFiles, 'empty corpus');
    const nul = file('nul.txt', Uint8Array.of(104, 105, 0, 1));
    expectError(() => loadCorpus(nul, byte), nul, 'looks binary');
    const latin1 = file('latin1.txt', Uint8Array.of(99, 97, 0xe9, 33));
    expectError(() => loadCorpus(latin1, gpt2), latin1, 'looks binary');
    const binaryInFolder = folder({ 'a.txt': 'fine', 'b.bin': Uint8Array.of(0xff, 0xfe, 0) });
    expectError(() => loadCorpus(binaryInFolder, byte), join(binaryInFolder, 'b.bin'), 'looks binary');

    const badLine = file('bad.jsonl', '{"prompt":"a","completion":"b"}\n\n{"prompt":"a","completion":3}\n');
    expectError(() => loadCorpus(badLine, byte), `${badLine}:3: expected {"prompt", "completion"} strings`);
    const notJson = file('notjson.jsonl', '{"prompt":"a","completion":"b"}\n{"prompt":"a",\n');
    expectError(() => loadCorpus(notJson, byte), `${notJson}:2: expected {"prompt", "completion"} strings`);
    const array = file('array.jsonl', '["a", "b"]\n');
    expectError(() => loadCorpus(array, byte), `${array}:1:`);
    const noRecords = file('blank.jsonl', '\n  \n');
    expectError(() => loadCorpus(noRecords, byte), noRecords, 'no records');
  });
});

describe('BatchSampler', () => {
  const opts = { batchSize: 2, segments: 2, segmentLen: 3, order: 'sequential' as const, seed: 0 };

  it('sample j is t[jN … jN+N] and batch b holds samples bB … bB+B−1 (SPEC §4)', () => {
    // n = 27, N = 6: samples j with 6j + 7 ≤ 27, so j = 0 … 3; two batches an epoch.
    const s = new BatchSampler(arangeCorpus(27), opts);
    expect(s.samplesPerEpoch).toBe(4);
    expect(s.batchesPerEpoch).toBe(2);
    const window = (j: number) => Array.from({ length: 7 }, (_, i) => 6 * j + i);
    for (let b = 0; b < 5; b++) {
      const batch = s.next();
      const first = (b % 2) * 2;
      expect(Array.from(batch.tokens)).toEqual([...window(first), ...window(first + 1)]);
      expect(batch.mask).toBeNull();
      expect(batch.epoch).toBe(Math.floor(b / 2));
    }
  });

  it('uses exactly the tokens it may: n = jN + N + 1 holds j + 1 samples', () => {
    expect(new BatchSampler(arangeCorpus(25), opts).samplesPerEpoch).toBe(4);
    expect(new BatchSampler(arangeCorpus(24), opts).samplesPerEpoch).toBe(3);
  });

  it('the mask of sample j is the loss mask of its targets t[jN+1 … jN+N]', () => {
    const corpus = arangeCorpus(40, true);
    const batch = new BatchSampler(corpus, { ...opts, batchSize: 3 }).next();
    const expected: number[] = [];
    for (let j = 0; j < 3; j++) for (let p = 0; p < 6; p++) expected.push(corpus.lossMask![6 * j + 1 + p]);
    expect(Array.from(batch.mask!)).toEqual(expected);
  });

  it('random order: a permutation of the samples each epoch, different each epoch, the same for the same seed', () => {
    const corpus = arangeCorpus(12 * 10 + 1); // N = 12: 10 samples, 5 batches of 2
    const options = { batchSize: 2, segments: 3, segmentLen: 4, order: 'random' as const, seed: 7 };
    const drawEpochs = (seed: number) => {
      const s = new BatchSampler(corpus, { ...options, seed });
      const epochs: number[][] = [[], [], []];
      for (let b = 0; b < 15; b++) {
        const batch = s.next();
        for (let i = 0; i < 2; i++) {
          const row = batch.tokens.subarray(i * 13, i * 13 + 13);
          expect(Array.from(row)).toEqual(Array.from({ length: 13 }, (_, k) => row[0] + k)); // a whole window
          epochs[batch.epoch].push(row[0] / 12);
        }
      }
      return epochs;
    };
    const epochs = drawEpochs(7);
    for (const e of epochs) expect([...e].sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(epochs[0]).not.toEqual(epochs[1]);
    expect(epochs[0]).not.toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(drawEpochs(7)).toEqual(epochs);
    expect(drawEpochs(8)).not.toEqual(epochs);
  });

  it('a restored state draws exactly the batches an uninterrupted sampler draws', () => {
    for (const order of ['random', 'sequential'] as const) {
      const corpus = arangeCorpus(8 * 23 + 5, true); // 23 samples of N = 8: 7 batches of 3, 2 left over
      const options = { batchSize: 3, segments: 2, segmentLen: 4, order, seed: 3 };
      const a = new BatchSampler(corpus, options);
      for (let k = 0; k < 9; k++) a.next(); // into the second epoch
      const saved = JSON.parse(JSON.stringify(a.state()));
      const rest = Array.from({ length: 12 }, () => a.next());
      const b = new BatchSampler(corpus, options);
      b.setState(saved);
      for (const expected of rest) expect(b.next()).toEqual(expected);
    }
  });

  it('rejects a state from other data or options', () => {
    const s = new BatchSampler(arangeCorpus(100), opts);
    const state = s.state();
    expectError(() => new BatchSampler(arangeCorpus(100), { ...opts, seed: 1 }).setState(state), 'sampler state', 'seed');
    expectError(() => new BatchSampler(arangeCorpus(200), opts).setState(state), 'samplesPerEpoch');
    expectError(() => s.setState({ ...state, batch: 99 }), 'bad position');
  });

  it('says how many tokens a sample or a batch needs', () => {
    expectError(() => new BatchSampler(arangeCorpus(6), opts), 'arange', '6 tokens', 'needs 7');
    expectError(() => new BatchSampler(arangeCorpus(12), { ...opts, batchSize: 4 }), 'batch size 4', 'needs 25 tokens');
    expectError(() => new BatchSampler(arangeCorpus(100), { ...opts, batchSize: 0 }), 'batchSize');
    expectError(() => new BatchSampler(arangeCorpus(100), { ...opts, order: 'shuffled' as 'random' }), 'order');
  });

  it('a file too short for one sample is an error naming it', () => {
    const path = file('short.txt', 'abcdef');
    expectError(() => new BatchSampler(loadCorpus(path, byte), opts), path, 'too short', 'needs 7');
  });

  it('sequentialBatches: every sample in order, the last batch partial', () => {
    const batches = [...sequentialBatches(arangeCorpus(6 * 5 + 1), 6, 2)];
    expect(batches.map((b) => b.count)).toEqual([2, 2, 1]);
    expect(Array.from(batches[2].tokens)).toEqual([24, 25, 26, 27, 28, 29, 30]);
  });
});

describe('splitCorpus', () => {
  it('holds out the last fraction of the stream', () => {
    const { train, heldOut } = splitCorpus(arangeCorpus(100, true), 0.1);
    expect(train.tokens.length).toBe(90);
    expect(heldOut.tokens.length).toBe(10);
    expect(heldOut.tokens[0]).toBe(90);
    expect(heldOut.lossMask!.length).toBe(10);
    expect(train.bytes + heldOut.bytes).toBe(100);
    expect(heldOut.source).toBe('arange (held out)');
  });

  it('says when a part is too small', () => {
    expectError(() => splitCorpus(arangeCorpus(100), 0.05, 7), 'arange', '5 held out', 'at least 7');
    expectError(() => splitCorpus(arangeCorpus(100), 0.97, 7), '3 for training');
    expectError(() => splitCorpus(arangeCorpus(100), 1), 'fraction');
  });
});
