// Ops of the family "norm": layer norm, token embedding and positions (RoPE, sinusoidal),
// as SPEC.md §1–§3 defines them. Validation and gradients here; the math in native kernels.
import { record } from '../core/autograd.js';
import type { Device, StorageHandle } from '../native/backend.js';
import { dtypeCode } from '../core/dtype.js';
import { MemgptError, shapeStr } from '../core/errors.js';
import { empty, type Tensor } from '../core/tensor.js';
import type { NormKernels } from '../native/kernels.js';
import { callNative, checkTensors, sameDtype } from './util.js';

type H = StorageHandle;

const FLOAT = ['float32', 'bfloat16'] as const;

/** The family's kernels on t's device, or a clear error where that backend does not have them yet. */
function kernels(op: string, t: Tensor, name: keyof NormKernels): NormKernels {
  const k = t.storage.backend;
  if (typeof k[name] !== 'function') throw new MemgptError(`${op}: not implemented on ${t.device} yet`);
  return k as NormKernels;  // the kernel asked for is there (checked above)
}

function checkOffset(op: string, offset: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new MemgptError(`${op}: positionOffset must be a non-negative integer (got ${offset})`);
}

// ---------------------------------------------------------------- layer norm

/** Layer normalisation over the last axis (biased variance): (x − mean)/sqrt(var + eps)·weight + bias. */
export function layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps = 1e-5): Tensor {
  checkTensors('layerNorm', { x, weight, bias }, FLOAT);
  sameDtype('layerNorm', x, weight);
  sameDtype('layerNorm', x, bias);
  if (x.rank === 0) throw new MemgptError('layerNorm: x must have at least one axis');
  const d = x.shape[x.rank - 1];
  for (const [name, p] of [['weight', weight], ['bias', bias]] as const) {
    if (p.rank !== 1 || p.shape[0] !== d) {
      throw new MemgptError(`layerNorm: ${name} ${shapeStr(p.shape)} does not match the last dim of x ${shapeStr(x.shape)}`);
    }
  }
  if (d === 0) throw new MemgptError(`layerNorm: x ${shapeStr(x.shape)} has an empty last axis`);
  if (!Number.isFinite(eps) || eps < 0) throw new MemgptError(`layerNorm: eps must be a finite non-negative number (got ${eps})`);
  const rows = x.size / d;
  const k = kernels('layerNorm', x, 'layerNormForward');
  const y = empty(x.shape, { dtype: x.dtype, device: x.device });
  // Per-row statistics, float32 whatever x's dtype: the backward reads them instead of recomputing.
  const mean = empty([rows], { dtype: 'float32', device: x.device });
  const rstd = empty([rows], { dtype: 'float32', device: x.device });
  try {
    callNative('layerNorm', { x, weight, bias }, () =>
      k.layerNormForward(
        dtypeCode[x.dtype], rows, d, eps, x.handle, x.offset, weight.handle, weight.offset, bias.handle, bias.offset,
        y.handle, y.offset, mean.handle, mean.offset, rstd.handle, rstd.offset,
      ),
    );
    record('layerNorm', [x, weight, bias], [y], [x, weight, mean, rstd], ([g], [sx, sw, sm, sr], needs) => {
      const kb = kernels('layerNorm backward', sx, 'layerNormBackward');
      const dx = empty(sx.shape, { dtype: sx.dtype, device: sx.device });
      const dw = empty([d], { dtype: sx.dtype, device: sx.device });
      const db = empty([d], { dtype: sx.dtype, device: sx.device });
      callNative('layerNorm backward', { x: sx, dy: g }, () =>
        kb.layerNormBackward(
          dtypeCode[sx.dtype], rows, d, sx.handle, sx.offset, sw.handle, sw.offset, sm.handle, sm.offset, sr.handle, sr.offset,
          g.handle, g.offset, dx.handle, dx.offset, dw.handle, dw.offset, db.handle, db.offset,
        ),
      );
      return [needs[0] ? dx : null, needs[1] ? dw : null, needs[2] ? db : null];
    });
  } catch (e) {
    y.dispose();
    throw e;
  } finally {
    // record() holds its own views; these references are ours to drop.
    mean.dispose();
    rstd.dispose();
  }
  return y;
}

// ---------------------------------------------------------------- embedding

/** Rows of table [V, D] picked by int32 ids [...]: a tensor [..., D]. Ids outside [0, V) are an error. */
export function embedding(ids: Tensor, table: Tensor): Tensor {
  checkTensors('embedding', { ids, table });
  if (ids.dtype !== 'int32') throw new MemgptError(`embedding: ids must be int32 token ids (got ${ids.dtype})`);
  if (table.dtype !== 'float32' && table.dtype !== 'bfloat16') {
    throw new MemgptError(`embedding: table has dtype ${table.dtype}; expected float32 or bfloat16`);
  }
  if (table.rank !== 2) throw new MemgptError(`embedding: table must be [vocab, width] (got ${shapeStr(table.shape)})`);
  const [vocab, d] = table.shape;
  const k = kernels('embedding', table, 'embeddingForward');
  const out = empty([...ids.shape, d], { dtype: table.dtype, device: table.device });
  try {
    callNative('embedding', { ids, table }, () =>
      k.embeddingForward(dtypeCode[table.dtype], ids.size, vocab, d, ids.handle, ids.offset, table.handle, table.offset, out.handle, out.offset),
    );
  } catch (e) {
    out.dispose();
    // The native message says it all (which id, where, the vocabulary size); keep it first.
    const msg = (e as Error).message;
    const at = msg.indexOf('embedding: token id');
    if (at > 0) throw new MemgptError(`${msg.slice(at)} (ids ${shapeStr(ids.shape)})`, { cause: e });
    throw e;
  }
  // The ids are an input without a gradient; they are saved to know where to scatter.
  record('embedding', [ids, table], [out], [ids], ([g], [sids], needs) => {
    if (!needs[1]) return [null, null];
    const kb = kernels('embedding backward', g, 'embeddingBackward');
    const dtable = empty([vocab, d], { dtype: g.dtype, device: g.device });
    callNative('embedding backward', { ids: sids, dout: g }, () =>
      kb.embeddingBackward(dtypeCode[g.dtype], sids.size, vocab, d, sids.handle, sids.offset, g.handle, g.offset, dtable.handle, dtable.offset),
    );
    return [null, dtable];
  });
  return out;
}

// ---------------------------------------------------------------- positions

function ropeInto(x: Tensor, nHeads: number, positionOffset: number, inverse: boolean): Tensor {
  const [batch, t, dModel] = x.shape;
  const k = kernels('rope', x, 'rope');
  const y = empty(x.shape, { dtype: x.dtype, device: x.device });
  try {
    callNative('rope', { x }, () =>
      k.rope(dtypeCode[x.dtype], batch, t, dModel, nHeads, positionOffset, inverse, x.handle, x.offset, y.handle, y.offset),
    );
  } catch (e) {
    y.dispose();
    throw e;
  }
  return y;
}

/**
 * Rotary position embedding (rotate-half, base 10000) of x [B, T, D] split into nHeads heads of
 * width D/nHeads; token t is at position positionOffset + t.
 */
export function rope(x: Tensor, nHeads: number, positionOffset = 0): Tensor {
  checkTensors('rope', { x }, FLOAT);
  if (x.rank !== 3) throw new MemgptError(`rope: x must be [batch, tokens, width] (got ${shapeStr(x.shape)})`);
  const dModel = x.shape[2];
  if (!Number.isSafeInteger(nHeads) || nHeads <= 0 || dModel % nHeads !== 0) {
    throw new MemgptError(`rope: nHeads ${nHeads} does not divide the width of x ${shapeStr(x.shape)}`);
  }
  if ((dModel / nHeads) % 2 !== 0) {
    throw new MemgptError(`rope: the head width ${dModel / nHeads} (x ${shapeStr(x.shape)}, ${nHeads} heads) must be even`);
  }
  checkOffset('rope', positionOffset);
  const y = ropeInto(x, nHeads, positionOffset, false);
  // A rotation's transpose is the opposite rotation.
  record('rope', [x], [y], [], ([g]) => [ropeInto(g, nHeads, positionOffset, true)]);
  return y;
}

export interface SinusoidalOptions {
  /** Position of the first row (default 0). */
  positionOffset?: number;
  device?: Device;
}

/** The sinusoidal position table [T, D] (SPEC.md §3): row p, column 2i: sin(q/10000^(2i/D)), 2i+1: cos(...), q = offset + p. */
export function sinusoidalPositions(T: number, D: number, options: SinusoidalOptions = {}): Tensor {
  const offset = options.positionOffset ?? 0;
  for (const [name, v] of [['T', T], ['D', D]] as const) {
    if (!Number.isSafeInteger(v) || v < 0) throw new MemgptError(`sinusoidalPositions: ${name} must be a non-negative integer (got ${v})`);
  }
  if (D % 2 !== 0) throw new MemgptError(`sinusoidalPositions: the width D = ${D} must be even`);
  checkOffset('sinusoidalPositions', offset);
  const out = empty([T, D], { dtype: 'float32', device: options.device });
  const k = kernels('sinusoidalPositions', out, 'sinusoidalPositions');
  try {
    callNative('sinusoidalPositions', { out }, () => k.sinusoidalPositions(dtypeCode.float32, T, D, offset, out.handle, out.offset));
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
}
