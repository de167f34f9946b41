// Stream-order training (lib/data/stream.ts): lanes that read whole documents sample after sample, the memory
// carried from one batch to the next. The layout covers every document from its first token without crossing into
// another; a carried batch computes exactly the loss of one longer sample; and a stream run resumes bit for bit,
// its carried memory included.
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { BatchSampler, MemgptError, noGrad, tidy, type Corpus } from '../lib/index.js';
import { documentSpans, streamLayout } from '../lib/data/stream.js';
import { readSafetensors, writeSafetensors } from '../lib/io/safetensors.js';
import { MemGPT } from '../lib/nn/model.js';
import { Trainer, loadRunModel } from '../lib/train/trainer.js';
import { committedCheckpoint, runFiles } from '../lib/train/run-folder.js';

const root = mkdtempSync(join(tmpdir(), 'memgpt-stream-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Documents of the given lengths, back to back; token i of the corpus is 1000·document + offset (distinct ids). */
function documents(lengths: number[], vocab = 0): Corpus {
  const tokens: number[] = [], starts: number[] = [];
  lengths.forEach((n, d) => {
    starts.push(tokens.length);
    for (let i = 0; i < n; i++) tokens.push(vocab ? (7 * d + 3 * i + (i * i) % 11) % vocab : 1000 * d + i);
  });
  return { tokens: Int32Array.from(tokens), lossMask: null, bytes: tokens.length, documents: lengths.length, documentStarts: Int32Array.from(starts), source: 'docs' };
}

describe('stream order', () => {
  const opts = { batchSize: 2, segments: 2, segmentLen: 2, order: 'stream' as const, seed: 5 };

  it('cuts each document into samples from its first token, pads and masks the last, and resets the memory where a document or a lane starts', () => {
    // N = 4. Documents of 9, 5, 13 and 1 tokens: 2, 1 and 3 pieces (8, 4, 12 targets); the 1-token one has no target.
    const corpus = documents([9, 5, 13, 1]);
    expect(documentSpans(corpus).map((d) => d.end - d.start)).toEqual([9, 5, 13]);
    const s = new BatchSampler(corpus, opts);
    expect(s.samplesPerEpoch).toBe(6);
    expect(s.batchesPerEpoch).toBe(3);
    const seen = new Map<number, number[]>(); // document → its targets, in the order the lanes read them
    const lanes: number[][] = [[], []];
    for (let b = 0; b < 3; b++) {
      const batch = s.next();
      expect(batch.epoch).toBe(0);
      for (let row = 0; row < 2; row++) {
        const ids = Array.from(batch.tokens.subarray(row * 5, row * 5 + 5));
        const mask = batch.mask ? Array.from(batch.mask.subarray(row * 4, row * 4 + 4)) : [1, 1, 1, 1];
        const doc = Math.floor(ids[0] / 1000);
        // A piece starts on a multiple of N inside its document and never reads another document's tokens.
        expect(ids[0] % 1000 % 4).toBe(0);
        for (let p = 0; p < 4; p++) {
          if (mask[p]) {
            expect(Math.floor(ids[p + 1] / 1000)).toBe(doc);
            expect(ids[p + 1]).toBe(ids[p] + 1);
            seen.set(doc, [...(seen.get(doc) ?? []), ids[p + 1] % 1000]);
          } else expect(ids[p + 1]).toBe(0); // padding past the document's end
        }
        expect(batch.reset![row]).toBe(ids[0] % 1000 === 0 || b === 0 ? 1 : 0);
        lanes[row].push(ids[0]);
      }
    }
    // Every target of every document once (a document may end one lane and begin the next, which starts it
    // from mem.init); a lane reads a document's pieces one after another.
    expect([...seen.keys()].sort()).toEqual([0, 1, 2]);
    const sorted = (d: number) => [...seen.get(d)!].sort((x, y) => x - y);
    expect(sorted(0)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(sorted(1)).toEqual([1, 2, 3, 4]);
    expect(sorted(2)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    for (const lane of lanes) for (let i = 1; i < lane.length; i++) if (lane[i] % 1000 !== 0) expect(lane[i]).toBe(lane[i - 1] + 4);
  });

  it('another document order each epoch, the same for the same seed, and a restored state draws what an uninterrupted sampler draws', () => {
    const corpus = documents([9, 5, 13, 7, 21, 4, 6]);
    const firstTokens = (seed: number) => {
      const s = new BatchSampler(corpus, { ...opts, seed });
      return Array.from({ length: 3 * s.batchesPerEpoch }, () => Array.from(s.next().tokens.filter((_, i) => i % 5 === 0)));
    };
    const a = firstTokens(5);
    const perEpoch = a.length / 3;
    expect(a.slice(0, perEpoch)).not.toEqual(a.slice(perEpoch, 2 * perEpoch));
    expect(firstTokens(5)).toEqual(a);
    expect(firstTokens(6)).not.toEqual(a);
    const s = new BatchSampler(corpus, opts);
    for (let k = 0; k < perEpoch + 2; k++) s.next();
    const saved = JSON.parse(JSON.stringify(s.state()));
    const rest = Array.from({ length: perEpoch }, () => s.next());
    const t = new BatchSampler(corpus, opts);
    t.setState(saved);
    for (const expected of rest) expect(t.next()).toEqual(expected);
  });

  it('a corpus with fewer samples than the batch is one clear error', () => {
    expect(() => new BatchSampler(documents([9]), { ...opts, batchSize: 3 })).toThrow(MemgptError);
    expect(() => streamLayout([{ start: 0, end: 9 }], [0], 4, 3)).toThrow(/fewer than the batch size 3/);
  });

  it('the memory carried into a batch gives exactly the loss of one sample twice as long; a reset row starts from mem.init', () => {
    const cfg = { tokenizer: 'byte' as const, dModel: 16, nHeads: 2, dFF: 32, nLayers: 2, segmentLen: 4, memSlots: 3 };
    const model = MemGPT.init(cfg, { seed: 2 });
    try {
      const K = 2, N = K * 4;
      const sample = (seed: number) => Int32Array.from({ length: 2 * N + 1 }, (_, i) => (i * 37 + seed * 101 + 11) % 256);
      const [a, b] = [sample(0), sample(1)];
      const halves = (rows: Int32Array[], h: number) => {
        const out = new Int32Array(rows.length * (N + 1));
        rows.forEach((r, i) => out.set(r.subarray(h * N, h * N + N + 1), i * (N + 1)));
        return out;
      };
      noGrad(() => tidy(() => {
        const first = model.forward(halves([a, b], 0), 2, K, undefined, { returnMemory: true });
        expect(first.memory!.map((m) => m.shape)).toEqual([[2, 3, 16], [2, 3, 16]]);
        expect(first.memory!.some((m) => m.requiresGrad)).toBe(false);
        // Row a carries on, row b starts again as a new document would.
        const second = model.forward(halves([a, b], 1), 2, K, undefined, { initialMemory: model.carriedMemory(first.memory!, [0, 1]) });
        const wholeA = model.forward(a, 1, 2 * K).nllSum;
        const firstA = model.forward(halves([a], 0), 1, K).nllSum;
        const freshB = model.forward(halves([b], 1), 1, K).nllSum;
        const firstB = model.forward(halves([b], 0), 1, K).nllSum;
        expect(first.nllSum).toBeCloseTo(firstA + firstB, 4);
        expect(second.nllSum).toBeCloseTo(wholeA - firstA + freshB, 4);
        // Every row reset: mem.init for all, the default start.
        const reset = model.forward(halves([a, b], 1), 2, K, undefined, { initialMemory: model.carriedMemory(first.memory!, [1, 1]) });
        expect(reset.nllSum).toBe(model.forward(halves([a, b], 1), 2, K).nllSum);
        for (const m of first.memory!) m.dispose();
      }));
      // Gradients: mem.init learns from the rows that start from it, and from no other.
      const init = model.params.get('layers.0.mem.init')!;
      const initGrad = (reset: number[]) => tidy(() => {
        const carried = noGrad(() => model.forward(halves([a, b], 0), 2, K, undefined, { returnMemory: true }).memory!);
        model.forward(halves([a, b], 1), 2, K, undefined, { initialMemory: model.carriedMemory(carried, reset) }).loss.backward();
        for (const m of carried) m.dispose();
        const g = init.grad ? Array.from(init.grad.toArray() as Float32Array) : [];
        for (const p of model.params.values()) p.zeroGrad();
        return g;
      });
      expect(initGrad([0, 0]).every((x) => x === 0)).toBe(true);
      expect(initGrad([0, 1]).some((x) => x !== 0)).toBe(true);
      expect(() => model.carriedMemory([], [0, 1])).toThrow(MemgptError);
    } finally {
      model.dispose();
    }
  });

  it('a stream run resumes bit for bit: its carried memory is saved with the optimizer state', () => {
    const cfg = { tokenizer: 'byte' as const, dModel: 16, nHeads: 2, dFF: 32, nLayers: 1, segmentLen: 4, memSlots: 2 };
    const corpus = documents([41, 23, 57, 30, 19, 64], 256);
    const options = { steps: 8, batchSize: 2, segments: 2, order: 'stream' as const, warmup: 0, logEvery: 1, lr: 1e-2 };
    const run = (dir: string, until: number, resume: boolean) => {
      const model = resume ? loadRunModel(dir) : MemGPT.init(cfg, { seed: 4 });
      const trainer = new Trainer(model, corpus, null, dir, options);
      try {
        if (resume) trainer.resume();
        const out: number[] = [];
        while (trainer.step < until) out.push(trainer.trainStep().loss);
        trainer.checkpoint();
        return out;
      } finally {
        trainer.dispose();
        model.dispose();
      }
    };
    const whole = run(join(root, 'whole'), 8, false);
    const first = run(join(root, 'split'), 3, false);
    const state = committedCheckpoint(runFiles(join(root, 'split')))!.optimizer;
    const saved = readSafetensors(state);
    expect(saved.tensors.get('stream.memory.0')?.shape).toEqual([2, 2, 16]);
    cpSync(join(root, 'split'), join(root, 'forgot'), { recursive: true });
    expect([...first, ...run(join(root, 'split'), 8, true)]).toEqual(whole);
    // The control: the same resume with the carried memory taken out of the state reads on from mem.init, and differs.
    const forgotten = committedCheckpoint(runFiles(join(root, 'forgot')))!.optimizer;
    const { tensors, metadata } = readSafetensors(forgotten);
    writeSafetensors(forgotten, [...tensors].filter(([name]) => !name.startsWith('stream.')), metadata);
    expect(run(join(root, 'forgot'), 8, true)).not.toEqual(whole.slice(3));
  });
});
