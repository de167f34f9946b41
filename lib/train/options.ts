// Training options: what each one means and its default, the recipe each preset starts from, the learning-rate
// schedule, and the checks a set of options must pass.
import { MemgptError } from '../core/errors.js';
import type { PresetName } from '../nn/config.js';
import type { SampleOrder } from '../data/sampler.js';
import type { Precision } from '../nn/model.js';

/** Options of a training run; Trainer takes any subset, the rest come from defaultTrainOptions (shown here). */
export interface TrainOptions {
  /** Optimizer steps of the whole run (1000). */
  steps: number;
  /** Samples a step, each `segments` segments of the model's segmentLen tokens (8). */
  batchSize: number;
  /** Segments a sample: how far back through the memory the gradient reaches (BPTT depth) (4). */
  segments: number;
  /** Peak learning rate, after the warmup (3e-3). */
  lr: number;
  /** The cosine schedule ends at lr · minLrRatio (0.1). */
  minLrRatio: number;
  /** Steps of linear warmup from 0 to lr (100). */
  warmup: number;
  /** 'cosine' decay to lr · minLrRatio after the warmup, or 'constant' ('cosine'). */
  schedule: 'cosine' | 'constant';
  /** 'adamw' (betas 0.9, 0.95, eps 1e-8) or plain 'sgd' ('adamw'). */
  optimizer: 'adamw' | 'sgd';
  /** AdamW's decoupled weight decay, on the matrices only (0.1). */
  weightDecay: number;
  /** Global-norm clipping threshold; 0 turns it off (1). */
  gradClip: number;
  /** Micro-batches whose gradients are summed (averaged) per optimizer step (1). */
  gradAccum: number;
  /**
   * 'random' samples each step (seeded), 'sequential' passes over the corpus, or 'stream': each batch row reads
   * whole documents sample after sample with its memory carried from one batch to the next (lib/data/stream.ts;
   * the held-out evaluation still scores each sample from mem.init) ('random').
   */
  order: SampleOrder;
  /** Seed of the sample order (0). */
  seed: number;
  /** Evaluate on the held-out corpus every this many steps (0: only at the end) (0). */
  evalEvery: number;
  /** Batches of the held-out corpus an evaluation reads (8). */
  evalBatches: number;
  /** Write the checkpoint every this many steps (0: only at the end) (0). */
  checkpointEvery: number;
  /** Log (metrics.jsonl, the progress line) every this many steps (10). */
  logEvery: number;
  /** The forward's precision (see Precision in model.ts); master weights and optimizer state are float32 either way ('float32'). */
  precision: Precision;
}

/**
 * The training recipe each preset starts from (the flags override it): the learning rate, batch and BPTT depth
 * (segments a sample) that the books benchmark measured the memory paying with (bench/results/books-cpu.json).
 */
export interface Recipe {
  lr: number;
  batchSize: number;
  segments: number;
  warmup: number;
}

export const recipes: Record<PresetName, Recipe> = {
  tiny: { lr: 3e-3, batchSize: 8, segments: 4, warmup: 100 },
  small: { lr: 1e-3, batchSize: 8, segments: 4, warmup: 100 },
  base: { lr: 6e-4, batchSize: 16, segments: 2, warmup: 200 },
};

export function recipeFor(preset: PresetName): Recipe {
  return recipes[preset];
}

/** The defaults of every option (the tiny preset's recipe); Trainer takes any subset of options over them. */
export const defaultTrainOptions: TrainOptions = {
  steps: 1000, batchSize: recipes.tiny.batchSize, segments: recipes.tiny.segments, lr: recipes.tiny.lr, minLrRatio: 0.1, warmup: recipes.tiny.warmup, schedule: 'cosine', optimizer: 'adamw',
  weightDecay: 0.1, gradClip: 1, gradAccum: 1, order: 'random', seed: 0, evalEvery: 0, evalBatches: 8, checkpointEvery: 0, logEvery: 10,
  precision: 'float32',
};

/** The learning rate at a step (0-based): linear warmup, then cosine to lr·minLrRatio, or constant. */
export function learningRate(o: Pick<TrainOptions, 'lr' | 'warmup' | 'steps' | 'schedule' | 'minLrRatio'>, step: number): number {
  if (step < o.warmup) return (o.lr * (step + 1)) / o.warmup;
  if (o.schedule === 'constant') return o.lr;
  const progress = Math.min(1, (step - o.warmup) / Math.max(1, o.steps - o.warmup));
  const min = o.lr * o.minLrRatio;
  return min + 0.5 * (o.lr - min) * (1 + Math.cos(Math.PI * progress));
}

export function validateTrainOptions(o: TrainOptions): TrainOptions {
  const int = (k: keyof TrainOptions, min: number) => {
    const v = o[k] as number;
    if (!Number.isSafeInteger(v) || v < min) throw new MemgptError(`train: ${k} must be an integer ≥ ${min} (got ${v})`);
  };
  int('steps', 1); int('batchSize', 1); int('segments', 1); int('warmup', 0); int('gradAccum', 1); int('seed', 0);
  int('evalEvery', 0); int('evalBatches', 1); int('checkpointEvery', 0); int('logEvery', 1);
  const num = (k: keyof TrainOptions, ok: (v: number) => boolean, what: string) => {
    const v = o[k] as number;
    if (typeof v !== 'number' || !ok(v)) throw new MemgptError(`train: ${k} must be ${what} (got ${v})`);
  };
  num('lr', (v) => v > 0 && Number.isFinite(v), 'a positive number');
  num('minLrRatio', (v) => v >= 0 && v <= 1, 'in [0, 1]');
  num('weightDecay', (v) => v >= 0 && Number.isFinite(v), 'non-negative');
  num('gradClip', (v) => v >= 0 && Number.isFinite(v), 'non-negative (0 turns clipping off)');
  if (o.schedule !== 'cosine' && o.schedule !== 'constant') throw new MemgptError(`train: schedule must be cosine or constant (got ${o.schedule})`);
  if (o.optimizer !== 'adamw' && o.optimizer !== 'sgd') throw new MemgptError(`train: optimizer must be adamw or sgd (got ${o.optimizer})`);
  if (o.order !== 'random' && o.order !== 'sequential' && o.order !== 'stream') throw new MemgptError(`train: order must be random, sequential or stream (got ${o.order})`);
  if (o.precision !== 'float32' && o.precision !== 'bfloat16') throw new MemgptError(`train: precision must be float32 or bfloat16 (got ${o.precision})`);
  return o;
}

