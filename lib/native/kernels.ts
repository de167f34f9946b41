// One typed table of the native kernels of every op family, mirroring native/common/<family>.inc: what the ops
// call on a tensor's backend. A backend may lack a family (the ops then say it is not implemented there), so the
// members are optional here and each op checks for its own before calling.

/** An opaque storage handle made by a backend's alloc (a type-tagged external holding a block id). */
export type StorageHandle = object;
type Handle = StorageHandle | null;
type H = StorageHandle;
/** [handle0, offset0, handle1, offset1, ...]: how a list of tensors crosses into native code. */
export type TensorList = (StorageHandle | number)[];

// native/common/attention.inc
export interface AttentionKernels {
  attentionForward?(
    dtype: number, B: number, T: number, H: number, d: number, S: number, rope: boolean, memMode: number,
    ...tensors: (StorageHandle | number | null)[]
  ): void;
  attentionBackward?(
    dtype: number, B: number, T: number, H: number, d: number, S: number, rope: boolean, memMode: number,
    ...tensors: (StorageHandle | number | null)[]
  ): void;
  /**
   * Tensors: qkv, positions (int32), keys (float32, blocked), values, memKeys (float32, blocked), memValues, gateLogits,
   * out, each as (handle, offset); memKeys, memValues and gateLogits (null, 0) without memory.
   */
  attentionDecode?(
    dtype: number, B: number, T: number, H: number, d: number, S: number, rope: boolean, memMode: number,
    ...tensors: (StorageHandle | number | null)[]
  ): void;
  /** Tensors: memKV, memKeys (float32, blocked), memValues, each as (handle, offset). */
  attentionDecodeMemory?(
    dtype: number, B: number, S: number, H: number, d: number, rope: boolean, memMode: number,
    ...tensors: (StorageHandle | number | null)[]
  ): void;
}

// native/common/classifier.inc
export interface ClassifierKernels {
  tokenNLLForward(
    rows: number, vocab: number, dim: number, rowChunk: number, vocabChunk: number,
    hf: StorageHandle, hfOff: number, emb: StorageHandle, embOff: number, targets: StorageHandle, targetsOff: number,
    nll: StorageHandle, nllOff: number, lse: StorageHandle, lseOff: number,
  ): void;
  tokenNLLBackward(
    rows: number, vocab: number, dim: number, rowChunk: number, vocabChunk: number,
    hf: StorageHandle, hfOff: number, emb: StorageHandle, embOff: number, targets: StorageHandle, targetsOff: number,
    lse: StorageHandle, lseOff: number, coef: StorageHandle, coefOff: number,
    dhf: StorageHandle, dhfOff: number, demb: StorageHandle, dembOff: number,
  ): void;
  copyMixForward(
    batch: number, len: number, dim: number, vocab: number,
    cq: StorageHandle, cqOff: number, ck: StorageHandle, ckOff: number, gen: StorageHandle, genOff: number,
    inputs: StorageHandle, inputsOff: number, targets: StorageHandle, targetsOff: number,
    nll: StorageHandle, nllOff: number, stats: StorageHandle, statsOff: number,
  ): void;
  copyMixBackward(
    batch: number, len: number, dim: number,
    cq: StorageHandle, cqOff: number, ck: StorageHandle, ckOff: number, gen: StorageHandle, genOff: number,
    inputs: StorageHandle, inputsOff: number, targets: StorageHandle, targetsOff: number,
    stats: StorageHandle, statsOff: number, dnll: StorageHandle, dnllOff: number, coef: StorageHandle, coefOff: number,
    dcq: StorageHandle, dcqOff: number, dck: StorageHandle, dckOff: number, dgen: StorageHandle, dgenOff: number,
  ): void;
  copyMixProbs(
    batch: number, len: number, dim: number, vocab: number, hasCopy: boolean,
    logits: H, logitsOff: number, cq: Handle, cqOff: number, ck: Handle, ckOff: number, gen: Handle, genOff: number,
    tokens: Handle, tokensOff: number, lengths: Handle, lengthsOff: number, probs: H, probsOff: number,
  ): void;
}

// native/common/linear.inc
export interface LinearKernels {
  linearForward?(
    dtype: number, m: number, n: number, k: number, activation: number, hasBias: boolean, wantZ: boolean,
    x: Handle, xOff: number, w: Handle, wOff: number, bias: Handle, biasOff: number, z: Handle, zOff: number, y: Handle, yOff: number,
  ): void;
  linearBackward?(
    dtype: number, m: number, n: number, k: number, activation: number, wantDx: boolean, wantDw: boolean, wantDb: boolean,
    x: Handle, xOff: number, w: Handle, wOff: number, z: Handle, zOff: number, dy: Handle, dyOff: number, dz: Handle, dzOff: number,
    dx: Handle, dxOff: number, dw: Handle, dwOff: number, db: Handle, dbOff: number,
  ): void;
}

// native/common/memwrite.inc
export interface MemwriteKernels {
  memwriteForward?(
    B: number, S: number, T: number, D: number,
    m: StorageHandle, mOff: number, mq: StorageHandle, mqOff: number, ck: StorageHandle, ckOff: number,
    cv: StorageHandle, cvOff: number, hasValueWeight: boolean, wv: StorageHandle | null, wvOff: number,
    w: StorageHandle, wOff: number, bias: StorageHandle, biasOff: number,
    biasCols: number, ptrBias: StorageHandle | null, ptrBiasOff: number,
    out: StorageHandle, outOff: number, alpha: StorageHandle, alphaOff: number, x: StorageHandle, xOff: number,
    u: StorageHandle, uOff: number, zp: StorageHandle | null, zpOff: number,
  ): void;
  memwriteBackward?(
    B: number, S: number, T: number, D: number,
    dout: StorageHandle, doutOff: number, mq: StorageHandle, mqOff: number, ck: StorageHandle, ckOff: number,
    cv: StorageHandle, cvOff: number, hasValueWeight: boolean, wv: StorageHandle | null, wvOff: number,
    w: StorageHandle, wOff: number, alpha: StorageHandle, alphaOff: number,
    x: StorageHandle, xOff: number, u: StorageHandle, uOff: number, zp: StorageHandle | null, zpOff: number,
    dm: StorageHandle, dmOff: number, dmq: StorageHandle, dmqOff: number, dck: StorageHandle, dckOff: number,
    dcv: StorageHandle, dcvOff: number, dwv: StorageHandle | null, dwvOff: number,
    dw: StorageHandle, dwOff: number, dbias: StorageHandle, dbiasOff: number,
    biasCols: number, dPtrBias: StorageHandle | null, dPtrBiasOff: number,
    workspace: StorageHandle, workspaceOff: number,
  ): void;
  memwriteStats?(B: number, S: number, T: number, D: number, alpha: StorageHandle, alphaOff: number, u: StorageHandle, uOff: number): [number, number];
  /** The whole write from the layer's output (native/binding/ops_memwrite.cc composes it from layer norm, GEMM, memwrite). */
  memwriteHiddenForward?(
    B: number, S: number, T: number, D: number,
    m: StorageHandle, mOff: number, h: StorageHandle, hOff: number, lnW: StorageHandle, lnWOff: number, lnB: StorageHandle, lnBOff: number,
    pq: StorageHandle, pqOff: number, wv: StorageHandle, wvOff: number, w: StorageHandle, wOff: number, bias: StorageHandle, biasOff: number,
    biasCols: number, ptrBias: StorageHandle | null, ptrBiasOff: number,
    out: StorageHandle, outOff: number, c: StorageHandle, cOff: number, mean: StorageHandle, meanOff: number, rstd: StorageHandle, rstdOff: number,
    mq: StorageHandle, mqOff: number, alpha: StorageHandle, alphaOff: number, x: StorageHandle, xOff: number, u: StorageHandle, uOff: number,
    zp: StorageHandle, zpOff: number,
  ): void;
  memwriteHiddenBackward?(
    B: number, S: number, T: number, D: number,
    dout: StorageHandle, doutOff: number, m: StorageHandle, mOff: number, h: StorageHandle, hOff: number, lnW: StorageHandle, lnWOff: number,
    pq: StorageHandle, pqOff: number, wv: StorageHandle, wvOff: number, w: StorageHandle, wOff: number, c: StorageHandle, cOff: number,
    mean: StorageHandle, meanOff: number, rstd: StorageHandle, rstdOff: number, mq: StorageHandle, mqOff: number,
    alpha: StorageHandle, alphaOff: number, x: StorageHandle, xOff: number, u: StorageHandle, uOff: number, zp: StorageHandle, zpOff: number,
    dm: StorageHandle, dmOff: number, dh: StorageHandle, dhOff: number, dLnW: StorageHandle, dLnWOff: number, dLnB: StorageHandle, dLnBOff: number,
    dpq: StorageHandle, dpqOff: number, dwv: StorageHandle, dwvOff: number, dw: StorageHandle, dwOff: number, dbias: StorageHandle, dbiasOff: number,
    biasCols: number, dPtrBias: StorageHandle | null, dPtrBiasOff: number,
    workspace: StorageHandle, workspaceOff: number,
  ): void;
  memwriteHiddenWorkspace?(B: number, S: number, T: number, D: number): number;
}

// native/common/norm.inc
/** @internal The native functions of this family (native/binding/ops_norm.cc); offsets in elements. */
export interface NormKernels {
  layerNormForward(
    dtype: number, rows: number, d: number, eps: number,
    x: H, xOff: number, w: H, wOff: number, b: H, bOff: number, y: H, yOff: number, mean: H, meanOff: number, rstd: H, rstdOff: number,
  ): void;
  layerNormBackward(
    dtype: number, rows: number, d: number,
    x: H, xOff: number, w: H, wOff: number, mean: H, meanOff: number, rstd: H, rstdOff: number,
    dy: H, dyOff: number, dx: H, dxOff: number, dw: H, dwOff: number, db: H, dbOff: number,
  ): void;
  embeddingForward(dtype: number, n: number, vocab: number, d: number, ids: H, idsOff: number, table: H, tableOff: number, out: H, outOff: number): void;
  embeddingBackward(dtype: number, n: number, vocab: number, d: number, ids: H, idsOff: number, dout: H, doutOff: number, dtable: H, dtableOff: number): void;
  rope(
    dtype: number, batch: number, t: number, dModel: number, heads: number, positionOffset: number, inverse: boolean,
    x: H, xOff: number, y: H, yOff: number,
  ): void;
  sinusoidalPositions(dtype: number, t: number, d: number, positionOffset: number, out: H, outOff: number): void;
}

// native/common/optim.inc
export interface OptimKernels {
  adamwStep?(
    sizes: number[], decay: number[], stepSize: number[], bc2Sqrt: number[], beta1: number, beta2: number, eps: number,
    params: TensorList, grads: TensorList, m: TensorList, v: TensorList,
  ): void;
  sgdStep?(sizes: number[], lr: number, params: TensorList, grads: TensorList): void;
  sumSquares?(sizes: number[], tensors: TensorList): number;
  scaleTensors?(sizes: number[], factor: number, tensors: TensorList): void;
}

/** Every family's kernels, each optional: a backend's table. */
export interface FamilyKernels extends Partial<AttentionKernels>, Partial<ClassifierKernels>, Partial<LinearKernels>, Partial<MemwriteKernels>, Partial<NormKernels>, Partial<OptimKernels> {}
