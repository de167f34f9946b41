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
import { MemGPT, type LayerDiagnostics } from '../nn/model.js';
import { AdamW, SGD, clipGradNorm, gradNorm } from '../ops/optim.js';
import { lineChart } from './plot.js';
import { tidy, type Parameter } from '../core/tensor.js';
import { scale } from '../ops/elementwise.js';
import { defaultTrainOptions, learningRate, validateTrainOptions, type TrainOptions } from './options.js';
import { RunLock, commitCheckpoint, committedCheckpoint, runFiles, truncateMetrics, writeFileAtomic, type RunFiles } from './run-folder.js';

export { runFiles, type RunFiles } from './run-folder.js';
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

/**
 * Training state for one run folder. run() trains to options.steps (evaluating, logging and checkpointing as the
 * options say); trainStep(), evaluate() and checkpoint() are its pieces, for a loop of your own.
 */
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
    options: Partial<TrainOptions> = {},
    private readonly data?: RunData,
  ) {
    this.options = validateTrainOptions({ ...defaultTrainOptions, ...options });
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
      const o = this.options;
      this.sampler = new BatchSampler(train, { batchSize: o.batchSize, segments: o.segments, segmentLen: model.config.segmentLen, order: o.order, seed: o.seed });
      this.optimizer = o.optimizer === 'adamw'
        ? new AdamW(this.params, { lr: o.lr, weightDecay: o.weightDecay, betas: [0.9, 0.95], eps: 1e-8, noDecay: noDecay(model) })
        : new SGD(this.params, { lr: o.lr });
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
      if (logged || entry.evalLoss !== undefined) this.log(entry);
      callbacks.onStep?.(entry, logged);
      const checkpointDue = (o.checkpointEvery > 0 && entry.step % o.checkpointEvery === 0) || entry.step === o.steps;
      if (checkpointDue) this.checkpoint();
      else if (entry.evalLoss !== undefined) this.plot();
      last = entry;
      if (entry.step === killAt) process.kill(process.pid, 'SIGKILL');
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (callbacks.signal?.aborted) {
        if (!checkpointDue) this.checkpoint();
        break;
      }
    }
    return last;
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
    // The learning rate scaled to the gradient norm's range, so that both read on one axis.
    const peakNorm = rows.reduce((a, r) => Math.max(a, r.gradNorm), 0), peakLr = rows.reduce((a, r) => Math.max(a, r.lr), 0);
    const lrScale = peakLr > 0 && peakNorm > 0 ? peakNorm / peakLr : 1;
    atomic(this.files.optimizerPlot, lineChart([
      { name: 'gradient norm (before clipping)', points: rows.map((r) => [r.step, r.gradNorm]) },
      { name: `learning rate × ${lrScale.toPrecision(3)}`, points: rows.map((r) => [r.step, r.lr * lrScale]) },
    ], { title: `Optimizer: gradient norm and learning rate (peak ${peakLr.toPrecision(3)})`, xLabel: 'step', yLabel: 'norm' }));
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
