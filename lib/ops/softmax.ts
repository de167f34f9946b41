// Softmax over the last axis, and its backward dx = y * (dy - sum(dy * y)).
import { record } from '../core/autograd.js';
import { dtypeCode } from '../core/dtype.js';
import { MemgptError } from '../core/errors.js';
import { empty, type Tensor } from '../core/tensor.js';
import { callNative, checkTensors, normalizeAxis } from './util.js';

export function softmax(x: Tensor, axis = -1): Tensor {
  checkTensors('softmax', { x }, ['float32', 'bfloat16']);
  if (x.rank === 0) throw new MemgptError('softmax: needs at least one axis');
  if (normalizeAxis('softmax', axis, x.rank) !== x.rank - 1) throw new MemgptError('softmax: only the last axis is supported');
  const cols = x.shape[x.rank - 1];
  const rows = cols === 0 ? 0 : x.size / cols;
  const y = empty(x.shape, { dtype: x.dtype, device: x.device });
  if (y.size > 0) callNative('softmax', { x }, (k) => k.softmaxForward(dtypeCode[x.dtype], rows, cols, x.handle, x.offset, y.handle, y.offset));
  record('softmax', [x], [y], [y], ([g], [ys]) => {
    const dx = empty(x.shape, { dtype: x.dtype, device: x.device });
    if (dx.size > 0) {
      callNative('softmaxBackward', { y: ys, dy: g }, (k) =>
        k.softmaxBackward(dtypeCode[x.dtype], rows, cols, ys.handle, ys.offset, g.handle, g.offset, dx.handle, dx.offset),
      );
    }
    return [dx];
  });
  return y;
}
