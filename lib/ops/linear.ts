// Ops of the family "linear": linear layers y = act(x·Wᵀ + b) (PyTorch's [out, in] weights), the bias
// add and GELU fused into the GEMM's epilogue; the pre-activation is kept for backward only when needed.
import { isGradEnabled, record } from '../core/autograd.js';
import { dtypeCode } from '../core/dtype.js';
import { MemgptError, shapeStr } from '../core/errors.js';
import { empty, numel, type Tensor } from '../core/tensor.js';
import type { LinearKernels } from '../native/kernels.js';
import { callNative, checkTensors, handleOf, sameDtype } from './util.js';

/** Activation applied after the bias: none, or GELU in the tanh form (SPEC §1). */
export type LinearActivation = 'none' | 'gelu';

/** Options of linear(). */
export interface LinearOptions {
  activation?: LinearActivation;
}

const FLOAT = ['float32', 'bfloat16'] as const;
const activationCode: Record<LinearActivation, number> = { none: 0, gelu: 1 };

function kernels(op: string, x: Tensor): Required<LinearKernels> {
  const k = x.storage.backend;
  if (!k.linearForward || !k.linearBackward) throw new MemgptError(`${op}: not implemented on ${x.device} yet`);
  return k as Required<LinearKernels>;
}


/** act(x·weightᵀ + bias) over the last axis of x: x [..., K], weight [N, K], bias [N] or null → [..., N]. */
export function linear(x: Tensor, weight: Tensor, bias: Tensor | null, options: LinearOptions = {}): Tensor {
  const op = 'linear';
  const activation = options.activation ?? 'none';
  if (!(activation in activationCode)) throw new MemgptError(`${op}: unknown activation '${String(activation)}' (none or gelu)`);
  checkTensors(op, bias ? { x, weight, bias } : { x, weight }, FLOAT);
  sameDtype(op, x, weight);
  if (bias) sameDtype(op, x, bias);
  if (x.rank < 1) throw new MemgptError(`${op}: x must have at least 1 dim (got a scalar)`);
  if (weight.rank !== 2) throw new MemgptError(`${op}: weight must be [out, in], got ${shapeStr(weight.shape)}`);
  const [n, k] = weight.shape;
  if (x.shape[x.rank - 1] !== k) {
    throw new MemgptError(`${op}: weight ${shapeStr(weight.shape)} expects inputs of width ${k}, but x is ${shapeStr(x.shape)}`);
  }
  if (bias && (bias.rank !== 1 || bias.shape[0] !== n)) {
    throw new MemgptError(`${op}: bias ${shapeStr(bias.shape)} does not match the weight's ${n} outputs (weight ${shapeStr(weight.shape)})`);
  }
  const kern = kernels(op, x);
  const m = numel(x.shape.slice(0, -1));  // the batch dims folded into rows
  const outShape = [...x.shape.slice(0, -1), n];
  const gelu = activation === 'gelu';
  const inputs = bias ? [x, weight, bias] : [x, weight];
  const recording = isGradEnabled() && inputs.some((t) => t.requiresGrad);
  const y = empty(outShape, { dtype: x.dtype, device: x.device });
  // z = x·Wᵀ + b is written (by the same epilogue) only when backward will need it for gelu'.
  const z = gelu && recording ? empty(outShape, { dtype: x.dtype, device: x.device }) : null;
  callNative(op, { x, weight }, () =>
    kern.linearForward(
      dtypeCode[x.dtype], m, n, k, activationCode[activation], bias !== null, z !== null,
      ...handleOf(x), ...handleOf(weight), ...handleOf(bias), ...handleOf(z), ...handleOf(y),
    ),
  );
  const saved = z ? [x, weight, z] : [x, weight];
  record(op, inputs, [y], saved, ([dy], [sx, sw, sz], needs) => {
    const like = { dtype: x.dtype, device: x.device };
    const dz = gelu ? empty([m, n], like) : null;  // dy·gelu'(z), read by both GEMMs; freed right after
    const dx = needs[0] ? empty(x.shape, like) : null;
    const dw = needs[1] ? empty(weight.shape, like) : null;
    const db = bias && needs[2] ? empty([n], like) : null;
    try {
      callNative(`${op} backward`, { x: sx, weight: sw, dy }, () =>
        kern.linearBackward(
          dtypeCode[x.dtype], m, n, k, activationCode[activation], dx !== null, dw !== null, db !== null,
          ...handleOf(sx), ...handleOf(sw), ...handleOf(sz ?? null), ...handleOf(dy), ...handleOf(dz),
          ...handleOf(dx), ...handleOf(dw), ...handleOf(db),
        ),
      );
    } finally {
      dz?.dispose();
    }
    return bias ? [dx, dw, db] : [dx, dw];
  });
  z?.dispose();  // record() holds its own view
  return y;
}
