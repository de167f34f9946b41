// Benchmark cases of the memory write at the small and base presets' shapes: memoryWrite and the model's whole write
// memoryWriteFromHidden (its layer norm, slot queries and value weight too), forward alone and forward + backward.
// Work is counted as GEMM flops: per batch item, the pointer scores and the candidates are S×T×D each and the write
// gate S×2D×D (the whole write adds the slot queries and the value weight, S×D×D each), 2 flops a multiply-add; the
// backward does each GEMM twice more.
import * as mg from '../../../index.js';
import { presetShapes, type BenchCase, type Preset } from '../types.js';

function inputs(B: number, S: number, T: number, D: number): mg.Tensor[] {
  return [
    mg.randn([B, S, D], { seed: 1 }), mg.randn([B, S, D], { seed: 2 }), mg.randn([B, T, D], { seed: 3 }),
    mg.randn([B, T, D], { seed: 4 }), mg.randn([D, 2 * D], { seed: 5, std: 1 / Math.sqrt(2 * D) }), mg.zeros([D]),
  ].map((t) => mg.keep(t));
}

/** M, h, the pointer's layer norm, the slot-query matrix, the value weight, the gate's weight and bias, ptr.pos. */
function hiddenInputs(B: number, S: number, T: number, D: number): mg.Tensor[] {
  const w = (seed: number, shape: number[], fan: number) => mg.randn(shape, { seed, std: 1 / Math.sqrt(fan) });
  return [
    mg.randn([B, S, D], { seed: 1 }), mg.randn([B, T, D], { seed: 2 }), mg.ones([D]), mg.zeros([D]), w(3, [D, D], D), w(4, [D, D], D),
    w(5, [D, 2 * D], 2 * D), mg.zeros([D]), mg.zeros([S, T]),
  ].map((t) => mg.keep(t));
}

const writeFromHidden = (t: mg.Tensor[]) => mg.memoryWriteFromHidden(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], { pointerBias: t[8] }).M;

/** memoryWrite and memoryWriteFromHidden, forward and forward + backward, at the preset's [B, S, T, D]. */
export function cases(preset: Preset): BenchCase[] {
  const { batch: B, S, T, D } = presetShapes[preset];
  const shape = `B ${B}, S ${S}, T ${T}, D ${D}`;
  const forwardFlops = B * (2 * 2 * S * T * D + 2 * S * 2 * D * D);
  const hiddenFlops = forwardFlops + B * 2 * 2 * S * D * D;
  return [
    {
      op: 'memoryWriteFromHidden',
      shape,
      flops: hiddenFlops,
      setup: () => {
        const t = hiddenInputs(B, S, T, D);
        return { run: () => mg.noGrad(() => writeFromHidden(t).dispose()), dispose: () => t.forEach((x) => x.dispose()) };
      },
    },
    {
      op: 'memoryWriteFromHidden forward+backward',
      shape,
      flops: 3 * hiddenFlops,
      setup: () => {
        if (!mg.isGradEnabled()) throw new Error('memoryWriteFromHidden forward+backward: run this case with autograd on (not inside noGrad)');
        const t = hiddenInputs(B, S, T, D).map((x) => mg.parameter(x));
        const seed = mg.keep(mg.ones([B, S, D]));
        return {
          run: () => {
            mg.tidy(() => writeFromHidden(t).backward(seed));
            t.forEach((p) => p.zeroGrad());
          },
          dispose: () => {
            t.forEach((x) => x.dispose());
            seed.dispose();
          },
        };
      },
    },
    {
      op: 'memoryWrite',
      shape,
      flops: forwardFlops,
      setup: () => {
        const t = inputs(B, S, T, D);
        return {
          run: () => mg.noGrad(() => mg.memoryWrite(t[0], t[1], t[2], t[3], t[4], t[5]).dispose()),
          dispose: () => t.forEach((x) => x.dispose()),
        };
      },
    },
    {
      op: 'memoryWrite forward+backward',
      shape,
      flops: 3 * forwardFlops,
      setup: () => {
        if (!mg.isGradEnabled()) throw new Error('memoryWrite forward+backward: run this case with autograd on (not inside noGrad)');
        const t = inputs(B, S, T, D).map((x) => mg.parameter(x));
        const seed = mg.keep(mg.ones([B, S, D]));
        return {
          run: () => {
            mg.tidy(() => mg.memoryWrite(t[0], t[1], t[2], t[3], t[4], t[5]).backward(seed));
            t.forEach((p) => p.zeroGrad());
          },
          dispose: () => {
            t.forEach((x) => x.dispose());
            seed.dispose();
          },
        };
      },
    },
  ];
}
