// Batched matrix product with either operand transposed. Batch dims must match,
// or one operand is a plain matrix shared by the whole batch (weights); its
// gradient is then summed over the batch (one GEMM when the batch folds into rows).
import { record } from '../core/autograd.js';
import { dtypeCode } from '../core/dtype.js';
import { MemgptError, shapeStr } from '../core/errors.js';
import { empty, numel, type Tensor } from '../core/tensor.js';
import { sum } from './reduce.js';
import { reshape } from './shape.js';
import { callNative, checkTensors, sameDtype } from './util.js';

export interface MatmulOptions {
  /** Use aᵀ (a's last two axes swapped). */
  transA?: boolean;
  /** Use bᵀ. */
  transB?: boolean;
}

interface Plan {
  batchShape: number[];
  batch: number;
  m: number;
  n: number;
  k: number;
  strideA: number;
  strideB: number;
}

function plan(a: Tensor, b: Tensor, transA: boolean, transB: boolean): Plan {
  const what = () => `${shapeStr(a.shape)}${transA ? 'ᵀ' : ''} @ ${shapeStr(b.shape)}${transB ? 'ᵀ' : ''}`;
  if (a.rank < 2 || b.rank < 2) throw new MemgptError(`matmul: both operands need at least 2 dims (${what()})`);
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const m = transA ? ac : ar, k = transA ? ar : ac;
  const kb = transB ? bc : br, n = transB ? br : bc;
  if (k !== kb) throw new MemgptError(`matmul: inner dimensions differ, ${k} vs ${kb} (${what()})`);
  const batchA = a.shape.slice(0, -2), batchB = b.shape.slice(0, -2);
  let batchShape: number[];
  if (batchA.join() === batchB.join()) batchShape = batchA;
  else if (batchB.length === 0) batchShape = batchA;
  else if (batchA.length === 0) batchShape = batchB;
  else throw new MemgptError(`matmul: batch dims ${shapeStr(batchA)} and ${shapeStr(batchB)} differ (${what()})`);
  return {
    batchShape,
    batch: numel(batchShape),
    m, n, k,
    strideA: batchA.length ? m * k : 0,
    strideB: batchB.length ? k * n : 0,
  };
}

/** op(a) · op(b) into a new tensor. */
function gemm(a: Tensor, b: Tensor, transA: boolean, transB: boolean): Tensor {
  const p = plan(a, b, transA, transB);
  const c = empty([...p.batchShape, p.m, p.n], { dtype: a.dtype, device: a.device });
  // A batch against one shared matrix (weights) folds into the rows when op(A) is A itself: one GEMM of
  // [batch·m, k] instead of `batch` small ones that would each repack the same matrix. The same sums, in the same order.
  const fold = p.batch > 1 && p.strideB === 0 && p.strideA > 0 && !transA;
  const [batch, m, strideA] = fold ? [1, p.batch * p.m, 0] : [p.batch, p.m, p.strideA];
  if (c.size > 0) {
    callNative('matmul', { a, b }, (kern) =>
      kern.matmul(
        dtypeCode[a.dtype], dtypeCode[c.dtype], batch, m, p.n, p.k, transA, transB, strideA, p.strideB, m * p.n, 0,
        a.handle, a.offset, b.handle, b.offset, c.handle, c.offset,
      ),
    );
  }
  return c;
}

/** Gradient of an operand shared across the batch: the per-item products, summed over the batch dims. */
function sharedGrad(x: Tensor, y: Tensor, transX: boolean, transY: boolean): Tensor {
  const perItem = gemm(x, y, transX, transY);
  const total = sum(perItem, Array.from({ length: perItem.rank - 2 }, (_, i) => i));
  perItem.dispose();
  return total;
}

export function matmul(a: Tensor, b: Tensor, options: MatmulOptions = {}): Tensor {
  const transA = options.transA ?? false, transB = options.transB ?? false;
  checkTensors('matmul', { a, b }, ['float32', 'bfloat16']);
  sameDtype('matmul', a, b);
  const p = plan(a, b, transA, transB);
  const out = gemm(a, b, transA, transB);
  const aShared = a.rank === 2 && p.batchShape.length > 0;
  const bShared = b.rank === 2 && p.batchShape.length > 0;
  record('matmul', [a, b], [out], [a, b], ([g], [sa, sb], needs) => {
    let da: Tensor | null = null, db: Tensor | null = null;
    if (needs[0]) {
      // d op(A) = G · op(B)ᵀ; when A is stored transposed, dA = op(B) · Gᵀ.
      if (aShared) da = transA ? sharedGrad(sb, g, transB, true) : sharedGrad(g, sb, false, !transB);
      else da = transA ? gemm(sb, g, transB, true) : gemm(g, sb, false, !transB);
    }
    if (needs[1]) {
      // d op(B) = op(A)ᵀ · G; when B is stored transposed, dB = Gᵀ · op(A).
      if (bShared && !transA) {
        // The batch folds into rows: A as [batch·m, k], G as [batch·m, n], one GEMM.
        const aFlat = reshape(sa, [p.batch * p.m, p.k]);
        const gFlat = reshape(g, [p.batch * p.m, p.n]);
        db = transB ? gemm(gFlat, aFlat, true, false) : gemm(aFlat, gFlat, true, false);
      } else if (bShared) {
        db = transB ? sharedGrad(g, sa, true, true) : sharedGrad(sa, g, false, false);
      } else {
        db = transB ? gemm(g, sa, true, transA) : gemm(sa, g, !transA, false);
      }
    }
    return [da, db];
  });
  return out;
}
