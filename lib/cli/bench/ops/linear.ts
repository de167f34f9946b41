// Benchmark cases of the linear family at the small and base presets' shapes: the token rows
// x [batch·T, D] through the QKV projection [3D, D], the first FFN layer [F, D] (with and without
// GELU) and the second [D, F]; forward, and backward (dx, dW, db: twice the forward's FLOPs); in float32
// and in bfloat16 (the mixed-precision path: tensor cores on CUDA).
import * as mg from '../../../index.js';
import { presetShapes, type BenchCase, type Preset } from '../types.js';

export function cases(preset: Preset): BenchCase[] {
  const { batch, T, D, F } = presetShapes[preset];
  const m = batch * T;
  const layers: [string, number, number, mg.LinearActivation][] = [
    ['qkv', 3 * D, D, 'none'],
    ['fc1', F, D, 'none'],
    ['fc1', F, D, 'gelu'],
    ['fc2', D, F, 'none'],
  ];
  const out: BenchCase[] = [];
  for (const [name, n, k, activation] of layers) for (const dtype of ['float32', 'bfloat16'] as const) {
    const shape = `[${m},${k}] · [${n},${k}]ᵀ (${name})`;
    const act = `${activation === 'gelu' ? ' gelu' : ''}${dtype === 'bfloat16' ? ' bf16' : ''}`;
    const make = (shape: number[], seed: number, std: number) => {
      const t = mg.randn(shape, { seed, std });
      if (dtype === 'float32') return t;
      const c = mg.cast(t, dtype);
      t.dispose();
      return c;
    };
    const inputs = () => ({ x: make([m, k], 1, 1), w: mg.parameter(make([n, k], 2, 0.02)), b: mg.parameter(make([n], 3, 0.02)) });
    out.push({
      op: `linear${act} forward`,
      shape,
      flops: 2 * m * n * k,
      setup: () => {
        const { x, w, b } = inputs();
        return {
          run: () => mg.noGrad(() => mg.linear(x, w, b, { activation }).dispose()),
          dispose: () => [x, w, b].forEach((t) => t.dispose()),
        };
      },
    });
    out.push({
      op: `linear${act} backward`,
      shape,
      flops: 4 * m * n * k,
      setup: () => {
        const { x, w, b } = inputs();
        x.requiresGrad = true;
        const dy = make([m, n], 4, 1);
        // The forward (with z saved) is made once; each run is one backward over the retained graph.
        const y = mg.linear(x, w, b, { activation });
        return {
          run: () => {
            y.backward(dy, { retainGraph: true });
            for (const t of [x, w, b]) t.zeroGrad();
          },
          dispose: () => [y, dy, x, w, b].forEach((t) => t.dispose()),
        };
      },
    });
  }
  return out;
}
