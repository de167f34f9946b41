// The MemGPT model of SPEC.md §3 assembled from the ops: parameters by their
// §2 names, GPT-2-style initialisation, and the forward pass over a batch of
// samples, segment by segment, with each layer's memory carried (and
// differentiated through) across the segments of a sample.
import type { Device } from '../native/backend.js';
import { parameterShapes, resolveConfig, type ModelConfig } from './config.js';
import { MemgptError, shapeStr } from '../core/errors.js';
import { Rng } from '../core/random.js';
import { add, mul, scale } from '../ops/elementwise.js';
import { sum } from '../ops/reduce.js';
import { cast, clone, detach, reshape } from '../ops/shape.js';
import { broadcastTo } from '../ops/reduce.js';
import { embedding, layerNorm, sinusoidalPositions } from '../ops/norm.js';
import { linear, type LinearOptions } from '../ops/linear.js';
import { attention, type MemoryRead } from '../ops/attention.js';
import { memoryWriteFromHidden, type MemoryWriteResult } from '../ops/memwrite.js';
import { matmul } from '../ops/matmul.js';
import { tokenNLL } from '../ops/classifier.js';
import { keep, parameter, tensor, tidy, type Parameter, type Tensor } from '../core/tensor.js';
import { fillShiftRegister } from './init.js';

/** What a layer's memory did during a forward pass (means over the batch and the segments). */
export interface LayerDiagnostics {
  /** Mean read gate g (SPEC v2: σ(u·Wgateᵀ + b + lse_R − lse_A)): the share of attention's output read from memory. */
  readGate: number;
  /** Mean write gate U: how much of each slot is overwritten at a segment boundary. */
  writeGate: number;
  /** Mean entropy of the pointer over the segment's tokens, in nats (log T when uniform). */
  pointerEntropy: number;
}

/** Options of MemGPT.forward. */
export interface ForwardOptions {
  /** Also measure each layer's gates and pointer entropy (see LayerDiagnostics). */
  diagnostics?: boolean;
  /** Sees (and may replace) each layer's memory before each segment: for probes, e.g. of the gradient reaching it. */
  memoryHook?: (segment: number, memory: Tensor[]) => Tensor[];
  /**
   * Each layer's memory at the start of the samples, [B, S, D] (default: mem.init for every row). Stream training
   * passes the memory the rows ended the previous batch with (see carriedMemory).
   */
  initialMemory?: Tensor[];
  /** Also return each layer's memory after the last segment's write, cut from the graph: where the next batch of a stream starts. */
  returnMemory?: boolean;
}

export interface ForwardResult {
  /** Mean −log P(y) over the predicted tokens whose mask is 1 (a scalar, differentiable). */
  loss: Tensor;
  /** Sum of −log P(y) over those tokens, and how many there were (host numbers). */
  nllSum: number;
  tokens: number;
  /** Per layer, when asked for (memSlots > 0). */
  diagnostics?: LayerDiagnostics[];
  /** With returnMemory: each layer's memory after the sample [B, S, D], detached copies owned by the caller. */
  memory?: Tensor[];
}

/**
 * How the forward pass computes. 'bfloat16' is mixed precision as autocast does it: every linear
 * layer takes bf16 inputs, weights and bias (the matmul accumulates in float32 inside the kernel);
 * the attention reads the bf16 q/k/v, memory keys/values and gate logits and writes bf16 (softmax
 * statistics in float32); norms, the memory write, the output head, the residual stream, the master
 * weights, their gradients and the optimizer state stay float32.
 */
export type Precision = 'float32' | 'bfloat16';

export class MemGPT {
  readonly config: ModelConfig;
  readonly params: Map<string, Parameter>;
  /** Not part of the checkpoint: the same weights run in either precision. */
  precision: Precision = 'float32';
  private bf16Weights: ReadonlyMap<Tensor, Tensor> | null = null;

  constructor(config: Partial<ModelConfig>, params: Map<string, Parameter>) {
    this.config = resolveConfig(config);
    for (const [name, shape] of parameterShapes(this.config)) {
      const p = params.get(name);
      if (!p) throw new MemgptError(`model: parameter ${name} is missing`);
      if (p.shape.join() !== shape.join()) throw new MemgptError(`model: parameter ${name} is ${shapeStr(p.shape)}, the config needs ${shapeStr(shape)}`);
    }
    const expected = new Set(parameterShapes(this.config).map(([n]) => n));
    for (const name of params.keys()) if (!expected.has(name)) throw new MemgptError(`model: unexpected parameter ${name} for this config`);
    this.params = params;
  }

  /**
   * Fresh weights: GPT-2-style N(0, 0.02) matrices, residual projections scaled by 1/√(2L),
   * zero biases, unit norms, and the copy head starts mostly generating (σ(2) ≈ 0.88). The memory
   * read and write gates start half open (bias 0): local attention keeps half of each head, and a
   * write replaces half of a slot. Why not closed: with biases −2 (σ ≈ 0.12) the memory's signal
   * reaches the loss through both gates, 0.12² of the open path's, and the model learns to close
   * them before it learns to use them: on an easy pass-key variant (the key fills the first
   * segment) the answer loss stayed at chance for 1,000 steps with −2 and fell to 0.5 with 0.
   */
  static init(config: Partial<ModelConfig>, options: { seed?: number; device?: Device } = {}): MemGPT {
    const cfg = resolveConfig(config);
    const rng = new Rng(options.seed ?? 0);
    const residualStd = 0.02 / Math.sqrt(2 * cfg.nLayers);
    const params = new Map<string, Parameter>();
    try {
      for (const [name, shape] of parameterShapes(cfg)) {
        const n = shape.reduce((a, b) => a * b, 1);
        const values = new Float32Array(n);
        if (/\.(ln\d?|ln_f|mem\.ln|ptr\.ln)\.weight$|^ln_f\.weight$/.test(name)) values.fill(1);
        else if (name === 'copy.gen.bias') values.fill(2);
        else if (name.endsWith('ptr.pos')) fillShiftRegister(values, cfg.memSlots, cfg.segmentLen);
        else if (name.endsWith('.bias')) values.fill(0);
        else rng.fillNormal(values, 0, /attn\.out\.weight$|ffn\.fc2\.weight$/.test(name) ? residualStd : 0.02);
        params.set(name, parameter(tensor(values, shape, { device: options.device }), name));
      }
      return new MemGPT(cfg, params);
    } catch (e) {
      // Out of memory (or any failure) part-way: the parameters made so far are freed, not leaked.
      for (const p of params.values()) p.dispose();
      if (e instanceof RangeError) throw new MemgptError(`MemGPT.init: cannot allocate the parameters of this config (${e.message})`, { cause: e });
      throw e;
    }
  }

  /** How this model's attention reads the memory: SPEC v2's positional joint read, or v1's gated read. */
  get memoryRead(): MemoryRead {
    return this.config.specVersion >= 2 ? 'positional' : 'gated';
  }

  get device(): Device {
    return this.p('tok_emb').device;
  }

  parameterCount(): number {
    let n = 0;
    for (const p of this.params.values()) n += p.size;
    return n;
  }

  dispose(): void {
    for (const p of this.params.values()) {
      p.zeroGrad();
      p.dispose();
    }
  }

  private p(name: string): Parameter {
    const t = this.params.get(name);
    if (!t) throw new MemgptError(`model: no parameter ${name}`);
    return t;
  }

  /**
   * A linear layer in this model's precision (see Precision); the gradients reach the float32 weights through the
   * casts. The output is float32, or bfloat16 with keepBf16 in bfloat16 precision.
   */
  linear(x: Tensor, weight: Tensor, bias: Tensor | null, options: LinearOptions = {}, keepBf16 = false): Tensor {
    if (this.precision === 'float32') return linear(x, weight, bias, options);
    const bf = (t: Tensor) => this.bf16Weights?.get(t) ?? this.inPrecision(t);
    const y = linear(bf(x), bf(weight), bias && bf(bias), options);
    return keepBf16 ? y : cast(y, 'float32');
  }

  /** x as the linear layers take it in this model's precision: cast to bfloat16 in bfloat16 precision. */
  private inPrecision(x: Tensor): Tensor {
    return this.precision === 'bfloat16' && x.dtype !== 'bfloat16' ? cast(x, 'bfloat16') : x;
  }

  /**
   * Runs fn with these bfloat16 copies standing in for their float32 parameters in linear() (in bfloat16 precision):
   * a decoder casts the weights once instead of at every token. The copies are the caller's, made from the weights
   * as they are; a later change of the weights does not reach them.
   */
  withBf16Weights<R>(weights: ReadonlyMap<Tensor, Tensor>, fn: () => R): R {
    const before = this.bf16Weights;
    this.bf16Weights = weights;
    try {
      return fn();
    } finally {
      this.bf16Weights = before;
    }
  }

  /** Each layer's memory at the start of a sample: mem.init broadcast over the batch. */
  initialMemory(batch: number): Tensor[] {
    const { memSlots: S, dModel: D } = this.config;
    if (S === 0) return [];
    return Array.from({ length: this.config.nLayers }, (_, l) => broadcastTo(this.p(`layers.${l}.mem.init`), [batch, S, D]));
  }

  /**
   * Each layer's memory at the start of a batch of a stream: row b carries on from `carried` (the memory it ended
   * the previous batch with, no gradient), or starts from mem.init where reset[b] is 1 (a document's first sample).
   * mem.init gets the gradient of the rows that start from it.
   */
  carriedMemory(carried: readonly Tensor[], reset: ArrayLike<number>): Tensor[] {
    const { memSlots: S, nLayers: L } = this.config;
    if (S === 0) return [];
    const B = reset.length;
    if (carried.length !== L || carried.some((m) => m.shape.join() !== [B, S, this.config.dModel].join())) {
      throw new MemgptError(`carriedMemory: expected ${L} memories of [${B}, ${S}, ${this.config.dModel}], got ${carried.map((m) => shapeStr(m.shape)).join(', ')}`);
    }
    const r = new Float32Array(B);
    for (let b = 0; b < B; b++) r[b] = reset[b] ? 1 : 0;
    if (r.every((x) => x === 1)) return this.initialMemory(B);
    const startMask = tensor(r, [B, 1, 1], { device: this.device });
    const keepMask = tensor(r.map((x) => 1 - x), [B, 1, 1], { device: this.device });
    return carried.map((m, l) => add(mul(this.p(`layers.${l}.mem.init`), startMask), mul(m, keepMask)));
  }

  /**
   * One segment: x [B, T] int32 input ids → hf [B, T, D] (the final-normed hidden states),
   * and each layer's memory after this segment's write (with `write` false, no write: memory comes back empty).
   */
  segment(
    x: Tensor, memory: Tensor[], diagnostics?: LayerDiagnostics[], pointerQueries?: Tensor[], write = true,
  ): { hf: Tensor; memory: Tensor[] } {
    const cfg = this.config;
    const { dModel: D, nHeads: H, memSlots: S } = cfg;
    const [, T] = x.shape;
    let h = embedding(x, this.p('tok_emb'));
    if (cfg.positional === 'sinusoidal') h = add(h, sinusoidalPositions(T, D, { device: x.device }));
    const next: Tensor[] = [];
    for (let l = 0; l < cfg.nLayers; l++) {
      h = this.block(l, h, (qkv, gateLogits) => {
        if (S === 0) return attention(qkv, { nHeads: H, rope: cfg.positional === 'rope' });
        if (diagnostics) diagnostics[l] = { readGate: NaN, writeGate: NaN, pointerEntropy: NaN };
        const onReadGate = diagnostics ? (g: number) => (diagnostics[l].readGate = g) : undefined;
        return attention(qkv, {
          nHeads: H, rope: cfg.positional === 'rope', memKV: this.memoryKV(l, memory[l]), gateLogits: gateLogits!, memoryRead: this.memoryRead, onReadGate,
        });
      });
      if (S > 0 && write) {
        const w = this.writeMemory(l, memory[l], h, diagnostics !== undefined, pointerQueries?.[l]);
        if (diagnostics) {
          diagnostics[l].writeGate = w.meanGate;
          diagnostics[l].pointerEntropy = w.pointerEntropy;
        }
        next.push(w.M);
      }
    }
    return { hf: layerNorm(h, this.p('ln_f.weight'), this.p('ln_f.bias')), memory: next };
  }

  /**
   * Layer l's block (SPEC §3) on the residual stream h [B, T, D]: the one layer body that training and decoding
   * share. LN, the qkv and gate projections, then `attend` (the attention with its memory read: the full op over a
   * segment in training, one cached row per sequence in decoding), then the output projection, the FFN and both
   * residual adds. attend gets qkv [B, T, 3D] and the gate logits [B, T, H] (null without memory), in this model's
   * precision, and returns the heads' output [B, T, D].
   */
  block(l: number, h: Tensor, attend: (qkv: Tensor, gateLogits: Tensor | null) => Tensor): Tensor {
    const P = (n: string) => this.p(`layers.${l}.${n}`);
    // In bfloat16 precision u is cast once for both projections; the attention's inputs and output stay bf16 (its
    // softmax statistics are float32), and so does the FFN's hidden z between its two linears: a cast to float32 and
    // back would give the same values, at two more kernels a layer.
    const u = this.inPrecision(layerNorm(h, P('ln1.weight'), P('ln1.bias')));
    const qkv = this.linear(u, P('attn.qkv.weight'), P('attn.qkv.bias'), {}, true);
    const gateLogits = this.config.memSlots > 0 ? this.linear(u, P('mem.gate.weight'), P('mem.gate.bias'), {}, true) : null;
    h = add(h, this.linear(attend(qkv, gateLogits), P('attn.out.weight'), P('attn.out.bias')));
    const z = this.linear(layerNorm(h, P('ln2.weight'), P('ln2.bias')), P('ffn.fc1.weight'), P('ffn.fc1.bias'), { activation: 'gelu' }, true);
    return add(h, this.linear(z, P('ffn.fc2.weight'), P('ffn.fc2.bias')));
  }

  /** Layer l's memory keys and values LN(M)·Wkvᵀ + b [B, S, 2D] from its memory M [B, S, D], in this model's precision. */
  memoryKV(l: number, M: Tensor): Tensor {
    const P = (n: string) => this.p(`layers.${l}.${n}`);
    return this.linear(layerNorm(M, P('mem.ln.weight'), P('mem.ln.bias')), P('mem.kv.weight'), P('mem.kv.bias'), {}, true);
  }

  /**
   * Layer l's memory write (SPEC §3, "# memory write") from the layer's output h [B, T, D] and its memory M before
   * the write. The two token projections of the pointer are reassociated onto the S slots, the same function:
   * P = (M·Wpqᵀ)(c·Wpkᵀ)ᵀ = (M·(Wpqᵀ·Wpk))·cᵀ, and Z = α·(c·Wpvᵀ) = (α·c)·Wpvᵀ, so that the write projects S slot
   * rows instead of T token rows (S ≪ T at every preset), the slot queries with one D × D matrix.
   */
  writeMemory(l: number, M: Tensor, h: Tensor, stats = false, pointerQuery = this.pointerQuery(l)): MemoryWriteResult {
    const P = (n: string) => this.p(`layers.${l}.${n}`);
    // One op: the pointer's layer norm, the slot queries and the write (memoryWriteFromHidden).
    return memoryWriteFromHidden(M, h, P('ptr.ln.weight'), P('ptr.ln.bias'), pointerQuery, P('ptr.v.weight'), P('mem.update.weight'), P('mem.update.bias'), {
      stats, pointerBias: this.config.specVersion >= 2 ? P('ptr.pos') : undefined,
    });
  }

  /** Layer l's Wpqᵀ·Wpk [D, D]: the slot queries in token space are M·(Wpqᵀ·Wpk) = (M·Wpqᵀ)·Wpk (see writeMemory). */
  pointerQuery(l: number): Tensor {
    return matmul(this.p(`layers.${l}.ptr.q.weight`), this.p(`layers.${l}.ptr.k.weight`), { transA: true });
  }

  /** −log P(y) [B, T] for one segment's final hidden states (SPEC.md §3, output distribution). */
  segmentNLL(hf: Tensor, x: Tensor, y: Tensor): Tensor {
    if (!this.config.copyHead) return tokenNLL(hf, this.p('tok_emb'), y);
    const [B, T] = x.shape;
    const cq = this.linear(hf, this.p('copy.q.weight'), null);
    const ck = this.linear(hf, this.p('copy.k.weight'), null);
    const genLogit = reshape(this.linear(hf, this.p('copy.gen.weight'), this.p('copy.gen.bias')), [B, T]);
    return tokenNLL(hf, this.p('tok_emb'), y, { copy: { cq, ck, genLogit, inputs: x } });
  }

  /**
   * The loss of a batch: `tokens` holds B samples of N + 1 ids each (N = segments · T),
   * row-major; `mask` (B·N of 0/1, optional) selects the predicted tokens that count.
   */
  forward(tokens: Int32Array, batch: number, segments: number, mask?: Float32Array, options: ForwardOptions = {}): ForwardResult {
    const T = this.config.segmentLen, N = segments * T, V = this.config.vocabSize;
    if (!Number.isSafeInteger(batch) || batch < 1 || !Number.isSafeInteger(segments) || segments < 1) {
      throw new MemgptError(`forward: batch (${batch}) and segments (${segments}) must be positive integers`);
    }
    if (tokens.length !== batch * (N + 1)) throw new MemgptError(`forward: ${tokens.length} tokens given; ${batch} samples of ${segments}×${T}+1 need ${batch * (N + 1)}`);
    if (mask && mask.length !== batch * N) throw new MemgptError(`forward: mask has ${mask.length} entries; expected ${batch * N}`);
    for (let i = 0; i < tokens.length; i++) {
      if (tokens[i] < 0 || tokens[i] >= V) throw new MemgptError(`forward: token id ${tokens[i]} at index ${i} is outside the vocabulary (${V})`);
    }
    const device = this.device;
    const slice = (seg: number, shift: number) => {
      const out = new Int32Array(batch * T);
      for (let b = 0; b < batch; b++) out.set(tokens.subarray(b * (N + 1) + seg * T + shift, b * (N + 1) + seg * T + shift + T), b * T);
      return tensor(out, [batch, T], { dtype: 'int32', device });
    };
    let count = 0;
    if (mask) {
      // Checked before any tensor is made: a NaN entry used to fail after the whole graph was built, and leak it.
      for (let i = 0; i < mask.length; i++) {
        if (!(mask[i] >= 0 && mask[i] <= 1)) throw new MemgptError(`forward: mask entry ${i} is ${mask[i]}; a mask holds weights in [0, 1]`);
        count += mask[i];
      }
    } else count = batch * N;
    if (count === 0) throw new MemgptError('forward: the mask selects no token');
    const wantDiagnostics = options.diagnostics === true && this.config.memSlots > 0;
    const perSegment: LayerDiagnostics[][] = [];
    const S = this.config.memSlots;
    if (options.initialMemory && (options.initialMemory.length !== (S > 0 ? this.config.nLayers : 0) ||
        options.initialMemory.some((m) => m.shape.join() !== [batch, S, this.config.dModel].join()))) {
      throw new MemgptError(`forward: initialMemory must be ${this.config.nLayers} tensors of [${batch}, ${S}, ${this.config.dModel}]`);
    }
    let finalMemory: Tensor[] | undefined;
    const result = tidy(() => {
      let memory = options.initialMemory ?? this.initialMemory(batch);
      // The weights do not change within a forward: each layer's pointer-query matrix is made once for all segments.
      const pointerQueries = this.config.memSlots > 0 ? Array.from({ length: this.config.nLayers }, (_, l) => this.pointerQuery(l)) : undefined;
      let total: Tensor | null = null;
      for (let seg = 0; seg < segments; seg++) {
        const x = slice(seg, 0), y = slice(seg, 1);
        const diag: LayerDiagnostics[] | undefined = wantDiagnostics ? [] : undefined;
        if (options.memoryHook) memory = options.memoryHook(seg, memory);
        // The memory after the last segment is never read: its write is skipped (a quarter of the writes at 4
        // segments a sample), unless the diagnostics ask for its gate and pointer statistics or the caller for it.
        const out = this.segment(x, memory, diag, pointerQueries, seg < segments - 1 || wantDiagnostics || options.returnMemory === true);
        if (diag) perSegment.push(diag);
        memory = out.memory;
        let nll = this.segmentNLL(out.hf, x, y);
        if (mask) {
          const m = new Float32Array(batch * T);
          for (let b = 0; b < batch; b++) m.set(mask.subarray(b * N + seg * T, b * N + seg * T + T), b * T);
          nll = mul(nll, tensor(m, [batch, T], { device }));
        }
        const s = sum(nll);
        total = total ? add(total, s) : s;
      }
      if (options.returnMemory) finalMemory = memory.map((m) => keep(clone(detach(m))));
      return total!;
    });
    let nllSum: number, loss: Tensor;
    try {
      nllSum = result.item();
      loss = scale(result, 1 / count);
    } finally {
      result.dispose();
    }
    const diagnostics = wantDiagnostics
      ? perSegment[0].map((_, l) => {
          const mean = (key: keyof LayerDiagnostics) => perSegment.reduce((a, d) => a + d[l][key], 0) / perSegment.length;
          return { readGate: mean('readGate'), writeGate: mean('writeGate'), pointerEntropy: mean('pointerEntropy') };
        })
      : undefined;
    return { loss, nllSum, tokens: count, diagnostics, ...(finalMemory ? { memory: finalMemory } : {}) };
  }
}

export { fillShiftRegister, restartShiftRegister, setReadGateBias, setWriteGateBias } from './init.js';
