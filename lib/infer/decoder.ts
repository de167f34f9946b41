// Incremental decoding (SPEC.md §5): a Decoder feeds one token at a time with a key/value cache for the current,
// partial segment only, and writes each layer's memory when the segment is full, so memory and time per token stay
// bounded by T and S however long the text. Sampling is in sampling.ts, text streaming in text.ts.
import { noGrad } from '../core/autograd.js';
import type { ModelConfig } from '../nn/config.js';
import { MemgptError } from '../core/errors.js';
import type { MemGPT } from '../nn/model.js';
import { add } from '../ops/elementwise.js';
import { linear } from '../ops/linear.js';
import { embedding, layerNorm, sinusoidalPositions } from '../ops/norm.js';
import { keep, tensor, tidy, type Tensor } from '../core/tensor.js';

/** Per-layer state of the current segment. Host arrays of T rows, reused (overwritten) segment after segment. */
interface LayerCache {
  /** RoPE-rotated keys (unrotated under sinusoidal positions), [T, D]. */
  keys: Float32Array;
  values: Float32Array;
  /** The layer's output h of each token: the memory write's candidates c = LN(h; ptr.ln) are formed from them. */
  outputs: Float32Array;
  /** The memory M_l [1, S, D] (absent when memSlots = 0). */
  memory: Tensor | null;
  /** Memory keys and values LN(M_l)·Wkvᵀ + b, [S, 2D]: fixed for a whole segment, so computed once per segment. */
  memKV: Float32Array;
}

/** What the copy head points at: one segment's tokens and their copy keys hf·Wckᵀ [T, D]. */
interface CopySegment {
  tokens: Int32Array;
  keys: Float32Array;
}

/** Throws unless token is an id of the model's vocabulary. */
export function checkToken(model: MemGPT, token: number, what: string): void {
  if (!Number.isInteger(token) || token < 0 || token >= model.config.vocabSize) {
    throw new MemgptError(`${what}: token id ${token} is outside the vocabulary (${model.config.vocabSize})`);
  }
}

/**
 * One sample's state for incremental decoding with batch size 1 (no gradients). feed() runs one token
 * through every layer exactly as SPEC §3 at its position in the current segment; distribution() is the
 * model's P(y) for the token after the last one fed.
 */
export class Decoder {
  readonly model: MemGPT;
  private readonly cfg: ModelConfig;
  private readonly layers: LayerCache[] = [];
  /** Position in the current segment of the next token (0 … T−1). */
  private pos = 0;
  /** The segment being filled (rows 0 … pos−1), and the last finished one: right after a boundary, pos = 0 and
   *  the copy head of the next prediction points into `previous`. Two buffers, swapped at each boundary. */
  private current: CopySegment;
  private previous: CopySegment;
  /** ln_f output of the last token fed. */
  private lastHf: Float32Array | null = null;
  private readonly ropeTheta: Float64Array;
  private disposed = false;
  private fed = 0;

  constructor(model: MemGPT) {
    this.model = model;
    this.cfg = model.config;
    const { dModel: D, segmentLen: T, memSlots: S, nHeads: H } = this.cfg;
    const d = D / H;
    this.ropeTheta = Float64Array.from({ length: d / 2 }, (_, i) => Math.pow(10000, (-2 * i) / d));
    const init = noGrad(() => model.initialMemory(1));
    for (let l = 0; l < this.cfg.nLayers; l++) {
      const memory = S > 0 ? keep(init[l]) : null;
      this.layers.push({ keys: new Float32Array(T * D), values: new Float32Array(T * D), outputs: new Float32Array(T * D), memory, memKV: new Float32Array(0) });
      this.refreshMemKV(l);
    }
    const segment = (): CopySegment => ({ tokens: new Int32Array(T), keys: new Float32Array(this.cfg.copyHead ? T * D : 0) });
    this.current = segment();
    this.previous = segment();
  }

  /** Tokens fed so far. */
  get length(): number {
    return this.fed;
  }

  private param(name: string): Tensor {
    const p = this.model.params.get(name);
    if (!p) throw new MemgptError(`generate: the model has no parameter ${name}`);
    return p;
  }

  private check(what: string): void {
    if (this.disposed) throw new MemgptError(`${what}: this Decoder was disposed`);
  }

  private refreshMemKV(l: number): void {
    const M = this.layers[l].memory;
    if (!M) return;
    const P = (n: string) => this.param(`layers.${l}.${n}`);
    const kv = noGrad(() =>
      tidy(() => linear(layerNorm(M, P('mem.ln.weight'), P('mem.ln.bias')), P('mem.kv.weight'), P('mem.kv.bias')).toArray() as Float32Array),
    );
    // SPEC v2 with RoPE: slot j's key is rotated at position j (the slots sit at −S … −1 before the segment,
    // and the query at p is rotated at p + S: only the distance counts).
    if (this.positionalRead) {
      const { dModel: D, nHeads: H, memSlots: S } = this.cfg;
      const d = D / H;
      for (let j = 0; j < S; j++) for (let hd = 0; hd < H; hd++) this.rotate(kv, j * 2 * D + hd * d, j);
    }
    this.layers[l].memKV = kv;
  }

  /** Whether the memory is read by position (SPEC v2 with RoPE): rotated queries against rotated slot keys. */
  private get positionalRead(): boolean {
    return this.cfg.specVersion >= 2 && this.cfg.positional === 'rope';
  }

  /** Rotate-half RoPE in place of the head row z[at … at + d) at position p. */
  private rotate(z: Float32Array | Float64Array, at: number, p: number): void {
    const half = this.ropeTheta.length;
    for (let i = 0; i < half; i++) {
      const c = Math.cos(p * this.ropeTheta[i]), s = Math.sin(p * this.ropeTheta[i]);
      const a = at + i, b = a + half;
      [z[a], z[b]] = [z[a] * c - z[b] * s, z[a] * s + z[b] * c];
    }
  }

  /** Processes one token at the next position of the current segment. */
  feed(token: number): void {
    this.check('feed');
    checkToken(this.model, token, 'feed');
    const { dModel: D, nLayers: L, segmentLen: T, memSlots: S, copyHead } = this.cfg;
    const p = this.pos;
    const device = this.model.device;
    noGrad(() =>
      tidy(() => {
        let h = embedding(tensor([token], [1, 1], { dtype: 'int32', device }), this.param('tok_emb'));
        if (this.cfg.positional === 'sinusoidal') h = add(h, sinusoidalPositions(1, D, { positionOffset: p, device }));
        for (let l = 0; l < L; l++) {
          const P = (n: string) => this.param(`layers.${l}.${n}`);
          const u = layerNorm(h, P('ln1.weight'), P('ln1.bias'));
          const qkv = linear(u, P('attn.qkv.weight'), P('attn.qkv.bias')).toArray() as Float32Array;
          const gateLogits = S > 0 ? (linear(u, P('mem.gate.weight'), P('mem.gate.bias')).toArray() as Float32Array) : null;
          const o = this.attend(l, p, qkv, gateLogits);
          h = add(h, linear(tensor(o, [1, 1, D], { device }), P('attn.out.weight'), P('attn.out.bias')));
          const z = linear(layerNorm(h, P('ln2.weight'), P('ln2.bias')), P('ffn.fc1.weight'), P('ffn.fc1.bias'), { activation: 'gelu' });
          h = add(h, linear(z, P('ffn.fc2.weight'), P('ffn.fc2.bias')));
          if (S > 0) this.layers[l].outputs.set(h.toArray(), p * D);
        }
        const hf = layerNorm(h, this.param('ln_f.weight'), this.param('ln_f.bias'));
        this.lastHf = hf.toArray() as Float32Array;
        if (copyHead) this.current.keys.set(linear(hf, this.param('copy.k.weight'), null).toArray(), p * D);
      }),
    );
    this.current.tokens[p] = token;
    this.pos++;
    this.fed++;
    if (this.pos === T) this.endSegment();
  }

  /**
   * Self-attention of token p's query over the cached keys 0 … p and the gated memory read, for every
   * head (SPEC §3, the row p of A, R and O); caches this token's key and value. Float64 accumulation.
   */
  private attend(l: number, p: number, qkv: Float32Array, gateLogits: Float32Array | null): Float32Array {
    const { dModel: D, nHeads: H, memSlots: S } = this.cfg;
    const d = D / H, half = d / 2;
    const cache = this.layers[l];
    const q0 = qkv.subarray(0, D);
    const q = Float64Array.from(q0);
    const k = cache.keys.subarray(p * D, (p + 1) * D);
    k.set(qkv.subarray(D, 2 * D));
    cache.values.set(qkv.subarray(2 * D, 3 * D), p * D);
    if (this.cfg.positional === 'rope') {
      for (let hd = 0; hd < H; hd++) {
        for (let i = 0; i < half; i++) {
          const c = Math.cos(p * this.ropeTheta[i]), s = Math.sin(p * this.ropeTheta[i]);
          const a = hd * d + i, b = a + half;
          [q[a], q[b]] = [q[a] * c - q[b] * s, q[a] * s + q[b] * c];
          [k[a], k[b]] = [k[a] * c - k[b] * s, k[a] * s + k[b] * c];
        }
      }
    }
    const out = new Float32Array(D);
    const scores = new Float64Array(Math.max(p + 1, S));
    const scale = 1 / Math.sqrt(d);
    // softmax(scores[0..n)) · rows of `table` (row stride `stride`, columns hd·d … from `col`) into acc; returns
    // the scores' logsumexp.
    const weighted = (n: number, table: Float32Array, stride: number, col: number, acc: Float64Array): number => {
      let mx = -Infinity;
      for (let j = 0; j < n; j++) mx = Math.max(mx, scores[j]);
      let total = 0;
      for (let j = 0; j < n; j++) total += (scores[j] = Math.exp(scores[j] - mx));
      for (let j = 0; j < n; j++) {
        const w = scores[j] / total;
        for (let i = 0; i < d; i++) acc[i] += w * table[j * stride + col + i];
      }
      return mx + Math.log(total);
    };
    // The query that reads the memory: unrotated (SPEC v1, or sinusoidal positions), or rotated at p + S (v2).
    const qm = Float64Array.from(q0);
    if (this.positionalRead) for (let hd = 0; hd < H; hd++) this.rotate(qm, hd * d, p + S);
    const joint = this.cfg.specVersion >= 2;
    for (let hd = 0; hd < H; hd++) {
      const off = hd * d;
      for (let j = 0; j <= p; j++) {
        let dot = 0;
        for (let i = 0; i < d; i++) dot += q[off + i] * cache.keys[j * D + off + i];
        scores[j] = dot * scale;
      }
      const A = new Float64Array(d);
      const lseSelf = weighted(p + 1, cache.values, D, off, A);
      if (S > 0 && gateLogits) {
        const mkv = cache.memKV;
        for (let s = 0; s < S; s++) {
          let dot = 0;
          for (let i = 0; i < d; i++) dot += qm[off + i] * mkv[s * 2 * D + off + i];
          scores[s] = dot * scale;
        }
        const R = new Float64Array(d);
        const lseMem = weighted(S, mkv, 2 * D, D + off, R);
        // v2: the joint softmax's share of the memory, moved by the gate logit; v1: the gate alone.
        const g = 1 / (1 + Math.exp(-(gateLogits[hd] + (joint ? lseMem - lseSelf : 0))));
        for (let i = 0; i < d; i++) out[off + i] = g * R[i] + (1 - g) * A[i];
      } else {
        for (let i = 0; i < d; i++) out[off + i] = A[i];
      }
    }
    return out;
  }

  /** The segment is full: each layer's memory write from its cached outputs, then an empty cache. */
  private endSegment(): void {
    const { dModel: D, segmentLen: T, memSlots: S } = this.cfg;
    if (S > 0) {
      for (let l = 0; l < this.cfg.nLayers; l++) {
        const cache = this.layers[l];
        const M = cache.memory!;
        const next = noGrad(() => tidy(() => this.model.writeMemory(l, M, tensor(cache.outputs, [1, T, D], { device: M.device })).M));
        cache.memory = keep(next);
        M.dispose();
        this.refreshMemKV(l);
      }
    }
    this.startSegment();
  }

  private startSegment(): void {
    this.pos = 0;
    [this.previous, this.current] = [this.current, this.previous];
  }

  /**
   * Feeds a prompt. Whole segments that start on an empty cache go through model.segment() (the fast
   * full-segment path, which also writes the memory); the rest token by token.
   */
  feedMany(tokens: ArrayLike<number>): void {
    this.check('feedMany');
    for (let i = 0; i < tokens.length; i++) checkToken(this.model, tokens[i], `feedMany (index ${i})`);
    const T = this.cfg.segmentLen;
    let i = 0;
    while (i < tokens.length) {
      if (this.pos === 0 && tokens.length - i >= T) {
        this.feedSegment(tokens, i);
        i += T;
      } else {
        this.feed(tokens[i++]);
      }
    }
  }

  private feedSegment(tokens: ArrayLike<number>, start: number): void {
    const { dModel: D, segmentLen: T, memSlots: S, copyHead } = this.cfg;
    const ids = Int32Array.from({ length: T }, (_, t) => tokens[start + t]);
    const memory = this.layers.map((c) => c.memory).filter((m): m is Tensor => m !== null);
    const next = noGrad(() =>
      tidy(() => {
        const out = this.model.segment(tensor(ids, [1, T], { dtype: 'int32', device: this.model.device }), memory);
        const hf = out.hf.toArray() as Float32Array;
        this.lastHf = hf.slice((T - 1) * D);
        if (copyHead) this.current.keys.set(linear(out.hf, this.param('copy.k.weight'), null).toArray());
        return out.memory;
      }),
    );
    this.current.tokens.set(ids);
    if (S > 0) {
      for (let l = 0; l < this.cfg.nLayers; l++) {
        this.layers[l].memory!.dispose();
        this.layers[l].memory = keep(next[l]);
        this.refreshMemKV(l);
      }
    }
    this.fed += T;
    this.startSegment();
  }

  /** P(y) over the vocabulary for the token after the last one fed (SPEC §3, copy mixture included). */
  distribution(): Float64Array {
    this.check('distribution');
    const hfRow = this.lastHf;
    if (!hfRow) throw new MemgptError('distribution: no token has been fed yet');
    const { dModel: D, vocabSize: V, copyHead } = this.cfg;
    const device = this.model.device;
    const { logits, cq, gen } = noGrad(() =>
      tidy(() => {
        const hf = tensor(hfRow, [1, D], { device });
        return {
          logits: linear(hf, this.param('tok_emb'), null).toArray(),
          cq: copyHead ? linear(hf, this.param('copy.q.weight'), null).toArray() : null,
          gen: copyHead ? linear(hf, this.param('copy.gen.weight'), this.param('copy.gen.bias')).toArray()[0] : 0,
        };
      }),
    );
    const probs = new Float64Array(V);
    let mx = -Infinity;
    for (let v = 0; v < V; v++) mx = Math.max(mx, logits[v]);
    let total = 0;
    for (let v = 0; v < V; v++) total += (probs[v] = Math.exp(logits[v] - mx));
    if (!copyHead || !cq) {
      for (let v = 0; v < V; v++) probs[v] /= total;
      return probs;
    }
    const pgen = 1 / (1 + Math.exp(-gen));
    for (let v = 0; v < V; v++) probs[v] *= pgen / total;
    const [seg, n] = this.pos > 0 ? [this.current, this.pos] : [this.previous, this.cfg.segmentLen];
    const scores = new Float64Array(n);
    let smx = -Infinity;
    for (let j = 0; j < n; j++) {
      let dot = 0;
      for (let i = 0; i < D; i++) dot += cq[i] * seg.keys[j * D + i];
      scores[j] = dot / Math.sqrt(D);
      smx = Math.max(smx, scores[j]);
    }
    let stotal = 0;
    for (let j = 0; j < n; j++) stotal += (scores[j] = Math.exp(scores[j] - smx));
    // 1 − σ(g) = σ(−g), computed so that it does not round to 0 when pgen is near 1.
    const pcopy = 1 / (1 + Math.exp(gen));
    for (let j = 0; j < n; j++) probs[seg.tokens[j]] += (pcopy * scores[j]) / stotal;
    return probs;
  }

  /** Frees the memory tensors; the Decoder cannot be used afterwards. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const c of this.layers) {
      c.memory?.dispose();
      c.memory = null;
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
