// Training: AdamW or SGD with warmup and cosine decay, global-norm clipping,
// gradient accumulation, backprop through the memory across each sample's
// segments, periodic evaluation and checkpoints (safetensors with optimizer
// state, step and data position, committed as one unit so that a killed run
// resumes bit for bit: lib/train/run-folder.ts), a metrics log and SVG plots in the
// run folder.
import { appendFileSync, mkdirSync } from 'node:fs';

import { synchronize } from '../native/backend.js';
import { loadStreamMemory, loadTrainingState, saveModel, saveTrainingState } from '../io/checkpoint.js';
import { readSafetensorsHeader } from '../io/safetensors.js';
import { BatchSampler, samplesIn, type Corpus } from '../data/index.js';
import { MemgptError } from '../core/errors.js';
import { MemGPT, type LayerDiagnostics } from '../nn/model.js';
import { AdamW, SGD, clipGradNorm, gradNorm } from '../ops/optim.js';
import { drawRunPlots } from './plot.js';
import { groupGradNorms, noDecay, type ParamGroup } from './param-groups.js';
import type { RunData, TrainerState } from './resume.js';
import { batchRows, evaluateLoss, targetCount } from './evaluate.js';
import { keep, tensor, tidy, type Parameter, type Tensor } from '../core/tensor.js';
import { scale } from '../ops/elementwise.js';
import { defaultTrainOptions, learningRate, validateTrainOptions, type TrainOptions } from './options.js';
import { RunLock, commitCheckpoint, committedCheckpoint, runFiles, truncateMetrics, type RunFiles } from './run-folder.js';
import { ProcessGroup } from '../parallel/group.js';
import { GradientAllReduce, ZeroAdamW, broadcastParams, checkParallelDevice, checkRanksAgree } from '../parallel/data-parallel.js';

export { runFiles, type RunFiles } from './run-folder.js';
export { loadRunModel, savedTrainerState, type RunData, type TrainerState } from './resume.js';
export { paramGroup, type ParamGroup } from './param-groups.js';
export { evaluateLoss } from './evaluate.js';
export { defaultTrainOptions, learningRate, recipeFor, recipes, validateTrainOptions, type Recipe, type TrainOptions } from './options.js';

/** Metadata key of the training step in a run folder's model.safetensors. */
const STEP_KEY = 'memgpt.step';

/** What Trainer.run() reports and obeys. */
export interface RunCallbacks {
  /** After each step, with its log; `logged` says whether it went to metrics.jsonl (every logEvery-th step). */
  onStep?: (entry: StepLog, logged: boolean) => void;
  /** Ends the run between steps, after a checkpoint. */
  signal?: AbortSignal;
}

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
  /** Data parallel: seconds of the step spent summing over the ranks, waiting for the slowest rank included. */
  syncSeconds?: number;
}

/** Data parallelism for a Trainer: the ranks' group, and whether the optimizer state is sharded (ZeRO-1). */
export interface ParallelOptions {
  group: ProcessGroup;
  /** 1: ZeRO-1 (AdamW only). Default 0. */
  zero?: 0 | 1;
}

/**
 * Training state for one run folder. run() trains to options.steps (evaluating, logging and checkpointing as the
 * options say); trainStep(), evaluate() and checkpoint() are its pieces, for a loop of your own.
 *
 * Data parallel (`parallel`): options.batchSize is the global batch; each of W ranks computes rows
 * [rank·B/W, (rank + 1)·B/W) of every batch one process would draw, the gradients are summed over the ranks (each
 * rank's loss weighted by its share of the batch's targets, so that the sum is the gradient of the global mean),
 * and every rank takes the same step. Rank 0 alone writes the run folder. Every method is then collective: all
 * ranks call it in the same order.
 */
export class Trainer {
  readonly files: RunFiles;
  readonly options: TrainOptions;
  private readonly sampler: BatchSampler;
  private readonly optimizer: AdamW | SGD | ZeroAdamW;
  private readonly params: Parameter[];
  private readonly lock: RunLock | null;
  readonly group: ProcessGroup;
  private readonly gradientSum: GradientAllReduce | null = null;
  step = 0;
  /** Set by run() when its signal aborts; with several ranks the stop is agreed at the next step's sum. */
  private stopAsked = false;
  private stopAgreed = false;
  private elapsed = 0;
  private tokens = 0;
  /** Stream order: each layer's memory that this rank's rows ended the last batch with (null: none yet, rows start from mem.init). */
  private carried: Tensor[] | null = null;

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
    options: Partial<TrainOptions> = {},
    private readonly data?: RunData,
    parallel?: ParallelOptions,
  ) {
    this.options = validateTrainOptions({ ...defaultTrainOptions, ...options });
    this.group = parallel?.group ?? ProcessGroup.single();
    const W = this.group.worldSize;
    if (this.options.batchSize % W !== 0) {
      throw new MemgptError(`train: the global batch of ${this.options.batchSize} does not split over ${W} ranks`);
    }
    if (W > 1) checkParallelDevice(model.device);
    if (parallel?.zero === 1 && this.options.optimizer !== 'adamw') throw new MemgptError('train: --zero 1 shards AdamW\'s state; SGD has none');
    // A held-out split too short for one sample would fail at the first evaluation, after steps of training and
    // with a run folder that can neither resume nor restart: refuse it before anything runs.
    const sampleLen = this.options.segments * model.config.segmentLen;
    if (heldOut && samplesIn(heldOut.tokens.length, sampleLen) === 0) {
      throw new MemgptError(`${heldOut.source}: the held-out split has ${heldOut.tokens.length} tokens, fewer than one sample of ` +
        `${sampleLen} + 1; give more data, a larger --held-out, or --held-out 0`);
    }
    this.files = runFiles(outDir);
    this.lock = this.group.rank === 0 ? RunLock.acquire(this.files) : null;
    try {
      model.precision = this.options.precision;
      this.params = [...model.params.values()];
      const o = this.options;
      this.sampler = new BatchSampler(train, { batchSize: o.batchSize, segments: o.segments, segmentLen: model.config.segmentLen, order: o.order, seed: o.seed });
      const adamw = { lr: o.lr, weightDecay: o.weightDecay, betas: [0.9, 0.95] as [number, number], eps: 1e-8, noDecay: noDecay(model) };
      if (parallel?.zero === 1) this.optimizer = new ZeroAdamW(this.group, this.params, adamw);
      else {
        this.optimizer = o.optimizer === 'adamw' ? new AdamW(this.params, adamw) : new SGD(this.params, { lr: o.lr });
        if (W > 1) this.gradientSum = new GradientAllReduce(this.group, this.params);
      }
      broadcastParams(this.group, this.params);
      // Ranks that differ (another --data file, config or flag) would sum gradients that mean nothing.
      checkRanksAgree(this.group, { 'model config': JSON.stringify(model.config), 'training options': JSON.stringify(this.options), 'training tokens': train.tokens });
    } catch (e) {
      this.lock?.release();
      throw e;
    }
  }

  /** Whether this process writes the run folder (rank 0, or the only process). */
  get isRoot(): boolean {
    return this.group.rank === 0;
  }

  /**
   * Continues from the run folder's committed checkpoint (the model's weights must already be loaded from it: see
   * loadRunModel). Metrics rows logged after that step by the run that was stopped are dropped: they are logged again.
   */
  resume(): void {
    const cp = committedCheckpoint(this.files);
    if (!cp) throw new MemgptError(`--resume: ${this.files.dir} has no checkpoint to resume from`);
    // A checkpoint holds the single-process optimizer state; under ZeRO-1 each rank keeps its run of it.
    const load = (optimizer: AdamW | SGD) => loadTrainingState(cp.optimizer, this.model, optimizer) as Partial<TrainerState>;
    const state = this.optimizer instanceof ZeroAdamW ? this.optimizer.loadFull(load) : load(this.optimizer);
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
    if (this.streaming) this.setCarriedRows(loadStreamMemory(cp.optimizer, this.model, this.options.batchSize));
    if (this.isRoot) truncateMetrics(this.files, this.step);
  }

  /** Stream order on a model with memory: each row's memory is carried from one batch to the next (see stream.ts). */
  get streaming(): boolean {
    return this.options.order === 'stream' && this.model.config.memSlots > 0;
  }

  /** Replaces this rank's carried memory (its rows; null: they start from mem.init). */
  private setCarried(mine: Tensor[] | null): void {
    for (const m of this.carried ?? []) m.dispose();
    this.carried = mine;
  }

  /** Keeps this rank's rows of the whole batch's carried memory, host arrays per layer as a checkpoint holds them. */
  private setCarriedRows(full: Float32Array[] | null): void {
    if (!full) return this.setCarried(null);
    const { memSlots: S, dModel: D } = this.model.config;
    const W = this.group.worldSize, rows = this.options.batchSize / W, from = this.group.rank * rows;
    this.setCarried(full.map((m) => keep(tensor(m.slice(from * S * D, (from + rows) * S * D), [rows, S, D], { device: this.model.device }))));
  }

  /** The whole batch's carried memory, gathered from the ranks (collective), as host arrays per layer; null when none. */
  private gatherCarried(): Float32Array[] | null {
    if (!this.carried) return null;
    const W = this.group.worldSize;
    return this.carried.map((m) => {
      const mine = m.toArray() as Float32Array;
      if (W === 1) return mine;
      const full = new Float32Array(mine.length * W);
      this.group.allgatherv(mine, full, new Array(W).fill(mine.length));
      return full;
    });
  }

  /** One optimizer step over gradAccum micro-batches; returns what was logged. */
  trainStep(withDiagnostics = false): StepLog {
    const o = this.options;
    const t0 = performance.now();
    const lr = learningRate(o, this.step);
    let lossSum = 0;
    let diagnostics: LayerDiagnostics[] | undefined;
    let tokens = 0;
    const N = o.segments * this.model.config.segmentLen;
    const W = this.group.worldSize, rows = o.batchSize / W, from = this.group.rank * rows;
    this.gradientSum?.prepare();
    for (let micro = 0; micro < o.gradAccum; micro++) {
      let batch = this.sampler.next();
      // A window of a prompt/completion corpus may hold no completion token: draw on (bounded by an epoch).
      for (let tries = 0; batch.mask && !batch.mask.some((m) => m > 0); tries++) {
        if (tries > this.sampler.batchesPerEpoch) throw new MemgptError('train: no batch of the corpus has a token whose loss counts');
        batch = this.sampler.next();
        this.setCarried(null);  // a stream's rows skipped a sample: their memory starts again
      }
      tokens += o.batchSize * N;
      // This rank's rows; its mean loss is weighted by its share of the batch's targets, so that the gradients
      // summed over the ranks are those of the whole batch's mean loss.
      const mine = W > 1 ? batchRows(batch.tokens, batch.mask, N, from, from + rows) : batch;
      const share = W > 1 ? targetCount(mine.mask, rows, N) / targetCount(batch.mask, o.batchSize, N) : 1;
      if (share === 0) {
        // None of this rank's targets count: it adds nothing to this micro-batch (and a stream's rows start again).
        this.setCarried(null);
        continue;
      }
      tidy(() => {
        const reset = batch.reset?.subarray(from, from + rows);
        const initialMemory = this.streaming && this.carried && reset ? this.model.carriedMemory(this.carried, reset) : undefined;
        const out = this.model.forward(mine.tokens, rows, o.segments, mine.mask ?? undefined, {
          diagnostics: withDiagnostics && micro === 0, initialMemory, returnMemory: this.streaming,
        });
        const weight = share / o.gradAccum;
        const scaled = weight !== 1 ? scale(out.loss, weight) : out.loss;
        scaled.backward();
        if (out.memory) this.setCarried(out.memory);  // after backward: the old memory was an input of this graph
        lossSum += (out.nllSum / out.tokens) * share;
        diagnostics ??= out.diagnostics;
      });
    }
    let norm: number;
    let gradNorms: Record<ParamGroup, number> | undefined;
    const syncStart = performance.now();
    if (this.optimizer instanceof ZeroAdamW) {
      norm = this.optimizer.reduceGradients();
      if (o.gradClip > 0 && Number.isFinite(norm)) this.optimizer.clip(o.gradClip, norm);
    } else {
      this.gradientSum?.sum();
      gradNorms = withDiagnostics ? groupGradNorms(this.model) : undefined;
      norm = o.gradClip > 0 ? clipGradNorm(this.params, o.gradClip) : gradNorm(this.params);
    }
    if (W > 1) {
      // The global mean loss, and whether any rank was asked to stop (all ranks then stop at this same step).
      const sums = Float64Array.of(lossSum, this.stopAsked ? 1 : 0);
      this.group.allreduce(sums);
      lossSum = sums[0];
      this.stopAgreed = sums[1] > 0;
    }
    // Clipping (and the diagnostics' norms) lie inside this window too; both are small beside the sums.
    const syncSeconds = W > 1 ? (performance.now() - syncStart) / 1000 : undefined;
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
      ...(syncSeconds !== undefined ? { syncSeconds } : {}),
    };
  }

  /**
   * Trains from the current step to options.steps: each step's log goes to onStep (with evalLoss on evaluation
   * steps); metrics.jsonl gets every logEvery-th step and each evaluation; the plots are redrawn at each evaluation
   * and the checkpoint written every checkpointEvery steps and at the end. Between steps the event loop runs, and an
   * aborted signal ends the run after a checkpoint of the step reached. Returns the last step's log.
   */
  async run(callbacks: RunCallbacks = {}): Promise<StepLog | undefined> {
    const o = this.options;
    let last: StepLog | undefined;
    const killAt = Number(process.env.MEMGPT_FAULT_KILL_AFTER_STEP ?? NaN); // test-only fault injection (resume tests)
    while (this.step < o.steps) {
      const logged = this.step % o.logEvery === 0 || this.step + 1 === o.steps;
      const entry = this.trainStep(logged);
      if ((o.evalEvery > 0 && entry.step % o.evalEvery === 0) || entry.step === o.steps) entry.evalLoss = this.evaluate();
      if (this.isRoot && (logged || entry.evalLoss !== undefined)) this.log(entry);
      if (this.isRoot) callbacks.onStep?.(entry, logged);
      const checkpointDue = (o.checkpointEvery > 0 && entry.step % o.checkpointEvery === 0) || entry.step === o.steps;
      if (checkpointDue) this.checkpoint();
      else if (entry.evalLoss !== undefined && this.isRoot) this.plot();
      last = entry;
      if (entry.step === killAt && (process.env.MEMGPT_FAULT_RANK ?? '0') === String(this.group.rank)) process.kill(process.pid, 'SIGKILL');
      await new Promise<void>((resolve) => setImmediate(resolve));
      this.stopAsked ||= callbacks.signal?.aborted === true;
      // One process stops at once; ranks stop at the step where the sum showed that one of them was asked to.
      if (this.group.worldSize === 1 ? this.stopAsked : this.stopAgreed) {
        if (!checkpointDue) this.checkpoint();
        break;
      }
    }
    return last;
  }

  evaluate(): number | undefined {
    if (!this.heldOut) return undefined;
    return evaluateLoss(this.model, this.heldOut, this.options.batchSize, this.options.segments, this.options.evalBatches, this.group).loss;
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
    // Under ZeRO-1 every rank gives its run of the moments (collective); rank 0 writes them. A stream's carried
    // memory is saved with them, so that a resumed run reads on exactly as an uninterrupted one.
    const streamMemory = this.streaming ? this.gatherCarried() ?? undefined : undefined;
    const save = (full: AdamW | SGD) => {
      if (!this.isRoot) return;
      commitCheckpoint(this.files, this.step, (model, optimizer) => {
        saveTrainingState(optimizer, this.model, full, { ...state }, streamMemory);
        saveModel(model, this.model, { metadata: { [STEP_KEY]: String(this.step) } });
      });
      this.plot();
    };
    if (this.optimizer instanceof ZeroAdamW) this.optimizer.withGathered(save);
    else save(this.optimizer);
  }

  log(entry: StepLog): void {
    mkdirSync(this.files.dir, { recursive: true });
    appendFileSync(this.files.metrics, JSON.stringify(entry) + '\n');
  }

  /** Redraws loss.svg, optimizer.svg and memory.svg from metrics.jsonl. */
  plot(): void {
    drawRunPlots(this.files, this.model.config.segmentLen);
  }

  /** Frees the optimizer state and releases the run folder's lock. */
  dispose(): void {
    this.setCarried(null);
    this.optimizer.dispose();
    this.gradientSum?.dispose();
    this.lock?.release();
  }
}
