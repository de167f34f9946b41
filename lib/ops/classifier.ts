// Ops of the family "classifier": the output head: tied logits, cross-entropy and the copy mixture, fused.
// tokenNLL gives each token's −log P(y) without ever holding the [B·T, V] logits (native/cpu/classifier.cpp);
// the caller masks and averages it with ordinary ops.
import { record } from '../core/autograd.js';
import type { StorageHandle } from '../native/backend.js';
import { MemgptError, shapeStr } from '../core/errors.js';
import { empty, type Tensor } from '../core/tensor.js';
import type { ClassifierKernels } from '../native/kernels.js';
import { callNative, checkTensors } from './util.js';

/** The copy head's inputs (SPEC §3), each computed by plain GEMMs from hf outside this op. */
export interface CopyHeadInputs {
  /** hf·Wcqᵀ [B, T, D]. */
  cq: Tensor;
  /** hf·Wckᵀ [B, T, D]. */
  ck: Tensor;
  /** hf·Wgenᵀ + bgen [B, T]: the generator gate's logit. */
  genLogit: Tensor;
  /** The segment's input token ids [B, T] int32: what the copy head can point at. */
  inputs: Tensor;
}

/** Options of tokenNLL. */
export interface TokenNLLOptions {
  /** Mix in the pointer-generator copy distribution. */
  copy?: CopyHeadInputs;
  /** @internal tile of the logits computed at once (rows x vocabulary entries); tests use small ones. */
  chunk?: { rows?: number; vocab?: number };
}

// 1024 x 1024 floats: a 4 MiB scratch, and GEMMs big enough to amortise packing their operands.
const defaultRowChunk = 1024;
const defaultVocabChunk = 1024;

function kernelsOf(op: string, t: Tensor): ClassifierKernels {
  const k = t.storage.backend;
  if (typeof k.tokenNLLForward !== 'function' || typeof k.copyMixForward !== 'function') {
    throw new MemgptError(`${op}: not implemented on ${t.device} yet`);
  }
  return k as ClassifierKernels;
}

function chunkSize(what: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 1) throw new MemgptError(`tokenNLL: chunk.${what} must be a positive integer, got ${value}`);
  return value;
}

function expectShape(name: string, t: Tensor, shape: readonly number[], context: string): void {
  if (t.shape.join() !== shape.join()) {
    throw new MemgptError(`tokenNLL: ${name} ${shapeStr(t.shape)} should be ${shapeStr(shape)} (${context})`);
  }
}

/**
 * Per-token −log P(y) in nats, [B, T], of the tied output head logits = hf·tok_embᵀ (SPEC §3), with the
 * copy head's mixture when options.copy is given. Differentiable in hf, tokEmb, cq, ck and genLogit.
 */
export function tokenNLL(hf: Tensor, tokEmb: Tensor, targets: Tensor, options: TokenNLLOptions = {}): Tensor {
  const op = 'tokenNLL';
  checkTensors(op, { hf, tokEmb }, ['float32']);
  checkTensors(op, { hf, targets }, ['float32', 'int32']);
  if (targets.dtype !== 'int32') throw new MemgptError(`tokenNLL: targets must be int32 token ids, got ${targets.dtype}`);
  if (hf.rank !== 3) throw new MemgptError(`tokenNLL: hf ${shapeStr(hf.shape)} should be [B, T, D]`);
  const [B, T, D] = hf.shape;
  if (tokEmb.rank !== 2 || tokEmb.shape[1] !== D) {
    throw new MemgptError(`tokenNLL: tokEmb ${shapeStr(tokEmb.shape)} should be [V, ${D}] to match hf ${shapeStr(hf.shape)}`);
  }
  const V = tokEmb.shape[0];
  expectShape('targets', targets, [B, T], `one id per position of hf ${shapeStr(hf.shape)}`);
  const copy = options.copy;
  if (copy) {
    checkTensors(op, { hf, cq: copy.cq, ck: copy.ck, genLogit: copy.genLogit }, ['float32']);
    checkTensors(op, { hf, inputs: copy.inputs }, ['float32', 'int32']);
    if (copy.inputs.dtype !== 'int32') throw new MemgptError(`tokenNLL: copy.inputs must be int32 token ids, got ${copy.inputs.dtype}`);
    const ctx = `hf is ${shapeStr(hf.shape)}`;
    expectShape('copy.cq', copy.cq, [B, T, D], ctx);
    expectShape('copy.ck', copy.ck, [B, T, D], ctx);
    expectShape('copy.genLogit', copy.genLogit, [B, T], ctx);
    expectShape('copy.inputs', copy.inputs, [B, T], ctx);
  }
  const rowChunk = chunkSize('rows', options.chunk?.rows, defaultRowChunk);
  const vocabChunk = chunkSize('vocab', options.chunk?.vocab, defaultVocabChunk);
  const k = kernelsOf(op, hf);
  const rows = B * T;
  const opts = { dtype: 'float32' as const, device: hf.device };

  const nll = empty([B, T], opts);
  const lse = empty([B, T], opts);
  const stats = copy ? empty([B, T, 3], opts) : null;
  try {
    const named = { hf, tokEmb, targets };
    callNative(op, named, () =>
      k.tokenNLLForward(
        rows, V, D, rowChunk, vocabChunk, hf.handle, hf.offset, tokEmb.handle, tokEmb.offset,
        targets.handle, targets.offset, nll.handle, nll.offset, lse.handle, lse.offset,
      ),
    );
    if (copy && stats) {
      const { cq, ck, genLogit, inputs } = copy;
      callNative(op, { ...named, cq, ck, genLogit, inputs }, () =>
        k.copyMixForward(
          B, T, D, V, cq.handle, cq.offset, ck.handle, ck.offset, genLogit.handle, genLogit.offset,
          inputs.handle, inputs.offset, targets.handle, targets.offset, nll.handle, nll.offset, stats.handle, stats.offset,
        ),
      );
    }
  } catch (e) {
    nll.dispose();
    lse.dispose();
    stats?.dispose();
    throw e;
  }

  const diffInputs = copy ? [hf, tokEmb, copy.cq, copy.ck, copy.genLogit] : [hf, tokEmb];
  const saved = copy && stats ? [hf, tokEmb, targets, lse, copy.cq, copy.ck, copy.genLogit, copy.inputs, stats] : [hf, tokEmb, targets, lse];
  record(op, diffInputs, [nll], saved, ([dnll], s, needs) => {
    const [sHf, sEmb, sTargets, sLse] = s;
    let coef = dnll;
    let dcq: Tensor | null = null, dck: Tensor | null = null, dgen: Tensor | null = null;
    if (copy) {
      const [, , , , cq, ck, gen, inputs, st] = s;
      coef = empty([B, T], opts);
      dcq = empty([B, T, D], opts);
      dck = empty([B, T, D], opts);
      dgen = empty([B, T], opts);
      const c = coef, q = dcq, kk = dck, g = dgen;
      callNative('tokenNLL backward', { cq, ck, genLogit: gen, dnll }, () =>
        k.copyMixBackward(
          B, T, D, cq.handle, cq.offset, ck.handle, ck.offset, gen.handle, gen.offset, inputs.handle, inputs.offset,
          sTargets.handle, sTargets.offset, st.handle, st.offset, dnll.handle, dnll.offset, c.handle, c.offset,
          q.handle, q.offset, kk.handle, kk.offset, g.handle, g.offset,
        ),
      );
    }
    let dhf: Tensor | null = null, demb: Tensor | null = null;
    if (needs[0] || needs[1]) {
      const h = empty(hf.shape, opts), e = empty(tokEmb.shape, opts);
      callNative('tokenNLL backward', { hf: sHf, tokEmb: sEmb, dnll }, () =>
        k.tokenNLLBackward(
          rows, V, D, rowChunk, vocabChunk, sHf.handle, sHf.offset, sEmb.handle, sEmb.offset, sTargets.handle, sTargets.offset,
          sLse.handle, sLse.offset, coef.handle, coef.offset, h.handle, h.offset, e.handle, e.offset,
        ),
      );
      dhf = needs[0] ? h : null;
      demb = needs[1] ? e : null;
    }
    // Unneeded gradients are freed by the backward engine's tidy scope.
    return copy ? [dhf, demb, needs[2] ? dcq : null, needs[3] ? dck : null, needs[4] ? dgen : null] : [dhf, demb];
  });
  lse.dispose();
  stats?.dispose();
  return nll;
}
