// Ops of incremental decoding (SPEC §5): the attention family's decode row, the rows of one step scattered into
// per-sequence caches, and the output distribution with the copy head. Inference only: none of them records a
// gradient, and scatterRows writes into its destination in place.
import { isGradEnabled } from '../core/autograd.js';
import { dtypeCode } from '../core/dtype.js';
import { MemgptError, shapeStr } from '../core/errors.js';
import { empty, type Tensor } from '../core/tensor.js';
import { memModeOf, type MemoryRead } from './attention.js';
import { callNative, checkTensors, handleOf, sameDtype } from './util.js';

function inferenceOnly(op: string, tensors: (Tensor | null | undefined)[]): void {
  if (isGradEnabled() && tensors.some((t) => t?.requiresGrad)) {
    throw new MemgptError(`${op}: decoding records no gradient; call it under noGrad() (an input requires grad)`);
  }
}

function checkPositions(op: string, positions: Tensor, B: number, name = 'positions'): void {
  if (positions.dtype !== 'int32' || positions.rank !== 1 || positions.shape[0] !== B) {
    throw new MemgptError(`${op}: ${name} must be int32 [${B}], got ${positions.dtype} ${shapeStr(positions.shape)}`);
  }
}

/**
 * dst[b, positions[b], :] = src[b, :] for each sequence b whose position is in [0, T); the others are left alone.
 * src [B, n] (or [B, 1, n]), positions int32 [B], dst [B, T, n] of src's dtype. Writes dst in place.
 */
export function scatterRows(src: Tensor, positions: Tensor, dst: Tensor): void {
  const op = 'scatterRows';
  checkTensors(op, { src, positions, dst });
  sameDtype(op, src, dst);
  if (dst.rank !== 3) throw new MemgptError(`${op}: dst must be [B, T, n], got ${shapeStr(dst.shape)}`);
  const [B, T, n] = dst.shape;
  if (src.size !== B * n || src.shape[0] !== B || src.shape[src.rank - 1] !== n) {
    throw new MemgptError(`${op}: src ${shapeStr(src.shape)} does not hold one row of ${n} for each of the ${B} sequences of dst ${shapeStr(dst.shape)}`);
  }
  checkPositions(op, positions, B);
  callNative(op, { src, dst }, (k) => k.scatterRows(dtypeCode[dst.dtype], B, T, n, ...handleOf(src), ...handleOf(positions), ...handleOf(dst)));
}

/** Keys a block of the decoding key layout holds (native/common/attention.inc: kDecodeKeyBlock). */
export const decodeKeyBlock = 8;

/**
 * The shape of a blocked key cache of n keys (attention.inc): [B, H, ⌈n/8⌉, d, 8] float32, feature i of key t of a
 * head at ((t / 8)·d + i)·8 + t % 8, so that a query's scores over any prefix of keys read one contiguous run.
 */
export function decodeKeyShape(B: number, H: number, d: number, n: number): number[] {
  return [B, H, Math.ceil(n / decodeKeyBlock), d, decodeKeyBlock];
}

/** The key and value caches of one layer's current segment for B sequences (see attentionDecode). */
export interface DecodeCache {
  /** float32 decodeKeyShape(B, H, d, T): each head's keys, rotated as attention rotates them, blocked. */
  keys: Tensor;
  /** [B, H, T, d] in the qkv rows' dtype: each head's values, contiguous. */
  values: Tensor;
}

/** A layer's memory as decoding reads it (decodeMemory makes it from memKV, once per memory write). */
export interface DecodeMemory {
  /** float32 decodeKeyShape(B, H, d, S): the slot keys, rotated at their positions for the positional read, blocked. */
  keys: Tensor;
  /** [B, H, S, d] in memKV's dtype: each head's slot values, contiguous. */
  values: Tensor;
}

/** How the memory is read (as attention's options); the read's keys depend on it. */
export interface DecodeMemoryOptions {
  nHeads: number;
  rope: boolean;
  memoryRead?: MemoryRead;
}

/**
 * Decoding's view of memKV [B, S, 2D] (a layer's memory keys and values): the keys rotated (under rope and the
 * positional read, slot j at position j) and laid out as the key cache, the values per head. The rotation is then
 * done once per memory write instead of once per token. Writes into `into` when given (same B, S, H, d), else new.
 */
export function decodeMemory(memKV: Tensor, options: DecodeMemoryOptions, into?: DecodeMemory): DecodeMemory {
  const op = 'decodeMemory';
  const { nHeads: H, rope } = options;
  const memMode = memModeOf(op, options.memoryRead);
  checkTensors(op, { memKV }, ['float32', 'bfloat16']);
  inferenceOnly(op, [memKV]);
  if (memKV.rank !== 3 || memKV.shape[1] < 1 || memKV.shape[2] % 2 !== 0) throw new MemgptError(`${op}: memKV must be [B, S ≥ 1, 2D], got ${shapeStr(memKV.shape)}`);
  const [B, S, twoD] = memKV.shape;
  const D = twoD / 2;
  if (!Number.isInteger(H) || H < 1 || D % H !== 0) throw new MemgptError(`${op}: nHeads ${H} does not divide the width D = ${D} of memKV ${shapeStr(memKV.shape)}`);
  const d = D / H;
  if (rope && d % 2 !== 0) throw new MemgptError(`${op}: rope needs an even head width, got d = ${d}`);
  const keyShape = decodeKeyShape(B, H, d, S), valueShape = [B, H, S, d];
  if (into) {
    checkTensors(op, { keys: into.keys, values: into.values });
    if (into.keys.dtype !== 'float32' || into.keys.shape.join() !== keyShape.join()) throw new MemgptError(`${op}: keys must be float32 [${keyShape.join(', ')}], got ${into.keys.dtype} ${shapeStr(into.keys.shape)}`);
    if (into.values.shape.join() !== valueShape.join()) throw new MemgptError(`${op}: values must be [${valueShape.join(', ')}], got ${shapeStr(into.values.shape)}`);
    sameDtype(op, memKV, into.values);
  }
  const k = memKV.storage.backend;
  if (!k.attentionDecodeMemory) throw new MemgptError(`${op}: not implemented on ${memKV.device} yet`);
  const out = into ?? { keys: empty(keyShape, { device: memKV.device }), values: empty(valueShape, { device: memKV.device, dtype: memKV.dtype }) };
  try {
    callNative(op, { memKV }, () =>
      k.attentionDecodeMemory!(dtypeCode[memKV.dtype], B, S, H, d, rope, memMode, ...handleOf(memKV), ...handleOf(out.keys), ...handleOf(out.values)),
    );
  } catch (e) {
    if (!into) {
      out.keys.dispose();
      out.values.dispose();
    }
    throw e;
  }
  return out;
}

/** Options of attentionDecode: as attention's, with the memory as decodeMemory made it and gateLogits one row per sequence ([B, H]). */
export interface AttentionDecodeOptions extends DecodeMemoryOptions {
  memory?: DecodeMemory;
  gateLogits?: Tensor;
}

/**
 * One decoding step of attention. qkv [B, 3D] (or [B, 1, 3D]) is each sequence's new row, positions (int32 [B]) its
 * row in the segment (−1: the sequence sits this step out; nothing is written for it and its output row is 0). The
 * new keys and values are written into `cache` at those rows, then out [B, D] is row positions[b] of
 * attention(segment rows 0 … positions[b], options) with the memory of decodeMemory(memKV): what the full op gives
 * that row.
 */
export function attentionDecode(qkv: Tensor, positions: Tensor, cache: DecodeCache, options: AttentionDecodeOptions): Tensor {
  const op = 'attentionDecode';
  const { nHeads: H, rope, memory, gateLogits } = options;
  const { keys, values } = cache;
  const memMode = memModeOf(op, options.memoryRead);
  if ((memory === undefined) !== (gateLogits === undefined)) throw new MemgptError(`${op}: the memory and gateLogits come together`);
  checkTensors(op, memory ? { qkv, values, memValues: memory.values, gateLogits: gateLogits! } : { qkv, values }, ['float32', 'bfloat16']);
  checkTensors(op, memory ? { qkv, positions, keys, memKeys: memory.keys } : { qkv, positions, keys });
  for (const t of [values, memory?.values, gateLogits]) if (t) sameDtype(op, qkv, t);
  if (keys.dtype !== 'float32' || (memory && memory.keys.dtype !== 'float32')) throw new MemgptError(`${op}: the key caches are float32`);
  inferenceOnly(op, [qkv, gateLogits]);
  const B = qkv.shape[0], threeD = qkv.shape[qkv.rank - 1];
  if (qkv.size !== B * threeD || threeD % 3 !== 0) throw new MemgptError(`${op}: qkv must be [B, 3D], got ${shapeStr(qkv.shape)}`);
  const D = threeD / 3;
  if (!Number.isInteger(H) || H < 1 || D % H !== 0) throw new MemgptError(`${op}: nHeads ${H} does not divide the width D = ${D} of qkv ${shapeStr(qkv.shape)}`);
  const d = D / H;
  if (rope && d % 2 !== 0) throw new MemgptError(`${op}: rope needs an even head width, got d = ${d}`);
  if (values.rank !== 4 || values.shape[0] !== B || values.shape[1] !== H || values.shape[3] !== d || values.shape[2] < 1) {
    throw new MemgptError(`${op}: values must be [${B}, ${H}, T ≥ 1, ${d}], got ${shapeStr(values.shape)}`);
  }
  const T = values.shape[2];
  const keyShape = decodeKeyShape(B, H, d, T);
  if (keys.shape.join() !== keyShape.join()) throw new MemgptError(`${op}: keys must be [${keyShape.join(', ')}] (decodeKeyShape), got ${shapeStr(keys.shape)}`);
  checkPositions(op, positions, B);
  let S = 0;
  if (memory) {
    const mv = memory.values;
    if (mv.rank !== 4 || mv.shape[0] !== B || mv.shape[1] !== H || mv.shape[3] !== d || mv.shape[2] < 1) {
      throw new MemgptError(`${op}: the memory's values must be [${B}, ${H}, S ≥ 1, ${d}], got ${shapeStr(mv.shape)}`);
    }
    S = mv.shape[2];
    const memKeyShape = decodeKeyShape(B, H, d, S);
    if (memory.keys.shape.join() !== memKeyShape.join()) throw new MemgptError(`${op}: the memory's keys must be [${memKeyShape.join(', ')}], got ${shapeStr(memory.keys.shape)}`);
    if (gateLogits!.size !== B * H || gateLogits!.shape[0] !== B || gateLogits!.shape[gateLogits!.rank - 1] !== H) {
      throw new MemgptError(`${op}: gateLogits must be [${B}, ${H}], got ${shapeStr(gateLogits!.shape)}`);
    }
  }
  const k = qkv.storage.backend;
  if (!k.attentionDecode) throw new MemgptError(`${op}: not implemented on ${qkv.device} yet`);
  const out = empty([B, D], { dtype: qkv.dtype, device: qkv.device });
  try {
    callNative(op, { qkv }, () =>
      k.attentionDecode!(dtypeCode[qkv.dtype], B, T, H, d, S, rope, memMode,
        ...handleOf(qkv), ...handleOf(positions), ...handleOf(keys), ...handleOf(values), ...handleOf(memory?.keys), ...handleOf(memory?.values),
        ...handleOf(gateLogits), ...handleOf(out)),
    );
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
}

/** The copy head's context of each sequence while decoding: its query, keys and tokens, and how many rows count. */
export interface CopyContext {
  /** [B, D]: the copy query of each sequence's newest row. */
  cq: Tensor;
  /** [B, T, D]: the copy keys of its context rows. */
  ck: Tensor;
  /** [B] (or [B, 1]): the generate-or-copy logit. */
  gen: Tensor;
  /** int32 [B, T]: the token ids of the context rows. */
  tokens: Tensor;
  /** int32 [B]: how many of the T rows are the context (0: none, the generator alone). */
  lengths: Tensor;
}

/**
 * P(y) [B, V] (float32) for each sequence's next token: softmax(logits [B, V]), mixed with the copy head's pointer
 * over its context when `copy` is given (SPEC §3's output distribution, one row per sequence).
 */
export function copyMixProbs(logits: Tensor, copy?: CopyContext): Tensor {
  const op = 'copyMixProbs';
  checkTensors(op, copy ? { logits, cq: copy.cq, ck: copy.ck, gen: copy.gen } : { logits }, ['float32']);
  if (logits.rank !== 2) throw new MemgptError(`${op}: logits must be [B, V], got ${shapeStr(logits.shape)}`);
  const [B, V] = logits.shape;
  let T = 0, D = 0;
  if (copy) {
    checkTensors(op, { logits, tokens: copy.tokens, lengths: copy.lengths }, ['float32', 'int32']);
    inferenceOnly(op, [logits, copy.cq, copy.ck, copy.gen]);
    const { cq, ck, gen, tokens, lengths } = copy;
    if (cq.rank !== 2 || cq.shape[0] !== B) throw new MemgptError(`${op}: cq must be [${B}, D], got ${shapeStr(cq.shape)}`);
    D = cq.shape[1];
    if (ck.rank !== 3 || ck.shape[0] !== B || ck.shape[2] !== D) throw new MemgptError(`${op}: ck must be [${B}, T, ${D}], got ${shapeStr(ck.shape)}`);
    T = ck.shape[1];
    if (gen.size !== B || gen.shape[0] !== B) throw new MemgptError(`${op}: gen must be [${B}], got ${shapeStr(gen.shape)}`);
    if (tokens.dtype !== 'int32' || tokens.rank !== 2 || tokens.shape[0] !== B || tokens.shape[1] !== T) {
      throw new MemgptError(`${op}: tokens must be int32 [${B}, ${T}], got ${tokens.dtype} ${shapeStr(tokens.shape)}`);
    }
    checkPositions(op, lengths, B, 'lengths');
  } else {
    inferenceOnly(op, [logits]);
  }
  const k = logits.storage.backend;
  if (!k.copyMixProbs) throw new MemgptError(`${op}: not implemented on ${logits.device} yet`);
  const probs = empty([B, V], { dtype: 'float32', device: logits.device });
  try {
    callNative(op, { logits }, () =>
      k.copyMixProbs!(B, T, Math.max(D, 1), V, copy !== undefined, ...handleOf(logits),
        ...handleOf(copy?.cq), ...handleOf(copy?.ck), ...handleOf(copy?.gen), ...handleOf(copy?.tokens), ...handleOf(copy?.lengths), ...handleOf(probs)),
    );
  } catch (e) {
    probs.dispose();
    throw e;
  }
  return probs;
}
