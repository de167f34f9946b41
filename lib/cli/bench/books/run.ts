// One run of the books benchmark: trains one model variant on a corpus's training documents with the library's
// Trainer (the default recipe), then scores every held-out document in stream mode (memory carried from the
// document's start), by position in the document, and probes the memory: how much the loss moves when the memory
// is reset or swapped for another document's mid-stream, and how much gradient reaches it across segments.
import { readFileSync, rmSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';

import { numThreads } from '../../../native/backend.js';
import { resolveConfig, type ModelConfig } from '../../../nn/config.js';
import { getTokenizer, loadCorpus, BatchSampler, type SampleOrder } from '../../../data/index.js';
import { MemgptError } from '../../../core/errors.js';
import { MemGPT, restartShiftRegister, setReadGateBias, setWriteGateBias } from '../../../nn/model.js';
import { add } from '../../../ops/elementwise.js';
import { keep, tidy, zeros, type Tensor } from '../../../core/tensor.js';
import { Trainer, defaultTrainOptions, type StepLog, type TrainOptions } from '../../../train/trainer.js';
import { flopsPerToken } from '../flops.js';
import { ensureBookCorpus, type BookCorpusName } from './corpora.js';
import { bucketLosses, memoryProbe, scoreDocument } from './score.js';

/** One model variant of the comparison, at the same training tokens as the others. */
export interface BooksVariant {
  name: string;
  memSlots: number;
  segmentLen: number;
  /** Segments a sample (the BPTT depth: gradients flow through the memory across them). */
  segments: number;
  batch: number;
  /** SPEC v2 ablation: how many slots ptr.pos starts as a shift register (default ⌈S/2⌉, fillShiftRegister). */
  registerSlots?: number;
  /** Ablation of the init: the write gate's bias mem.update.bias (default 0, a half-open gate). */
  writeGateBias?: number;
  /** Ablation of the init: the read gate's bias mem.gate.bias (default 0). */
  readGateBias?: number;
  /** How training draws its batches (default: the library's default order). */
  order?: SampleOrder;
}

export interface BooksRunSpec {
  corpus: BookCorpusName;
  preset: string;
  /** The preset's config; the variant overrides memSlots and segmentLen. */
  base: ModelConfig;
  variant: BooksVariant;
  seed: number;
  steps: number;
  lr: number;
  warmup: number;
  /** Score at most this many bytes of each held-out document (0: whole documents). */
  evalBytes: number;
  cache?: string;
  /** Where the run folder goes (model, optimizer state, metrics, plots); removed afterwards unless keep. */
  runDir: string;
  keepRun?: boolean;
}

export interface BooksRunResult {
  corpus: BookCorpusName;
  preset: string;
  variant: string;
  seed: number;
  config: ModelConfig;
  train: { steps: number; batch: number; segments: number; tokens: number; lr: number; warmup: number; documents: number; bytes: number };
  /** Stream-mode bits per byte over every held-out document. */
  bitsPerByte: number;
  evalBytes: number;
  /** The same by position in the document (segments counted from each document's start). */
  byPosition: { name: string; bitsPerByte: number; tokens: number }[];
  /**
   * Bits per byte by offset inside the segment (0 … T−1), over every held-out segment: how much context the model
   * uses. The loss falls while more of the segment's own text helps, and flattens where more no longer does.
   * (Absent in runs recorded before it was measured.)
   */
  byOffset?: number[];
  /** Median training step, tokens per second, and the model FLOPs per trained token. */
  tokensPerSecond: number;
  flopsPerToken: number;
  trainSeconds: number;
  machine: string;
  /** Per logged step: loss, each layer's read gate, write gate and pointer entropy, gradient norms per group. */
  diagnostics: Pick<StepLog, 'step' | 'loss' | 'memory' | 'gradNorms'>[];
  /** Memory probes (memory variants only). */
  probe?: ReturnType<typeof memoryProbe> & { documents: [string, string] };
  /** ‖∂L/∂M‖ per layer at the start of each segment of a training batch (after training), BPTT through the memory. */
  memoryGradient?: number[][];
}

const ln2 = Math.LN2;

/** Trains and evaluates one variant (synchronously; a run of the tiny preset is minutes). */
export function runBooks(spec: BooksRunSpec, log: (line: string) => void = () => {}): BooksRunResult {
  const corpus = ensureBookCorpus(spec.corpus, spec.cache, log);
  const tokenizer = getTokenizer('byte');
  if (spec.base.tokenizer !== 'byte') throw new MemgptError(`books: the ${spec.preset} preset uses the ${spec.base.tokenizer} tokenizer; bits per byte are computed here for the byte tokenizer only`);
  const train = loadCorpus(join(corpus.dir, 'train'), tokenizer);
  const v = spec.variant;
  const config = resolveConfig({ ...spec.base, memSlots: v.memSlots, segmentLen: v.segmentLen });
  const model = MemGPT.init(config, { seed: spec.seed });
  if (v.registerSlots !== undefined) restartShiftRegister(model, v.registerSlots);
  if (v.writeGateBias !== undefined) setWriteGateBias(model, v.writeGateBias);
  if (v.readGateBias !== undefined) setReadGateBias(model, v.readGateBias);
  const options: TrainOptions = {
    ...defaultTrainOptions, steps: spec.steps, batchSize: v.batch, segments: v.segments, lr: spec.lr, warmup: spec.warmup, seed: spec.seed,
    ...(v.order ? { order: v.order } : {}),
    logEvery: Math.max(1, Math.floor(spec.steps / 30)),
  };
  rmSync(spec.runDir, { recursive: true, force: true });
  const trainer = new Trainer(model, train, null, spec.runDir, options);
  const diagnostics: BooksRunResult['diagnostics'] = [];
  const stepSeconds: number[] = [];
  try {
    const t0 = performance.now();
    while (trainer.step < options.steps) {
      const logged = trainer.step % options.logEvery === 0 || trainer.step + 1 === options.steps;
      const entry = trainer.trainStep(logged);
      if (!logged) stepSeconds.push(entry.tokens > 0 ? (v.batch * v.segments * v.segmentLen) / entry.tokensPerSecond : 0);
      if (logged) {
        diagnostics.push({ step: entry.step, loss: entry.loss, memory: entry.memory, gradNorms: entry.gradNorms });
        trainer.log(entry);
        log(`books ${spec.corpus} ${spec.preset} ${v.name} seed ${spec.seed}: step ${entry.step}/${options.steps} loss ${entry.loss.toFixed(4)} ${entry.tokensPerSecond.toFixed(0)} tok/s`);
      }
    }
    const trainSeconds = (performance.now() - t0) / 1000;
    trainer.checkpoint();
    stepSeconds.sort((a, b) => a - b);
    const median = stepSeconds.length ? stepSeconds[stepSeconds.length >> 1] : trainSeconds / options.steps;

    // Stream-mode scoring of the held-out documents, whole (or their first evalBytes).
    const docs = corpus.heldOut.map((d) => ({ name: d.name, tokens: tokenizer.encode(readFileSync(d.path)) }));
    const maxTokens = spec.evalBytes > 0 ? spec.evalBytes : undefined;
    const scores = docs.map((d) => scoreDocument(model, d.tokens, { maxTokens }));
    const nll = scores.reduce((a, s) => a + s.nllSum, 0), tokens = scores.reduce((a, s) => a + s.tokens, 0);
    const result: BooksRunResult = {
      corpus: spec.corpus, preset: spec.preset, variant: v.name, seed: spec.seed, config,
      train: {
        steps: options.steps, batch: v.batch, segments: v.segments, tokens: options.steps * v.batch * v.segments * v.segmentLen,
        lr: options.lr, warmup: options.warmup, documents: corpus.train.length, bytes: train.bytes,
      },
      bitsPerByte: nll / tokens / ln2, evalBytes: tokens,
      byPosition: bucketLosses(scores).map((b) => ({ name: b.name, bitsPerByte: b.loss / ln2, tokens: b.tokens })),
      byOffset: scores[0].offsetNll.map((_, t) => {
        const nllAt = scores.reduce((a, s) => a + s.offsetNll[t], 0), tokensAt = scores.reduce((a, s) => a + s.offsetTokens[t], 0);
        return tokensAt ? +(nllAt / tokensAt / ln2).toFixed(4) : NaN;
      }),
      tokensPerSecond: (v.batch * v.segments * v.segmentLen) / median, flopsPerToken: flopsPerToken(config).trainPerToken, trainSeconds,
      machine: `${cpus()[0]?.model ?? 'unknown CPU'}, ${numThreads()} thread${numThreads() > 1 ? 's' : ''}`,
      diagnostics,
    };
    if (config.memSlots > 0) {
      // The two longest held-out documents (or, with one, it and the longest training document): A's memory is
      // reset, or replaced by B's, before A's 33rd segment; the loss on what follows says what the memory held.
      const order = [...docs].sort((a, b) => b.tokens.length - a.tokens.length);
      const a = order[0];
      const b = order[1] ?? { name: corpus.train[0].name, tokens: tokenizer.encode(readFileSync([...corpus.train].sort((x, y) => y.bytes - x.bytes)[0].path)) };
      const at = 32, span = 128 * config.segmentLen;
      if (a.tokens.length > (at + 4) * config.segmentLen && b.tokens.length > at * config.segmentLen) {
        result.probe = { ...memoryProbe(model, a.tokens, b.tokens, at, Math.min(a.tokens.length - 1, at * config.segmentLen + span)), documents: [a.name, b.name] };
      }
      result.memoryGradient = memoryGradient(model, train, v, spec.seed);
    }
    return result;
  } finally {
    trainer.dispose();
    model.dispose();
    if (!spec.keepRun) rmSync(spec.runDir, { recursive: true, force: true });
  }
}

/**
 * ‖∂L/∂M_l‖ at the start of each segment of one training batch: zero leaves added to the memory before each
 * segment take the gradient that backpropagation through the memory brings there (the first entry is mem.init's
 * broadcast, which gets the gradient of every segment after it).
 */
function memoryGradient(model: MemGPT, train: ReturnType<typeof loadCorpus>, v: BooksVariant, seed: number): number[][] {
  const sampler = new BatchSampler(train, { batchSize: v.batch, segments: v.segments, segmentLen: v.segmentLen, order: 'random', seed: seed + 1 });
  const batch = sampler.next();
  const leaves: Tensor[][] = [];
  try {
    tidy(() => {
      const out = model.forward(batch.tokens, v.batch, v.segments, batch.mask ?? undefined, {
        memoryHook: (_, memory) => {
          const zs = memory.map((m) => keep(zeros(m.shape, { device: m.device, requiresGrad: true })));
          leaves.push(zs);
          return memory.map((m, l) => add(m, zs[l]));
        },
      });
      out.loss.backward();
    });
    return leaves.map((zs) => zs.map((z) => {
      const g = z.grad ? (z.grad.toArray() as Float32Array) : new Float32Array(0);
      let s = 0;
      for (const x of g) s += x * x;
      return Math.sqrt(s);
    }));
  } finally {
    for (const zs of leaves) for (const z of zs) { z.zeroGrad(); z.dispose(); }
    for (const p of model.params.values()) p.zeroGrad();
  }
}
