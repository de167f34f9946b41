// The segmented-copy task (the memory's second acceptance task) through the library's own trainer:
// 24 random symbols, '|', the same 24 again, in segments of 8 tokens, so each copied symbol is three
// segments after its source and only the memory can carry it. Scored by greedy, teacher-forced
// token accuracy on the copied half of fresh samples.
import { rmSync } from 'node:fs';
import { join } from 'node:path';

import { presets, type ModelConfig } from '../lib/nn/config.js';
import { segmentedCopyCorpus, segmentedCopyLayout } from '../lib/data/index.js';
import { Decoder } from '../lib/infer/single-decoder.js';
import { MemGPT, setReadGateBias } from '../lib/nn/model.js';
import { MEMORY_TASK_READ_GATE_BIAS } from '../lib/tasks/passkey.js';
import { Trainer, defaultTrainOptions, type TrainOptions } from '../lib/train/trainer.js';

export interface CopyTask {
  steps: number;
  batchSize: number;
  lr: number;
  /** Fraction of training over which periodic samples fade out (see segmentedCopyCorpus). */
  curriculum: number;
}

/** The recipe found with bench/copy.ts (rope positions and lr 1e-3 matter: sinusoidal or 3e-3 stayed at chance). */
export const copyTask: CopyTask = { steps: 30000, batchSize: 32, lr: 1e-3, curriculum: 0.1 };

const layout = segmentedCopyLayout();

export function copyModelConfig(memSlots: number): ModelConfig {
  return { ...presets.tiny, segmentLen: layout.segmentLen, memSlots, positional: 'rope' };
}

/** A fresh tiny model and its Trainer on exactly steps · batchSize samples taken in order. */
export function copyTrainer(task: CopyTask, memSlots: number, seed: number, outDir: string): Trainer {
  const train = segmentedCopyCorpus(task.steps * task.batchSize, seed, { curriculum: task.curriculum });
  const options: TrainOptions = {
    ...defaultTrainOptions,
    steps: task.steps, batchSize: task.batchSize, segments: layout.segments, lr: task.lr, warmup: 50,
    weightDecay: 0.01, order: 'sequential', seed, logEvery: Math.max(1, Math.floor(task.steps / 100)),
  };
  const dir = join(outDir, memSlots > 0 ? 'with-memory' : 'no-memory');
  rmSync(dir, { recursive: true, force: true }); // this task's own folder: a new run replaces the last
  const model = MemGPT.init(copyModelConfig(memSlots), { seed });
  try {
    setReadGateBias(model, MEMORY_TASK_READ_GATE_BIAS); // the memory-only tasks' start (lib/tasks/passkey.ts says why)
    return new Trainer(model, train, null, dir, options);
  } catch (e) {
    model.dispose();
    throw e;
  }
}

/** Greedy, teacher-forced accuracy over the copied half of count fresh samples. */
export function copyAccuracy(model: MemGPT, count: number, seed: number): { tokens: number; accuracy: number } {
  const { sampleLen: N, symbols } = layout;
  const corpus = segmentedCopyCorpus(count, seed);
  let right = 0, total = 0;
  for (let j = 0; j < count; j++) {
    const sample = corpus.tokens.subarray(j * N, j * N + N + 1);
    const decoder = new Decoder(model);
    try {
      for (let i = 0; i < N; i++) {
        decoder.feed(sample[i]);
        if (i < N - symbols) continue; // inputs before the delimiter's prediction: no copied target yet
        const dist = decoder.distribution();
        let best = 0;
        for (let v = 1; v < dist.length; v++) if (dist[v] > dist[best]) best = v;
        if (best === sample[i + 1]) right++;
        total++;
      }
    } finally {
      decoder.dispose();
    }
  }
  return { tokens: total, accuracy: right / total };
}
