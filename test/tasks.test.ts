// Synthetic long-range tasks: exact lengths, the key in segment 0 and the question in the last,
// one document per sample window, masks exactly on the answers, determinism by seed.
import { describe, expect, it } from 'vitest';

import {
  BatchSampler, MemgptError, Rng, getTokenizer, passkeyCorpus, passkeyDocument, segmentedCopyCorpus, segmentedCopyLayout,
} from '../lib/index.js';

const byte = getTokenizer('byte');

describe('passkeyDocument', () => {
  for (const [segments, segmentLen] of [[4, 64], [3, 32], [2, 42], [8, 24]]) {
    it(`${segments} segments of ${segmentLen}: key in segment 0, question and answer at the end of the last`, () => {
      const rng = new Rng(1);
      const offsets = new Set<number>();
      for (let trial = 0; trial < 20; trial++) {
        const { text, answerStart, key } = passkeyDocument(rng, { segments, segmentLen });
        const N = segments * segmentLen;
        expect(text.length).toBe(N + 1);
        expect(byte.encode(text).length).toBe(N + 1); // ASCII: bytes = characters
        expect(answerStart).toBe(N - 4);
        expect(key).toMatch(/^\d{5}$/);
        expect(text.slice(answerStart)).toBe(key);
        expect(text.replace(/\d{5}/g, '')).not.toMatch(/\d/); // only the key and the answer have digits

        const long = segmentLen >= 42; // the long sentences fit the segment
        const keySentence = long ? `The pass key is ${key}. Remember it. ` : `The pass key is ${key}. `;
        const question = long ? 'What is the pass key? The pass key is ' : 'The pass key is ';
        const keyAt = text.indexOf(keySentence);
        const keyEnd = keyAt + keySentence.length;
        expect(keyAt).toBeGreaterThanOrEqual(1); // byte 0 is filler
        expect(keyEnd).toBeLessThanOrEqual(segmentLen); // fully in segment 0 (inputs 0 … T−1)
        expect(text.endsWith(question + key)).toBe(true);
        expect(answerStart - question.length).toBeGreaterThanOrEqual((segments - 1) * segmentLen); // in the last segment
        expect(text.indexOf('pass key', keyEnd)).toBe(answerStart - question.length + question.indexOf('pass key'));
        offsets.add(keyAt);
      }
      if (segmentLen > 40) expect(offsets.size).toBeGreaterThan(1); // the key moves around segment 0
    });
  }

  it('rejects segments that cannot keep key and question apart', () => {
    const rng = new Rng(0);
    expect(() => passkeyDocument(rng, { segments: 1, segmentLen: 64 })).toThrow(MemgptError);
    expect(() => passkeyDocument(rng, { segments: 4, segmentLen: 23 })).toThrow(/segmentLen must be at least 24/);
  });
});

describe('passkeyCorpus', () => {
  const options = { segments: 3, segmentLen: 48 };
  const N = 144;

  it('sample j is document j; the loss mask is 1 on the 5 answer digits only', () => {
    const corpus = passkeyCorpus(6, 5, options);
    expect(corpus.tokens.length).toBe(6 * N + 1);
    expect(corpus.documents).toBe(6);
    const sampler = new BatchSampler(corpus, { batchSize: 6, segments: 3, segmentLen: 48, order: 'sequential', seed: 0 });
    expect(sampler.samplesPerEpoch).toBe(6);
    const { tokens, mask } = sampler.next();
    const rng = new Rng(5);
    for (let j = 0; j < 6; j++) {
      const doc = passkeyDocument(rng, options);
      const window = byte.decode(tokens.subarray(j * (N + 1), (j + 1) * (N + 1)));
      expect(window.slice(1)).toBe(doc.text.slice(1)); // byte 0 is shared with the previous document
      const targetMask = Array.from(mask!.subarray(j * N, (j + 1) * N));
      expect(targetMask).toEqual([...Array(N - 5).fill(0), 1, 1, 1, 1, 1]);
      // The masked targets are exactly the key's digits.
      const targets = window.slice(1);
      expect(targets.slice(N - 5)).toBe(doc.key);
    }
    expect(corpus.lossMask!.reduce((a, b) => a + b, 0)).toBe(30);
  });

  it('curriculum: early segments are the key digits with a probability that falls to 0 over the first fraction', () => {
    const count = 200, T = 48;
    const corpus = passkeyCorpus(count, 3, { ...options, curriculum: 0.5 });
    const filledAt = [0, 0]; // documents j < 100 with segment 0 / segment 1 filled
    for (let j = 0; j < count; j++) {
      const text = byte.decode(corpus.tokens.subarray(j * N, (j + 1) * N + 1));
      const key = text.slice(N + 1 - 5);
      expect(key).toMatch(/^[1-9][0-9]{4}$/);
      expect(text.slice(N + 1 - 5 - 'The pass key is '.length, N + 1 - 5)).toBe('The pass key is ');
      const segs = [text.slice(1, T), text.slice(T, 2 * T)]; // byte 0 is shared with the previous document
      segs.forEach((seg, s) => {
        if (!/^[0-9]+$/.test(seg)) return;
        expect(key.repeat(12)).toContain(seg); // the key's digits cycled, in order
        expect(j).toBeLessThan(count / 2);
        filledAt[s]++;
      });
      if (!/^[0-9]+$/.test(segs[0])) expect(segs[0]).toContain(`The pass key is ${key}.`);
      else expect(text).not.toContain(`The pass key is ${key}.`);
      if (j >= count / 2) expect(segs[1]).not.toMatch(/[0-9]/); // past the curriculum: a normal document
    }
    // Easiness 1 − j/100 for j < 100: about 50 of those documents have each segment filled.
    for (const n of filledAt) {
      expect(n).toBeGreaterThan(30);
      expect(n).toBeLessThan(70);
    }
    expect(() => passkeyCorpus(3, 9, { ...options, curriculum: 1.5 })).toThrow(/curriculum must be in \[0, 1\]/);
  });

  it('is determined by its seed', () => {
    expect(passkeyCorpus(3, 9, options).tokens).toEqual(passkeyCorpus(3, 9, options).tokens);
    expect(passkeyCorpus(3, 9, options).tokens).not.toEqual(passkeyCorpus(3, 10, options).tokens);
  });
});

describe('segmentedCopyCorpus', () => {
  it('24 symbols, a delimiter, the same 24 again: 49 tokens = 6 segments of 8 plus one, mask on the copy', () => {
    expect(segmentedCopyLayout()).toEqual({ symbols: 24, alphabet: 16, segmentLen: 8, segments: 6, sampleLen: 48, padding: 0 });
    const corpus = segmentedCopyCorpus(5, 2);
    expect(corpus.tokens.length).toBe(5 * 48 + 1);
    const { tokens, mask } = new BatchSampler(corpus, { batchSize: 5, segments: 6, segmentLen: 8, order: 'sequential', seed: 0 }).next();
    for (let j = 0; j < 5; j++) {
      const text = byte.decode(tokens.subarray(j * 49, (j + 1) * 49));
      expect(text).toMatch(/^[a-p]{24}\|[a-p]{24}$/);
      expect(text.slice(25)).toBe(text.slice(0, 24));
      expect(Array.from(mask!.subarray(j * 48, (j + 1) * 48))).toEqual([...Array(24).fill(0), ...Array(24).fill(1)]);
    }
  });

  it('pads to whole segments when the symbols do not fill them', () => {
    const layout = segmentedCopyLayout({ symbols: 10, alphabet: 4, segmentLen: 8 });
    expect(layout).toMatchObject({ segments: 3, sampleLen: 24, padding: 4 });
    const corpus = segmentedCopyCorpus(3, 1, { symbols: 10, alphabet: 4, segmentLen: 8 });
    for (let j = 0; j < 3; j++) {
      const text = byte.decode(corpus.tokens.subarray(j * 24, j * 24 + 25));
      expect(text.slice(1)).toMatch(/^\.{3}[a-d]{10}\|[a-d]{10}$/);
      expect(text.slice(15)).toBe(text.slice(4, 14));
      expect(Array.from(corpus.lossMask!.subarray(j * 24 + 1, j * 24 + 25))).toEqual([...Array(14).fill(0), ...Array(10).fill(1)]);
    }
  });

  it('curriculum: early samples repeat their first 8 symbols; past the curriculum none do', () => {
    const count = 200, N = 48;
    const corpus = segmentedCopyCorpus(count, 4, { curriculum: 0.5 });
    let periodic = 0;
    for (let j = 0; j < count; j++) {
      const text = byte.decode(corpus.tokens.subarray(j * N, (j + 1) * N + 1));
      const symbols = text.slice(0, 24);
      expect(text.slice(24)).toBe(`|${symbols}`); // still a copy task
      const repeats = symbols === symbols.slice(0, 8).repeat(3);
      if (repeats) {
        expect(j).toBeLessThan(count / 2);
        periodic++;
      }
    }
    // Probability 1 − j/100 for j < 100: about 50 periodic samples (a random sample repeats by chance with p ≈ 16^-16).
    expect(periodic).toBeGreaterThan(30);
    expect(periodic).toBeLessThan(70);
    expect(() => segmentedCopyCorpus(3, 1, { curriculum: -0.1 })).toThrow(/curriculum must be in \[0, 1\]/);
  });

  it('is determined by its seed; rejects bad options', () => {
    expect(segmentedCopyCorpus(4, 3).tokens).toEqual(segmentedCopyCorpus(4, 3).tokens);
    expect(segmentedCopyCorpus(4, 3).tokens).not.toEqual(segmentedCopyCorpus(4, 4).tokens);
    expect(() => segmentedCopyCorpus(4, 3, { alphabet: 53 })).toThrow(/alphabet/);
    expect(() => segmentedCopyCorpus(0, 3)).toThrow(/count/);
  });
});
