// The embedded default of `memgpt train` (no arguments): the pass-key task.
// Each document is 4 segments of 64 bytes with a 5-digit key in the first
// segment and the question at the end of the last, so no attention window sees
// both: only the memory can carry the key. The tiny model is trained with its
// memory and again with memSlots = 0, and both are scored on held-out keys by
// greedy decoding, so the run ends by showing what the memory is worth.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

import { presets, type ModelConfig } from './config.js';
import { passkeyCorpus, passkeyDocument } from './data/index.js';
import { Decoder } from './generate.js';
import { MemGPT } from './model.js';
import { Rng } from './random.js';
import { Trainer, defaultTrainOptions, type StepLog, type TrainOptions } from './train.js';

export interface PasskeyRunResult {
  memSlots: number;
  accuracy: number;
  heldOutKeys: number;
  finalLoss: number;
  seconds: number;
}

export interface PasskeyOptions {
  steps: number;
  seed: number;
  outDir: string;
  heldOut: number;
  onLog?: (memSlots: number, entry: StepLog) => void;
}

export const passkeyShape = { segments: 4, segmentLen: 64 };

export function passkeyConfig(memSlots: number): ModelConfig {
  return { ...presets.tiny, segmentLen: passkeyShape.segmentLen, memSlots };
}

/** Exact-match accuracy of greedy decoding of the 5 key digits on fresh documents. */
export function passkeyAccuracy(model: MemGPT, count: number, seed: number): number {
  const rng = new Rng(seed);
  let correct = 0;
  for (let i = 0; i < count; i++) {
    const doc = passkeyDocument(rng, passkeyShape);
    const decoder = new Decoder(model);
    try {
      for (let p = 0; p < doc.answerStart; p++) decoder.feed(doc.text.charCodeAt(p));
      let answer = '';
      for (let d = 0; d < doc.key.length; d++) {
        const dist = decoder.distribution();
        let best = 0;
        for (let v = 1; v < dist.length; v++) if (dist[v] > dist[best]) best = v;
        answer += String.fromCharCode(best);
        decoder.feed(best);
      }
      if (answer === doc.key) correct++;
    } finally {
      decoder.dispose();
    }
  }
  return correct / count;
}

/** Trains one tiny model on the pass-key task and scores it on held-out keys. */
export async function runPasskey(memSlots: number, options: PasskeyOptions): Promise<PasskeyRunResult> {
  const start = performance.now();
  const train = passkeyCorpus(4096, options.seed, passkeyShape);
  const trainOptions: TrainOptions = {
    ...defaultTrainOptions,
    steps: options.steps, batchSize: 16, segments: passkeyShape.segments, lr: 2e-3, warmup: Math.min(100, Math.floor(options.steps / 10)),
    weightDecay: 0.01, seed: options.seed, logEvery: Math.max(1, Math.floor(options.steps / 20)),
  };
  const model = MemGPT.init(passkeyConfig(memSlots), { seed: options.seed });
  const dir = join(options.outDir, memSlots > 0 ? 'with-memory' : 'no-memory');
  mkdirSync(dir, { recursive: true });
  const trainer = new Trainer(model, train, null, dir, trainOptions);
  let finalLoss = NaN;
  try {
    while (trainer.step < trainOptions.steps) {
      const logged = trainer.step % trainOptions.logEvery === 0 || trainer.step + 1 === trainOptions.steps;
      const entry = trainer.trainStep(logged);
      finalLoss = entry.loss;
      if (logged) {
        trainer.log(entry);
        options.onLog?.(memSlots, entry);
      }
      await new Promise<void>((resolve) => setImmediate(resolve));  // lets signals and timers through between steps
    }
    trainer.checkpoint();
    const accuracy = passkeyAccuracy(model, options.heldOut, options.seed + 1_000_003);
    return { memSlots, accuracy, heldOutKeys: options.heldOut, finalLoss, seconds: (performance.now() - start) / 1000 };
  } finally {
    trainer.dispose();
    model.dispose();
  }
}
