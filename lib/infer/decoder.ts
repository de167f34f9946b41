// Incremental decoding (SPEC.md §5) on the native kernels: a BatchDecoder runs B sequences at once, each with its
// own position, memory and copy context, one token per sequence a step, through the model's own block() with the
// attention family's decode kernel. Per layer the current segment's keys, values and outputs stay on the device, and
// the memory is written there when a sequence's segment is full, so memory and time per token stay bounded by T
// and S however long the text. A step sends the tokens and positions to the device and, when asked for, brings
// back the distributions: nothing else crosses per token. A step's kernels are recorded once as a kernel graph and
// replayed at every later step (kernel-graph.ts): the JavaScript of the layers runs once, not once a token. Decoder
// (single-decoder.ts) is the one-sequence form. Sampling is in sampling.ts, text streaming in text.ts.
import { noGrad } from '../core/autograd.js';
import { MemgptError } from '../core/errors.js';
import { KernelGraph } from '../core/kernel-graph.js';
import { keep, tensor, tidy, writeHost, zeros, type Tensor } from '../core/tensor.js';
import { backendFor } from '../native/backend.js';
import type { MemGPT, Precision } from '../nn/model.js';
import { attentionDecode, copyMixProbs, decodeKeyShape, decodeMemory, scatterRows, type DecodeCache, type DecodeMemory } from '../ops/decode.js';
import { add } from '../ops/elementwise.js';
import { embedding, layerNorm, sinusoidalPositions } from '../ops/norm.js';
import { cast, copyRowsInto, reshape } from '../ops/shape.js';

/** Throws unless token is an id of the model's vocabulary. */
export function checkToken(model: MemGPT, token: number, what: string): void {
  if (!Number.isInteger(token) || token < 0 || token >= model.config.vocabSize) {
    throw new MemgptError(`${what}: token id ${token} is outside the vocabulary (${model.config.vocabSize})`);
  }
}

/** One layer's device state: the segment's key/value cache and outputs [B, T, D], the memory and its read's view. */
interface LayerState {
  cache: DecodeCache;
  outputs: Tensor | null;
  memory: Tensor | null;
  /** The memory's K/V as the decode attention reads them (decodeMemory), remade at each write. */
  readMemory: DecodeMemory | null;
}

/** Options of a decoder. graphs: replay each step's recorded kernels (default; bit-equal; sinusoidal models run eagerly). */
export interface DecoderOptions {
  graphs?: boolean;
}

/**
 * B sequences decoded together (no gradients). step() feeds one token to each active sequence at its next
 * position; prefill() feeds a prompt to one sequence; distributions() is each sequence's P(y) for its next token.
 * Sequences that sit a step out keep their state; the dense layers still run their rows (the price of one batch).
 * A decoder reads the weights as they are when it is made (in bfloat16 precision it casts them then, once): make a
 * new one after they change.
 */
export class BatchDecoder {
  readonly model: MemGPT;
  readonly batch: number;
  /** The precision the caches were made in (the model's at construction). */
  readonly precision: Precision;
  private readonly layers: LayerState[] = [];
  /** Per sequence: the position of its next token in the current segment (0 … T−1), and the tokens fed so far. */
  private readonly pos: Int32Array;
  private readonly fed: Float64Array;
  /** Copy head: each sequence's copy keys [B, T, D] and token ids [B, T] of its context rows. */
  private readonly copyKeys: Tensor | null;
  private readonly copyTokens: Tensor | null;
  /** ln_f of each sequence's last token [B, D]: what the next distribution is made from. */
  private readonly lastHf: Tensor;
  /** Each layer's pointer query Wpqᵀ·Wpk [D, D] (model.pointerQuery), a D³ product made once, not at every write. */
  private readonly pointerQueries: Tensor[] = [];
  /** In bfloat16 precision: the weights cast once, when the decoder is made (model.withBf16Weights). */
  private readonly bf16Weights: Map<Tensor, Tensor> | null = null;
  /** Per step, uploaded at once: the token ids [B], each sequence's position (−1: sitting out) [B], its lastHf row [B]. */
  private readonly inputs: Tensor;
  private readonly hostInputs: Int32Array;
  /** Copy head: each sequence's context length for the next distribution [B]. */
  private readonly lengths: Tensor | null;
  /** The distributions [B, V], written on the device by distributions() and read back once. */
  private readonly probs: Tensor;
  /** Whether step() and distributions() replay their kernels, recorded at their first call (null until then). */
  private readonly useGraphs: boolean;
  private stepGraph: KernelGraph | null = null;
  private distributionGraph: KernelGraph | null = null;
  private disposed = false;

  constructor(model: MemGPT, batch: number, options: DecoderOptions = {}) {
    if (!Number.isSafeInteger(batch) || batch < 1) throw new MemgptError(`decoder: batch must be an integer ≥ 1 (got ${batch})`);
    this.model = model;
    this.batch = batch;
    this.precision = model.precision;
    const { dModel: D, segmentLen: T, memSlots: S, nLayers: L, nHeads: H, copyHead } = model.config;
    const device = model.device;
    const dtype = this.precision === 'bfloat16' ? 'bfloat16' : 'float32';
    this.pos = new Int32Array(batch);
    this.fed = new Float64Array(batch);
    this.hostInputs = new Int32Array(3 * batch);
    this.useGraphs = (options.graphs ?? true) && model.config.positional !== 'sinusoidal';
    const made: Tensor[] = [];
    const make = (t: Tensor) => (made.push(t), keep(t));
    try {
      if (this.precision === 'bfloat16') {
        this.bf16Weights = new Map([...model.params.values()].filter((p) => p.dtype === 'float32').map((p) => [p, make(noGrad(() => cast(p, 'bfloat16')))]));
      }
      this.compute(() => {
        if (S > 0) for (let l = 0; l < L; l++) this.pointerQueries.push(make(model.pointerQuery(l)));
        const init = (S > 0 ? model.initialMemory(batch) : []).map(make);
        for (let l = 0; l < L; l++) {
          const memory = S > 0 ? init[l] : null;
          const readMemory = memory ? this.readMemoryOf(l, memory) : null;
          if (readMemory) [readMemory.keys, readMemory.values].forEach(make);
          this.layers.push({
            cache: { keys: make(zeros(decodeKeyShape(batch, H, D / H, T), { device })), values: make(zeros([batch, H, T, D / H], { device, dtype })) },
            outputs: S > 0 ? make(zeros([batch, T, D], { device })) : null,
            memory,
            readMemory,
          });
        }
      });
      this.copyKeys = copyHead ? make(zeros([batch, T, D], { device })) : null;
      this.copyTokens = copyHead ? make(zeros([batch, T], { device, dtype: 'int32' })) : null;
      this.lastHf = make(zeros([batch, D], { device }));
      this.inputs = make(zeros([3 * batch], { device, dtype: 'int32' }));
      this.lengths = copyHead ? make(zeros([batch], { device, dtype: 'int32' })) : null;
      this.probs = make(zeros([batch, model.config.vocabSize], { device }));
    } catch (e) {
      for (const t of made) t.dispose();
      throw e;
    }
  }

  /** Tokens fed so far to sequence b. */
  length(b: number): number {
    return this.fed[this.index(b, 'length')];
  }

  private index(b: number, what: string): number {
    if (!Number.isInteger(b) || b < 0 || b >= this.batch) throw new MemgptError(`${what}: sequence ${b} is not in 0 … ${this.batch - 1}`);
    return b;
  }

  private check(what: string): void {
    if (this.disposed) throw new MemgptError(`${what}: this decoder was disposed`);
    // A replayed step would still read the weights (its graph retains them): say so instead.
    if (this.param('tok_emb').isDisposed) throw new MemgptError(`${what}: the model was disposed`);
    if (this.model.precision !== this.precision) {
      throw new MemgptError(`${what}: the model's precision changed to ${this.model.precision} after this decoder was made in ${this.precision}; make a new decoder`);
    }
  }

  /** Runs fn without gradients, on the bf16 weights cast once in bfloat16 precision. */
  private compute<R>(fn: () => R): R {
    const weights = this.bf16Weights;
    return noGrad(() => (weights ? this.model.withBf16Weights(weights, fn) : fn()));
  }

  private param(name: string): Tensor {
    const p = this.model.params.get(name);
    if (!p) throw new MemgptError(`decoder: the model has no parameter ${name}`);
    return p;
  }

  /**
   * Feeds tokens[b] to each sequence b with active[b] (all by default) at its next position: every layer's block
   * with the decode attention, the copy context, and each full segment's memory write.
   */
  step(tokens: ArrayLike<number>, active?: ArrayLike<boolean>): void {
    this.check('step');
    const B = this.batch;
    if (tokens.length !== B) throw new MemgptError(`step: ${tokens.length} tokens given for ${B} sequences`);
    if (active !== undefined && active.length !== B) throw new MemgptError(`step: active has ${active.length} entries for ${B} sequences`);
    const on = (b: number) => active === undefined || active[b];
    // One upload a step (each is a wait for the device on CUDA): the ids, each sequence's position (−1: sitting
    // out) and its row of lastHf (0, or −1).
    const host = this.hostInputs;
    host.fill(0);
    const ids = host.subarray(0, B), positions = host.subarray(B, 2 * B), lastRow = host.subarray(2 * B);
    positions.fill(-1);
    lastRow.fill(-1);
    for (let b = 0; b < B; b++) {
      if (!on(b)) continue;
      checkToken(this.model, tokens[b], `step (sequence ${b})`);
      ids[b] = tokens[b];
      positions[b] = this.pos[b];
      lastRow[b] = 0;
    }
    if (!positions.some((p) => p >= 0)) return;
    writeHost(this.inputs, host);
    this.stepGraph = this.run(this.stepGraph, () => this.stepKernels(positions));
    const T = this.model.config.segmentLen, S = this.model.config.memSlots;
    const full: number[] = [];
    for (let b = 0; b < B; b++) {
      if (positions[b] < 0) continue;
      this.fed[b]++;
      if (++this.pos[b] === T) {
        this.pos[b] = 0;
        full.push(b);
      }
    }
    if (S > 0 && full.length > 0) this.writeMemory(full);
  }

  /**
   * Runs fn's kernels: through its graph when there is one, else eagerly, recording them as the graph when graphs
   * are on. Returns the graph to keep.
   */
  private run(graph: KernelGraph | null, fn: () => void): KernelGraph | null {
    if (graph) return (graph.replay(), graph);
    const eager = () => this.compute(() => tidy(fn));
    if (!this.useGraphs) {
      eager();
      return null;
    }
    return KernelGraph.record(backendFor(this.model.device), eager).graph;
  }

  /** The kernels of one step, reading the uploaded inputs (positions holds them on the host, for sinusoidal rows). */
  private stepKernels(positions: Int32Array): void {
    const B = this.batch;
    const { dModel: D, nHeads: H, segmentLen: T, memSlots: S, positional } = this.model.config;
    const model = this.model;
    const [idsT, at, last] = [[B, 1], [B], [B]].map((shape, i) => this.inputs._view(shape, true, this.inputs.offset + i * B));
    let h = embedding(idsT, this.param('tok_emb'));
    if (positional === 'sinusoidal') h = add(h, this.sinusoidal(positions));
    for (let l = 0; l < this.layers.length; l++) {
      const state = this.layers[l];
      h = model.block(l, h, (qkv, gateLogits) => {
        const o = attentionDecode(qkv, at, state.cache, {
          nHeads: H, rope: positional === 'rope', memoryRead: model.memoryRead,
          ...(S > 0 ? { memory: state.readMemory!, gateLogits: gateLogits! } : {}),
        });
        return reshape(o, [B, 1, D]);
      });
      if (state.outputs) scatterRows(h, at, state.outputs);
    }
    const hf = layerNorm(h, this.param('ln_f.weight'), this.param('ln_f.bias'));
    scatterRows(hf, last, reshape(this.lastHf, [B, 1, D]));
    if (this.copyKeys && this.copyTokens) {
      scatterRows(model.linear(hf, this.param('copy.k.weight'), null), at, this.copyKeys);
      scatterRows(idsT, at, reshape(this.copyTokens, [B, T, 1]));
    }
  }

  /** The sinusoidal position rows [B, 1, D] of each sequence's position (SPEC §3 with positional 'sinusoidal'). */
  private sinusoidal(positions: Int32Array): Tensor {
    const D = this.model.config.dModel, device = this.model.device;
    const rows = zeros([this.batch, 1, D], { device });
    for (let b = 0; b < this.batch; b++) if (positions[b] >= 0) copyRowsInto(sinusoidalPositions(1, D, { positionOffset: positions[b], device }), rows, b, D);
    return rows;
  }

  /** The memory writes of the sequences whose segment just filled: all at once when all did, else one by one. */
  private writeMemory(full: number[]): void {
    const { dModel: D, segmentLen: T, memSlots: S } = this.model.config;
    this.compute(() => {
      for (let l = 0; l < this.layers.length; l++) {
        const state = this.layers[l];
        if (full.length === this.batch) {
          const next = keep(tidy(() => this.model.writeMemory(l, state.memory!, state.outputs!, false, this.pointerQueries[l]).M));
          state.memory!.dispose();
          state.memory = next;
          this.readMemoryOf(l, state.memory!, state.readMemory!);
        } else {
          for (const b of full) {
            tidy(() => {
              const M = state.memory!._view([1, S, D], true, state.memory!.offset + b * S * D);
              const h = state.outputs!._view([1, T, D], true, state.outputs!.offset + b * T * D);
              copyRowsInto(this.model.writeMemory(l, M, h, false, this.pointerQueries[l]).M, state.memory!, b, S * D);
            });
            this.refreshMemKV(l, b);
          }
        }
      }
    });
  }

  /** Layer l's memory M [B, S, D] as its decode attention reads it: its K/V (memoryKV) through decodeMemory, into `into` when given. */
  private readMemoryOf(l: number, M: Tensor, into?: DecodeMemory): DecodeMemory {
    const { nHeads, positional } = this.model.config;
    return this.compute(() => {
      const kv = tidy(() => this.model.memoryKV(l, M));
      try {
        return decodeMemory(kv, { nHeads, rope: positional === 'rope', memoryRead: this.model.memoryRead }, into);
      } finally {
        kv.dispose();
      }
    });
  }

  /** Layer l's memory read of sequence b alone, from its memory row (the others' are unchanged). */
  private refreshMemKV(l: number, b: number): void {
    const { dModel: D, memSlots: S } = this.model.config;
    const state = this.layers[l];
    this.compute(() => tidy(() => {
      const row = this.readMemoryOf(l, state.memory!._view([1, S, D], true, state.memory!.offset + b * S * D));
      copyRowsInto(row.keys, state.readMemory!.keys, b, row.keys.size);
      copyRowsInto(row.values, state.readMemory!.values, b, row.values.size);
    }));
  }

  /** Feeds a prompt to sequence b alone (prefillAll with only b's prompt). */
  prefill(b: number, tokens: ArrayLike<number>): void {
    this.index(b, 'prefill');
    this.prefillAll(Array.from({ length: this.batch }, (_, i) => (i === b ? tokens : [])));
  }

  /**
   * Feeds each sequence b its prompt prompts[b] (empty: nothing). Whole segments that start on an empty segment go
   * through model.segment() (the full-segment kernels, which also write the memory), a sequence at a time; the rest
   * token by token, every sequence with prompt left in the same step (the same prompt for 16 samples: 16 times
   * fewer steps than one prompt after another).
   */
  prefillAll(prompts: ArrayLike<number>[]): void {
    this.check('prefill');
    if (prompts.length !== this.batch) throw new MemgptError(`prefill: ${prompts.length} prompts given for ${this.batch} sequences`);
    prompts.forEach((p, b) => {
      for (let i = 0; i < p.length; i++) checkToken(this.model, p[i], `prefill (sequence ${b}, index ${i})`);
    });
    const T = this.model.config.segmentLen;
    const at = new Array<number>(this.batch).fill(0);  // the next prompt token of each sequence
    const tokens = new Int32Array(this.batch);
    for (;;) {
      prompts.forEach((p, b) => {
        for (; this.pos[b] === 0 && p.length - at[b] >= T; at[b] += T) this.prefillSegment(b, p, at[b]);
      });
      const active = prompts.map((p, b) => at[b] < p.length);
      if (!active.some(Boolean)) return;
      prompts.forEach((p, b) => (tokens[b] = active[b] ? p[at[b]++] : 0));
      this.step(tokens, active);
    }
  }

  private prefillSegment(b: number, tokens: ArrayLike<number>, start: number): void {
    const { dModel: D, segmentLen: T, memSlots: S } = this.model.config;
    const device = this.model.device;
    const ids = Int32Array.from({ length: T }, (_, t) => tokens[start + t]);
    this.compute(() =>
      tidy(() => {
        const x = tensor(ids, [1, T], { dtype: 'int32', device });
        const memory = S > 0 ? this.layers.map((s) => s.memory!._view([1, S, D], true, s.memory!.offset + b * S * D)) : [];
        const out = this.model.segment(x, memory, undefined, this.pointerQueries);
        for (let l = 0; l < out.memory.length; l++) {
          copyRowsInto(out.memory[l], this.layers[l].memory!, b, S * D);
          this.refreshMemKV(l, b);
        }
        copyRowsInto(out.hf._view([1, D], true, out.hf.offset + (T - 1) * D), this.lastHf, b, D);
        if (this.copyKeys && this.copyTokens) {
          copyRowsInto(this.model.linear(out.hf, this.param('copy.k.weight'), null), this.copyKeys, b, T * D);
          copyRowsInto(x, this.copyTokens, b, T);
        }
      }),
    );
    this.fed[b] += T;
  }

  /**
   * P(y) of each sequence's next token, [B·V] row by row (SPEC §3, the copy mixture included): one transfer from
   * the device. A sequence that has been fed nothing gets no row: asking for it is an error.
   */
  distributions(): Float32Array {
    this.check('distributions');
    for (let b = 0; b < this.batch; b++) {
      if (this.fed[b] === 0) throw new MemgptError(`distribution: no token has been fed yet${this.batch > 1 ? ` to sequence ${b}` : ''}`);
    }
    const { segmentLen: T, vocabSize: V } = this.model.config;
    // The context of the next prediction: the current segment's rows, or right after a boundary the last segment.
    if (this.lengths) writeHost(this.lengths, Int32Array.from(this.pos, (p) => (p > 0 ? p : T)));
    this.distributionGraph = this.run(this.distributionGraph, () => {
      const hf = this.lastHf;
      const logits = this.model.linear(hf, this.param('tok_emb'), null);
      const probs = !this.copyKeys || !this.copyTokens || !this.lengths
        ? copyMixProbs(logits)
        : copyMixProbs(logits, {
          cq: this.model.linear(hf, this.param('copy.q.weight'), null),
          ck: this.copyKeys,
          gen: reshape(this.model.linear(hf, this.param('copy.gen.weight'), this.param('copy.gen.bias')), [this.batch]),
          tokens: this.copyTokens,
          lengths: this.lengths,
        });
      copyRowsInto(probs, this.probs, 0, this.batch * V);
    });
    return this.probs.toArray() as Float32Array;
  }

  /** Frees the device state; the decoder cannot be used afterwards. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const s of this.layers) for (const t of [s.cache.keys, s.cache.values, s.outputs, s.memory, s.readMemory?.keys, s.readMemory?.values]) t?.dispose();
    this.copyKeys?.dispose();
    this.copyTokens?.dispose();
    this.lastHf.dispose();
    this.inputs.dispose();
    this.lengths?.dispose();
    this.probs.dispose();
    this.stepGraph?.dispose();
    this.distributionGraph?.dispose();
    for (const t of this.bf16Weights?.values() ?? []) t.dispose();
    for (const t of this.pointerQueries) t.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
