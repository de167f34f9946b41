// Training: AdamW or SGD with warmup and cosine decay, global-norm clipping,
// gradient accumulation, backprop through the memory across each sample's
// segments, periodic evaluation and checkpoints (safetensors with optimizer
// state, step and data position, committed as one unit so that a killed run
// resumes bit for bit: lib/train/run-folder.ts), a metrics log and SVG plots in the
// run folder.
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';

import { synchronize, type Device } from '../native/backend.js';
import { loadModel, loadTrainingState, saveModel, saveTrainingState } from '../io/checkpoint.js';
import { readSafetensorsHeader } from '../io/safetensors.js';
import { BatchSampler, samplesIn, sequentialBatches, type Corpus, type SamplerState } from '../data/index.js';
import { noGrad } from '../core/autograd.js';
import { MemgptError } from '../core/errors.js';
import { MemGPT, type LayerDiagnostics, type Precision } from '../nn/model.js';
import type { PresetName } from '../nn/config.js';
import { AdamW, SGD, clipGradNorm, gradNorm } from '../ops/optim.js';
import { lineChart } from './plot.js';
import { tidy, type Parameter } from '../core/tensor.js';
import { scale } from '../ops/elementwise.js';
import { RunLock, commitCheckpoint, committedCheckpoint, runFiles, truncateMetrics, writeFileAtomic, type RunFiles } from './run-folder.js';

export { runFiles, type RunFiles } from './run-folder.js';

/** Metadata key of the training step in a run folder's model.safetensors. */
const STEP_KEY = 'memgpt.step';

export interface TrainOptions {
  steps: number;
  batchSize: number;
  segments: number;
  lr: number;
  /** The cosine schedule ends at lr · minLrRatio. */
  minLrRatio: number;
  warmup: number;
  schedule: 'cosine' | 'constant';
  optimizer: 'adamw' | 'sgd';
  weightDecay: number;
  /** Global-norm clipping threshold; 0 turns it off. */
  gradClip: number;
  /** Micro-batches whose gradients are summed (averaged) per optimizer step. */
  gradAccum: number;
  order: 'random' | 'sequential';
  seed: number;
  /** Evaluate on the held-out corpus every this many steps (0: only at the end). */
  evalEvery: number;
  evalBatches: number;
  /** Write the checkpoint every this many steps (0: only at the end). */
  checkpointEvery: number;
  logEvery: number;
  /** The forward's precision (see Precision in model.ts); master weights and optimizer state are float32 either way. */
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

export const defaultTrainOptions: TrainOptions = {
  steps: 1000, batchSize: recipes.tiny.batchSize, segments: recipes.tiny.segments, lr: recipes.tiny.lr, minLrRatio: 0.1, warmup: recipes.tiny.warmup, schedule: 'cosine', optimizer: 'adamw',
  weightDecay: 0.1, gradClip: 1, gradAccum: 1, order: 'random', seed: 0, evalEvery: 0, evalBatches: 8, checkpointEvery: 0, logEvery: 10,
  precision: 'float32',
};

export interface StepLog {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
  tokens: number;
  tokensPerSecond: number;
  elapsedSeconds: number;
  evalLoss?: number;
  memory?: LayerDiagnostics[];
  /** On diagnostic steps: the gradient's norm per parameter group (before clipping). */
  gradNorms?: Record<ParamGroup, number>;
}

/** Parameter groups whose gradient norms the diagnostics report: where the learning signal goes. */
export type ParamGroup = 'attention' | 'memoryRead' | 'memoryWrite' | 'ffn' | 'embeddingAndHead' | 'norms';

/** The group of a parameter, by its SPEC §2 name. */
export function paramGroup(name: string): ParamGroup {
  if (/\.attn\./.test(name)) return 'attention';
  if (/\.mem\.(ln|kv|gate)\./.test(name)) return 'memoryRead';
  if (/\.(ptr\.|mem\.update|mem\.init)/.test(name)) return 'memoryWrite';
  if (/\.ffn\./.test(name)) return 'ffn';
  if (/(^|\.)ln(\d|_f)?\./.test(name)) return 'norms';
  return 'embeddingAndHead';
}

function groupGradNorms(model: MemGPT): Record<ParamGroup, number> {
  const sums: Record<ParamGroup, number> = { attention: 0, memoryRead: 0, memoryWrite: 0, ffn: 0, embeddingAndHead: 0, norms: 0 };
  for (const [name, p] of model.params) {
    if (!p.grad) continue;
    sums[paramGroup(name)] += gradNorm([p]) ** 2;
  }
  for (const k of Object.keys(sums) as ParamGroup[]) sums[k] = Math.sqrt(sums[k]);
  return sums;
}

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
  if (o.order !== 'random' && o.order !== 'sequential') throw new MemgptError(`train: order must be random or sequential (got ${o.order})`);
  if (o.precision !== 'float32' && o.precision !== 'bfloat16') throw new MemgptError(`train: precision must be float32 or bfloat16 (got ${o.precision})`);
  return o;
}

/** Weight decay goes to the matrices only: not to norms, biases or the memory's initial state. */
function noDecay(model: MemGPT): Parameter[] {
  return [...model.params].filter(([name, p]) => p.rank < 2 || name.endsWith('mem.init')).map(([, p]) => p);
}

/** Mean loss over the first `batches` batches of every sample in order (all of them by default), without gradients. */
export function evaluateLoss(model: MemGPT, corpus: Corpus, batchSize: number, segments: number, batches = Infinity): { loss: number; tokens: number } {
  let nll = 0, tokens = 0, seen = 0;
  for (const batch of sequentialBatches(corpus, segments * model.config.segmentLen, batchSize)) {
    if (seen++ >= batches) break;
    if (batch.mask && !batch.mask.some((m) => m > 0)) continue;  // no target of this batch counts
    const out = noGrad(() => tidy(() => {
      const r = model.forward(batch.tokens, batch.count, segments, batch.mask ?? undefined);
      r.loss.dispose();
      return { nllSum: r.nllSum, tokens: r.tokens };
    }));
    nll += out.nllSum;
    tokens += out.tokens;
  }
  if (tokens === 0) throw new MemgptError(`${corpus.source}: no token to evaluate (the loss mask selects none)`);
  return { loss: nll / tokens, tokens };
}

/** What a run's data was, saved with its state so that --resume can tell a different corpus or split. */
export interface RunData {
  /** The --data path as given. */
  path: string;
  /** The held-out fraction (--held-out). */
  heldOut: number;
  /** Tokens of the training split. */
  trainTokens: number;
}

export interface TrainerState {
  step: number;
  sampler: SamplerState;
  options: TrainOptions;
  elapsedSeconds: number;
  tokens: number;
  /** Absent in states written before it was saved. */
  data?: RunData;
}

/** The trainer state saved with a run folder's committed checkpoint (its metadata only: no tensor is read). */
export function savedTrainerState(dir: string): { state: Partial<TrainerState>; checkpoint: string } | null {
  const cp = committedCheckpoint(runFiles(dir));
  if (!cp) return null;
  const text = readSafetensorsHeader(cp.optimizer).metadata['memgpt.trainer'];
  if (text === undefined) throw new MemgptError(`${cp.optimizer}: no trainer state to resume from`);
  try {
    return { state: JSON.parse(text) as Partial<TrainerState>, checkpoint: cp.optimizer };
  } catch (e) {
    throw new MemgptError(`${cp.optimizer}: its trainer state is not valid JSON (${(e as Error).message})`);
  }
}

/** Training state for one run folder; `step()` does one optimizer step. */
export class Trainer {
  readonly files: RunFiles;
  readonly options: TrainOptions;
  private readonly sampler: BatchSampler;
  private readonly optimizer: AdamW | SGD;
  private readonly params: Parameter[];
  private readonly lock: RunLock;
  step = 0;
  private elapsed = 0;
  private tokens = 0;

  /**
   * Takes the run folder's lock (released by dispose()): a second process training into the same folder is refused
   * with one line, and what a killed one left behind (temp files, an uncommitted step folder) is cleared.
   * `data` is saved with each checkpoint, so that --resume can tell a different corpus or split.
   */
  constructor(
    readonly model: MemGPT,
    private readonly train: Corpus,
    private readonly heldOut: Corpus | null,
    outDir: string,
    options: TrainOptions,
    private readonly data?: RunData,
  ) {
    this.options = validateTrainOptions({ ...options, precision: options.precision ?? 'float32' });
    // A held-out split too short for one sample would fail at the first evaluation, after steps of training and
    // with a run folder that can neither resume nor restart: refuse it before anything runs.
    const sampleLen = this.options.segments * model.config.segmentLen;
    if (heldOut && samplesIn(heldOut.tokens.length, sampleLen) === 0) {
      throw new MemgptError(`${heldOut.source}: the held-out split has ${heldOut.tokens.length} tokens, fewer than one sample of ` +
        `${sampleLen} + 1; give more data, a larger --held-out, or --held-out 0`);
    }
    this.files = runFiles(outDir);
    this.lock = RunLock.acquire(this.files);
    try {
      model.precision = this.options.precision;
      this.params = [...model.params.values()];
      this.sampler = new BatchSampler(train, {
        batchSize: options.batchSize, segments: options.segments, segmentLen: model.config.segmentLen, order: options.order, seed: options.seed,
      });
      this.optimizer = options.optimizer === 'adamw'
        ? new AdamW(this.params, { lr: options.lr, weightDecay: options.weightDecay, betas: [0.9, 0.95], eps: 1e-8, noDecay: noDecay(model) })
        : new SGD(this.params, { lr: options.lr });
    } catch (e) {
      this.lock.release();
      throw e;
    }
  }

  /**
   * Continues from the run folder's committed checkpoint (the model's weights must already be loaded from it: see
   * loadRunModel). Metrics rows logged after that step by the run that was stopped are dropped: they are logged again.
   */
  resume(): void {
    const cp = committedCheckpoint(this.files);
    if (!cp) throw new MemgptError(`--resume: ${this.files.dir} has no checkpoint to resume from`);
    const state = loadTrainingState(cp.optimizer, this.model, this.optimizer) as unknown as TrainerState;
    if (typeof state.step !== 'number' || !state.sampler) throw new MemgptError(`${cp.optimizer}: no trainer state to resume from`);
    // Every field is checked: a step of 2.5 or a negative token count used to run on and write nothing.
    const count = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
    if (!count(state.step)) throw new MemgptError(`${cp.optimizer}: the trainer state's step ${state.step} is not a whole number ≥ 0`);
    if (state.tokens !== undefined && !count(state.tokens)) throw new MemgptError(`${cp.optimizer}: the trainer state's tokens ${state.tokens} is not a whole number ≥ 0`);
    if (state.elapsedSeconds !== undefined && !(typeof state.elapsedSeconds === 'number' && Number.isFinite(state.elapsedSeconds) && state.elapsedSeconds >= 0))
      throw new MemgptError(`${cp.optimizer}: the trainer state's elapsedSeconds ${state.elapsedSeconds} is not a finite number ≥ 0`);
    // Both files carry the step. A committed step folder holds a matching pair by construction; a folder written
    // before checkpoint.json existed may not (a kill between its two top-level files).
    const modelStep = readSafetensorsHeader(cp.model).metadata[STEP_KEY];
    if (modelStep !== String(state.step)) {
      throw new MemgptError(`${this.files.dir}: model.safetensors (step ${modelStep ?? '?'}) and optimizer.safetensors (step ${state.step}) disagree: the run stopped between writing them; resume from a copy of a consistent pair`);
    }
    this.step = state.step;
    this.elapsed = state.elapsedSeconds ?? 0;
    this.tokens = state.tokens ?? 0;
    this.sampler.setState(state.sampler);
    truncateMetrics(this.files, this.step);
  }

  /** One optimizer step over gradAccum micro-batches; returns what was logged. */
  trainStep(withDiagnostics = false): StepLog {
    const o = this.options;
    const t0 = performance.now();
    const lr = learningRate(o, this.step);
    let lossSum = 0;
    let diagnostics: LayerDiagnostics[] | undefined;
    let tokens = 0;
    for (let micro = 0; micro < o.gradAccum; micro++) {
      let batch = this.sampler.next();
      // A window of a prompt/completion corpus may hold no completion token: draw on (bounded by an epoch).
      for (let tries = 0; batch.mask && !batch.mask.some((m) => m > 0); tries++) {
        if (tries > this.sampler.batchesPerEpoch) throw new MemgptError('train: no batch of the corpus has a token whose loss counts');
        batch = this.sampler.next();
      }
      tidy(() => {
        const out = this.model.forward(batch.tokens, o.batchSize, o.segments, batch.mask ?? undefined, { diagnostics: withDiagnostics && micro === 0 });
        const scaled = o.gradAccum > 1 ? scale(out.loss, 1 / o.gradAccum) : out.loss;
        scaled.backward();
        lossSum += out.nllSum / out.tokens;
        tokens += o.batchSize * o.segments * this.model.config.segmentLen;
        diagnostics ??= out.diagnostics;
      });
    }
    const gradNorms = withDiagnostics ? groupGradNorms(this.model) : undefined;
    const norm = o.gradClip > 0 ? clipGradNorm(this.params, o.gradClip) : gradNorm(this.params);
    if (!Number.isFinite(norm)) throw new MemgptError(`train: the gradient norm is ${norm} at step ${this.step + 1}; lower the learning rate`);
    this.optimizer.step(lr);
    this.optimizer.zeroGrad();
    synchronize(this.model.device);
    const seconds = (performance.now() - t0) / 1000;
    this.step++;
    this.elapsed += seconds;
    this.tokens += tokens;
    return {
      step: this.step, loss: lossSum / o.gradAccum, lr, gradNorm: norm, tokens: this.tokens,
      tokensPerSecond: tokens / seconds, elapsedSeconds: this.elapsed, memory: diagnostics, gradNorms,
    };
  }

  evaluate(): number | undefined {
    if (!this.heldOut) return undefined;
    return evaluateLoss(this.model, this.heldOut, this.options.batchSize, this.options.segments, this.options.evalBatches).loss;
  }

  /**
   * Commits this step's checkpoint (checkpoints/step-N/{model,optimizer}.safetensors, then checkpoint.json; the
   * previous one is removed only after) and points model.safetensors at it; then redraws the plots.
   */
  checkpoint(): void {
    const state: TrainerState = {
      step: this.step, sampler: this.sampler.state(), options: this.options, elapsedSeconds: this.elapsed, tokens: this.tokens,
      ...(this.data ? { data: this.data } : {}),
    };
    commitCheckpoint(this.files, this.step, (model, optimizer) => {
      saveTrainingState(optimizer, this.model, this.optimizer, state as unknown as Record<string, unknown>);
      saveModel(model, this.model, { metadata: { [STEP_KEY]: String(this.step) } });
    });
    this.plot();
  }

  log(entry: StepLog): void {
    mkdirSync(this.files.dir, { recursive: true });
    appendFileSync(this.files.metrics, JSON.stringify(entry) + '\n');
  }

  /** Redraws loss.svg and memory.svg from metrics.jsonl. */
  plot(): void {
    if (!existsSync(this.files.metrics)) return;
    const rows = readFileSync(this.files.metrics, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as StepLog);
    const atomic = writeFileAtomic;
    atomic(this.files.lossPlot, lineChart([
      { name: 'train loss', points: rows.map((r) => [r.step, r.loss]) },
      { name: 'held-out loss', points: rows.filter((r) => r.evalLoss !== undefined).map((r) => [r.step, r.evalLoss!]) },
    ], { title: 'Loss (nats per token)', xLabel: 'step', yLabel: 'loss' }));
    const withMemory = rows.filter((r) => r.memory?.length);
    if (withMemory.length) {
      const layers = withMemory[0].memory!.length;
      const series = [];
      for (let l = 0; l < layers; l++) {
        series.push({ name: `L${l} read gate`, points: withMemory.map((r) => [r.step, r.memory![l].readGate] as [number, number]) });
        series.push({ name: `L${l} write gate`, points: withMemory.map((r) => [r.step, r.memory![l].writeGate] as [number, number]) });
        // Normalised by its uniform value ln T: 1 = the pointer spreads over the whole segment, 0 = one token.
        const lnT = Math.log(this.model.config.segmentLen);
        series.push({ name: `L${l} pointer entropy / ln T`, points: withMemory.map((r) => [r.step, r.memory![l].pointerEntropy / lnT] as [number, number]) });
      }
      atomic(this.files.memoryPlot, lineChart(series, { title: 'Memory use per layer (mean gates, pointer entropy)', xLabel: 'step', yLabel: 'gate / entropy ÷ ln T' }));
    }
  }

  /** Frees the optimizer state and releases the run folder's lock. */
  dispose(): void {
    this.optimizer.dispose();
    this.lock.release();
  }
}

/** Loads the model of the run folder's committed checkpoint, for --resume. */
export function loadRunModel(dir: string, device?: Device): MemGPT {
  const cp = committedCheckpoint(runFiles(dir));
  if (!cp) {
    throw new MemgptError(`--resume: ${dir} has no checkpoint to resume from` +
      (existsSync(runFiles(dir).metrics) ? ' (its run stopped before the first one); run the same command without --resume to start it again' : ''));
  }
  return loadModel(cp.model, { device });
}
