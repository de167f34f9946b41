// Ops of the family "memwrite": the memory write (SPEC.md §3, "# memory write") as one fused op. The slot
// queries mq = M·Wpqᵀ and token keys/values ck, cv = c·Wpk/pvᵀ are plain GEMMs outside; this op does the rest:
// pointer scores, softmax over tokens, candidates Z, the write gate U and the blend (1 − U)⊙M + U⊙Z.
import { record } from '../core/autograd.js';
import { MemgptError, shapeStr } from '../core/errors.js';
import { empty, type Tensor } from '../core/tensor.js';
import type { StorageHandle } from '../native/backend.js';
import type { MemwriteKernels } from '../native/kernels.js';
import { callNative, checkTensors, handleOf } from './util.js';

/** Options of memoryWrite. */
export interface MemoryWriteOptions {
  /** Also return the write's diagnostics (meanGate, pointerEntropy), computed from the same forward. */
  stats?: boolean;
  /**
   * SPEC v2: a positional bias on the pointer scores, [S, Tb] with Tb ≥ T, end-aligned (token t of a segment of T
   * takes column Tb − T + t), differentiable.
   */
  pointerBias?: Tensor;
  /**
   * A value weight Wv [D, D]: the candidates become Z = (α·cv)·Wvᵀ. With cv = c this is SPEC's α·(c·Wpvᵀ)
   * reassociated, which projects S candidates instead of T tokens; differentiable.
   */
  valueWeight?: Tensor;
}

/** The new memory with the write's diagnostics (plain numbers, no gradient through them). */
export interface MemoryWriteResult {
  /** The memory after the write [B,S,D]. */
  M: Tensor;
  /** Mean of the write gate U over every batch item, slot and feature. */
  meanGate: number;
  /** Mean over (batch item, slot) of the pointer's entropy −Σ_t α log α, in nats (log T when uniform). */
  pointerEntropy: number;
}

function kernels(op: string, t: Tensor): Required<MemwriteKernels> {
  const k = t.storage.backend;
  if (!k.memwriteForward || !k.memwriteBackward || !k.memwriteStats) throw new MemgptError(`${op}: not implemented on ${t.device} yet`);
  return k as Required<MemwriteKernels>;
}

function checkShapes(M: Tensor, mq: Tensor, ck: Tensor, cv: Tensor, w: Tensor, b: Tensor): [number, number, number, number] {
  const op = 'memoryWrite';
  const all = `M ${shapeStr(M.shape)}, mq ${shapeStr(mq.shape)}, ck ${shapeStr(ck.shape)}, cv ${shapeStr(cv.shape)}`;
  if (M.rank !== 3) throw new MemgptError(`${op}: M must be [B,S,D], got ${shapeStr(M.shape)}`);
  const [B, S, D] = M.shape;
  if (mq.shape.join() !== M.shape.join()) throw new MemgptError(`${op}: mq ${shapeStr(mq.shape)} must have M's shape ${shapeStr(M.shape)}`);
  if (ck.rank !== 3) throw new MemgptError(`${op}: ck must be [B,T,D], got ${shapeStr(ck.shape)}`);
  const T = ck.shape[1];
  if (ck.shape[0] !== B || ck.shape[2] !== D) throw new MemgptError(`${op}: ck ${shapeStr(ck.shape)} must be [${B},T,${D}] (batch and width of M) (${all})`);
  if (cv.shape.join() !== ck.shape.join()) throw new MemgptError(`${op}: cv ${shapeStr(cv.shape)} must have ck's shape ${shapeStr(ck.shape)} (${all})`);
  if (w.rank !== 2 || w.shape[0] !== D || w.shape[1] !== 2 * D) {
    throw new MemgptError(`${op}: updateWeight ${shapeStr(w.shape)} must be [D, 2D] = [${D},${2 * D}] for M ${shapeStr(M.shape)}`);
  }
  if (b.rank !== 1 || b.shape[0] !== D) throw new MemgptError(`${op}: updateBias ${shapeStr(b.shape)} must be [${D}] for M ${shapeStr(M.shape)}`);
  if (B === 0 || S === 0 || T === 0 || D === 0) throw new MemgptError(`${op}: sizes must be at least 1 (${all})`);
  return [B, S, T, D];
}

/**
 * The memory write: α = softmax_t(mq·ckᵀ/√D), Z = α·cv, U = σ([M | Z]·updateWeightᵀ + updateBias),
 * returns (1 − U)⊙M + U⊙Z [B,S,D], differentiable in all six inputs.
 */
export function memoryWrite(
  M: Tensor, mq: Tensor, ck: Tensor, cv: Tensor, updateWeight: Tensor, updateBias: Tensor, options?: MemoryWriteOptions & { stats?: false },
): Tensor;
export function memoryWrite(
  M: Tensor, mq: Tensor, ck: Tensor, cv: Tensor, updateWeight: Tensor, updateBias: Tensor, options: MemoryWriteOptions & { stats: true },
): MemoryWriteResult;
export function memoryWrite(
  M: Tensor, mq: Tensor, ck: Tensor, cv: Tensor, updateWeight: Tensor, updateBias: Tensor, options?: MemoryWriteOptions,
): Tensor | MemoryWriteResult;
export function memoryWrite(
  M: Tensor, mq: Tensor, ck: Tensor, cv: Tensor, updateWeight: Tensor, updateBias: Tensor, options: MemoryWriteOptions = {},
): Tensor | MemoryWriteResult {
  const pb = options.pointerBias, wv = options.valueWeight;
  const named: Record<string, Tensor> = { M, mq, ck, cv, updateWeight, updateBias };
  if (pb) named.pointerBias = pb;
  if (wv) named.valueWeight = wv;
  checkTensors('memoryWrite', named, ['float32']);
  const [B, S, T, D] = checkShapes(M, mq, ck, cv, updateWeight, updateBias);
  if (pb && (pb.rank !== 2 || pb.shape[0] !== S || pb.shape[1] < T)) {
    throw new MemgptError(`memoryWrite: pointerBias ${shapeStr(pb.shape)} must be [S, ≥ T] = [${S}, ≥ ${T}] for M ${shapeStr(M.shape)} and ck ${shapeStr(ck.shape)}`);
  }
  const biasCols = pb ? pb.shape[1] : 0;
  if (wv && (wv.rank !== 2 || wv.shape[0] !== D || wv.shape[1] !== D)) throw new MemgptError(`memoryWrite: valueWeight ${shapeStr(wv.shape)} must be [D, D] = [${D},${D}]`);
  const k = kernels('memoryWrite', M);
  const like = { dtype: M.dtype, device: M.device };
  const out = empty([B, S, D], like);
  // Kept for backward: α [B,S,T] (S·T a batch item, small beside the GEMM operands); X = [M | Z] [B,S,2D], the
  // gate GEMM's input, whose gradient dWupd = dGᵀ·X needs it whole (M is not saved separately: it is X's left
  // half); U [B,S,D], the gate, needed by every path of the blend's gradient. mq, ck, cv and updateWeight are
  // the inputs' own storage. Recomputing Z would cost a GEMM; P and the gate's pre-activation are not kept.
  const alpha = empty([B, S, T], like), x = empty([B, S, 2 * D], like), u = empty([B, S, D], like);
  const zp = wv ? empty([B, S, D], like) : null; // α·cv before the value weight, for its gradient
  callNative('memoryWrite', named, () =>
    k.memwriteForward(
      B, S, T, D, M.handle, M.offset, mq.handle, mq.offset, ck.handle, ck.offset, cv.handle, cv.offset,
      !!wv, wv ? wv.handle : null, wv ? wv.offset : 0,
      updateWeight.handle, updateWeight.offset, updateBias.handle, updateBias.offset,
      biasCols, pb ? pb.handle : null, pb ? pb.offset : 0,
      out.handle, out.offset, alpha.handle, alpha.offset, x.handle, x.offset, u.handle, u.offset,
      zp ? zp.handle : null, zp ? zp.offset : 0,
    ),
  );
  let stats: [number, number] | undefined;
  if (options.stats) stats = callNative('memoryWrite', named, () => k.memwriteStats(B, S, T, D, alpha.handle, alpha.offset, u.handle, u.offset));
  // Inputs: the six, then the pointer bias and the value weight when given (their gradients in that order).
  const inputs = [M, mq, ck, cv, updateWeight, updateBias, ...(pb ? [pb] : []), ...(wv ? [wv] : [])];
  record('memoryWrite', inputs, [out], [mq, ck, cv, updateWeight, alpha, x, u, ...(wv && zp ? [wv, zp] : [])], ([g], saved) => {
    const [sq, sk, sv, sw, sa, sx, su, swv, szp] = saved;
    const dm = empty([B, S, D], like), dmq = empty([B, S, D], like);
    const dck = empty([B, T, D], like), dcv = empty([B, T, D], like);
    const dw = empty([D, 2 * D], like), db = empty([D], like);
    const dpb = pb ? empty([S, biasCols], like) : null;
    const dwv = wv ? empty([D, D], like) : null;
    const workspace = empty([B * S * (4 * D + T)], like);
    callNative('memoryWrite backward', { dout: g, alpha: sa }, () =>
      k.memwriteBackward(
        B, S, T, D, g.handle, g.offset, sq.handle, sq.offset, sk.handle, sk.offset, sv.handle, sv.offset,
        !!swv, swv ? swv.handle : null, swv ? swv.offset : 0,
        sw.handle, sw.offset, sa.handle, sa.offset, sx.handle, sx.offset, su.handle, su.offset,
        szp ? szp.handle : null, szp ? szp.offset : 0,
        dm.handle, dm.offset, dmq.handle, dmq.offset, dck.handle, dck.offset, dcv.handle, dcv.offset,
        dwv ? dwv.handle : null, dwv ? dwv.offset : 0,
        dw.handle, dw.offset, db.handle, db.offset, biasCols, dpb ? dpb.handle : null, dpb ? dpb.offset : 0,
        workspace.handle, workspace.offset,
      ),
    );
    return [dm, dmq, dck, dcv, dw, db, ...(dpb ? [dpb] : []), ...(dwv ? [dwv] : [])];
  });
  alpha.dispose();
  x.dispose();
  u.dispose();
  zp?.dispose();
  return stats ? { M: out, meanGate: stats[0], pointerEntropy: stats[1] } : out;
}

/** Options of memoryWriteFromHidden (see MemoryWriteOptions). */
export interface MemoryWriteFromHiddenOptions {
  stats?: boolean;
  pointerBias?: Tensor;
}

/**
 * The whole memory write of SPEC §3 from a layer's output h [B,T,D], as one op: c = LN(h; lnWeight, lnBias),
 * mq = M·pointerQuery (pointerQuery = Wpqᵀ·Wpk [D,D], the slot queries in token space), then
 * memoryWrite(M, mq, c, c, updateWeight, updateBias, { valueWeight, pointerBias }). The same function as
 * those three ops, in one native call and one autograd node (the layer norm and the GEMM run inside it on either
 * backend), which is what a write costs the training step at small shapes. Differentiable in every tensor input.
 */
export function memoryWriteFromHidden(
  M: Tensor, h: Tensor, lnWeight: Tensor, lnBias: Tensor, pointerQuery: Tensor, valueWeight: Tensor, updateWeight: Tensor, updateBias: Tensor,
  options: MemoryWriteFromHiddenOptions = {},
): MemoryWriteResult {
  const pb = options.pointerBias;
  const named: Record<string, Tensor> = { M, h, lnWeight, lnBias, pointerQuery, valueWeight, updateWeight, updateBias };
  if (pb) named.pointerBias = pb;
  checkTensors('memoryWriteFromHidden', named, ['float32']);
  const [B, S, T, D] = checkShapes(M, M, h, h, updateWeight, updateBias);
  const square = (t: Tensor, name: string) => {
    if (t.rank !== 2 || t.shape[0] !== D || t.shape[1] !== D) throw new MemgptError(`memoryWriteFromHidden: ${name} ${shapeStr(t.shape)} must be [D, D] = [${D},${D}]`);
  };
  square(pointerQuery, 'pointerQuery');
  square(valueWeight, 'valueWeight');
  for (const [t, name] of [[lnWeight, 'lnWeight'], [lnBias, 'lnBias']] as const) {
    if (t.rank !== 1 || t.shape[0] !== D) throw new MemgptError(`memoryWriteFromHidden: ${name} ${shapeStr(t.shape)} must be [${D}]`);
  }
  if (pb && (pb.rank !== 2 || pb.shape[0] !== S || pb.shape[1] < T)) {
    throw new MemgptError(`memoryWriteFromHidden: pointerBias ${shapeStr(pb.shape)} must be [S, ≥ T] = [${S}, ≥ ${T}] for M ${shapeStr(M.shape)} and h ${shapeStr(h.shape)}`);
  }
  const biasCols = pb ? pb.shape[1] : 0;
  const k = M.storage.backend;
  if (!k.memwriteHiddenForward || !k.memwriteHiddenBackward || !k.memwriteHiddenWorkspace || !k.memwriteStats) {
    throw new MemgptError(`memoryWriteFromHidden: not implemented on ${M.device} yet`);
  }
  const like = { dtype: M.dtype, device: M.device };
  const out = empty([B, S, D], like);
  // Saved for the backward: c (the pointer's keys and values), the layer norm's row statistics, mq, and what
  // memoryWrite saves (α, [M | Z], U, α·c).
  const c = empty([B, T, D], like), mean = empty([B * T], like), rstd = empty([B * T], like), mq = empty([B, S, D], like);
  const alpha = empty([B, S, T], like), x = empty([B, S, 2 * D], like), u = empty([B, S, D], like), zp = empty([B, S, D], like);
  const [hb, ho] = handleOf(h);
  callNative('memoryWriteFromHidden', named, () =>
    k.memwriteHiddenForward!(
      B, S, T, D, M.handle, M.offset, hb, ho, lnWeight.handle, lnWeight.offset, lnBias.handle, lnBias.offset,
      pointerQuery.handle, pointerQuery.offset, valueWeight.handle, valueWeight.offset,
      updateWeight.handle, updateWeight.offset, updateBias.handle, updateBias.offset,
      biasCols, ...handleOf(pb),
      out.handle, out.offset, c.handle, c.offset, mean.handle, mean.offset, rstd.handle, rstd.offset, mq.handle, mq.offset,
      alpha.handle, alpha.offset, x.handle, x.offset, u.handle, u.offset, zp.handle, zp.offset,
    ),
  );
  const stats = options.stats ? callNative('memoryWriteFromHidden', named, () => k.memwriteStats!(B, S, T, D, alpha.handle, alpha.offset, u.handle, u.offset)) : null;
  const inputs = [M, h, lnWeight, lnBias, pointerQuery, valueWeight, updateWeight, updateBias, ...(pb ? [pb] : [])];
  const saved = [M, h, lnWeight, pointerQuery, valueWeight, updateWeight, c, mean, rstd, mq, alpha, x, u, zp];
  record('memoryWriteFromHidden', inputs, [out], saved, ([g], s) => {
    const [sM, sh, sLn, sPq, sWv, sW, sc, sMean, sRstd, sMq, sAlpha, sX, sU, sZp] = s;
    const dM = empty([B, S, D], like), dh = empty([B, T, D], like), dLnW = empty([D], like), dLnB = empty([D], like);
    const dPq = empty([D, D], like), dWv = empty([D, D], like), dW = empty([D, 2 * D], like), dB = empty([D], like);
    const dPb = pb ? empty([S, biasCols], like) : null;
    const workspace = empty([k.memwriteHiddenWorkspace!(B, S, T, D)], like);
    const at = (t: Tensor) => [t.handle, t.offset] as const;
    callNative('memoryWriteFromHidden backward', { dout: g, M: sM }, () =>
      k.memwriteHiddenBackward!(
        B, S, T, D, ...at(g), ...at(sM), ...at(sh), ...at(sLn), ...at(sPq), ...at(sWv), ...at(sW), ...at(sc), ...at(sMean), ...at(sRstd),
        ...at(sMq), ...at(sAlpha), ...at(sX), ...at(sU), ...at(sZp),
        ...at(dM), ...at(dh), ...at(dLnW), ...at(dLnB), ...at(dPq), ...at(dWv), ...at(dW), ...at(dB),
        biasCols, ...handleOf(dPb), ...at(workspace),
      ),
    );
    workspace.dispose();
    return [dM, dh, dLnW, dLnB, dPq, dWv, dW, dB, ...(dPb ? [dPb] : [])];
  });
  for (const t of [c, mean, rstd, mq, alpha, x, u, zp]) t.dispose();
  return { M: out, meanGate: stats ? stats[0] : NaN, pointerEntropy: stats ? stats[1] : NaN };
}
