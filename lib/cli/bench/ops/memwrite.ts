// Benchmark cases of the memory write (memoryWrite) at the small and base presets' shapes: forward alone, and
// forward + backward. Work is counted as its GEMM flops: per batch item, the pointer scores and the candidates
// are S×T×D each and the write gate S×2D×D, 2 flops a multiply-add; the backward does each GEMM twice more.
import * as mg from '../../../index.js';
import { presetShapes, type BenchCase, type Preset } from '../types.js';

function inputs(B: number, S: number, T: number, D: number): mg.Tensor[] {
  return [
    mg.randn([B, S, D], { seed: 1 }), mg.randn([B, S, D], { seed: 2 }), mg.randn([B, T, D], { seed: 3 }),
    mg.randn([B, T, D], { seed: 4 }), mg.randn([D, 2 * D], { seed: 5, std: 1 / Math.sqrt(2 * D) }), mg.zeros([D]),
  ].map((t) => mg.keep(t));
}

/** memoryWrite forward and forward + backward at the preset's [B, S, T, D]. */
export function cases(preset: Preset): BenchCase[] {
  const { batch: B, S, T, D } = presetShapes[preset];
  const shape = `B ${B}, S ${S}, T ${T}, D ${D}`;
  const forwardFlops = B * (2 * 2 * S * T * D + 2 * S * 2 * D * D);
  return [
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
