// Elementwise arithmetic with NumPy broadcasting: add, sub, mul, div, and
// scalar forms (scale, addScalar, neg). Gradients of broadcast inputs are
// summed back to the input's shape.
import { record, setGradientSum } from '../core/autograd.js';
import { dtypeCode } from '../core/dtype.js';
import { MemgptError, shapeStr } from '../core/errors.js';
import { empty, type Tensor } from '../core/tensor.js';
import { sumTo } from './reduce.js';
import { broadcastShapes, broadcastStrides, callNative, checkTensors, compactDims, contiguousStrides, sameDtype } from './util.js';

const FLOAT = ['float32', 'bfloat16'] as const;
const enum Code {
  Add = 0,
  Sub = 1,
  Mul = 2,
  Div = 3,
}

function binaryInto(op: string, code: Code, a: Tensor, b: Tensor, out: Tensor): void {
  const { dims, strides } = compactDims([...out.shape], broadcastStrides(a.shape, out.shape), broadcastStrides(b.shape, out.shape));
  callNative(op, { a, b }, (k) =>
    k.binary(code, dtypeCode[out.dtype], dims, strides[0], strides[1], a.handle, a.offset, b.handle, b.offset, out.handle, out.offset),
  );
}

function binary(op: string, code: Code, a: Tensor, b: Tensor): Tensor {
  checkTensors(op, { a, b }, FLOAT);
  sameDtype(op, a, b);
  const out = empty(broadcastShapes(op, a.shape, b.shape), { dtype: a.dtype, device: a.device });
  binaryInto(op, code, a, b, out);
  return out;
}

export function add(a: Tensor, b: Tensor): Tensor {
  const out = binary('add', Code.Add, a, b);
  record('add', [a, b], [out], [], ([g], _, needs) => [needs[0] ? sumTo(g, a.shape) : null, needs[1] ? sumTo(g, b.shape) : null]);
  return out;
}

export function sub(a: Tensor, b: Tensor): Tensor {
  const out = binary('sub', Code.Sub, a, b);
  record('sub', [a, b], [out], [], ([g], _, needs) => [needs[0] ? sumTo(g, a.shape) : null, needs[1] ? sumTo(neg(g), b.shape) : null]);
  return out;
}

export function mul(a: Tensor, b: Tensor): Tensor {
  const out = binary('mul', Code.Mul, a, b);
  record('mul', [a, b], [out], [a, b], ([g], [sa, sb], needs) => [
    needs[0] ? sumTo(mul(g, sb), a.shape) : null,
    needs[1] ? sumTo(mul(g, sa), b.shape) : null,
  ]);
  return out;
}

export function div(a: Tensor, b: Tensor): Tensor {
  const out = binary('div', Code.Div, a, b);
  record('div', [a, b], [out], [a, b], ([g], [sa, sb], needs) => [
    needs[0] ? sumTo(div(g, sb), a.shape) : null,
    // d(a/b)/db = -a / b^2
    needs[1] ? sumTo(neg(div(mul(g, sa), mul(sb, sb))), b.shape) : null,
  ]);
  return out;
}

/** alpha * x + beta, elementwise. */
function affine(op: string, x: Tensor, alpha: number, beta: number): Tensor {
  checkTensors(op, { x }, FLOAT);
  if (!Number.isFinite(alpha) || !Number.isFinite(beta)) throw new MemgptError(`${op}: scalar must be finite (got ${alpha}, ${beta})`);
  const out = empty(x.shape, { dtype: x.dtype, device: x.device });
  callNative(op, { x }, (k) => k.affine(dtypeCode[x.dtype], x.size, alpha, beta, x.handle, x.offset, out.handle, out.offset));
  record(op, [x], [out], [], ([g]) => [alpha === 1 ? g : scale(g, alpha)]);
  return out;
}

export function scale(x: Tensor, alpha: number): Tensor {
  return affine('scale', x, alpha, 0);
}

export function addScalar(x: Tensor, value: number): Tensor {
  return affine('addScalar', x, 1, value);
}

export function neg(x: Tensor): Tensor {
  return affine('neg', x, -1, 0);
}

/**
 * target += g in place (g broadcast to target's shape). Not recorded by autograd:
 * for gradient accumulation and optimizers, on tensors no graph depends on.
 */
export function addInPlace(target: Tensor, g: Tensor): void {
  checkTensors('addInPlace', { target, g }, FLOAT);
  sameDtype('addInPlace', target, g);
  const shape = broadcastShapes('addInPlace', target.shape, g.shape);
  if (shape.join() !== target.shape.join()) {
    throw new MemgptError(`addInPlace: ${shapeStr(g.shape)} does not broadcast to the target's shape ${shapeStr(target.shape)}`);
  }
  if (target.requiresGrad && !target.isLeaf) throw new MemgptError('addInPlace: the target is part of an autograd graph');
  const { dims, strides } = compactDims([...target.shape], contiguousStrides(target.shape), broadcastStrides(g.shape, target.shape));
  callNative('addInPlace', { target, g }, (k) =>
    k.binary(Code.Add, dtypeCode[target.dtype], dims, strides[0], strides[1], target.handle, target.offset, g.handle, g.offset, target.handle, target.offset),
  );
}

// The tape sums gradients with these (core/autograd.ts takes them here rather than importing ops/).
setGradientSum({ add, addInPlace });
