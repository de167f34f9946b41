// Benchmark cases of the optim family: one AdamW step, the gradient norm and SGD over the parameters
// of the small and base models (SPEC §2 shapes, one tensor per parameter as in training).
// Memory-bound: AdamW reads w, g, m, v and writes w, m, v (28 bytes per parameter).
import * as mg from '../../../index.js';
import { presetShapes, type BenchCase, type Preset } from '../types.js';

/** The parameter shapes of a preset's model (SPEC §2, copy head on). */
export function parameterShapes(preset: Preset): number[][] {
  const { D, H, F, S, V } = presetShapes[preset];
  const L = preset === 'small' ? 4 : 12;
  const layer = [
    [D], [D], [3 * D, D], [3 * D], [D, D], [D],              // ln1, attn.qkv, attn.out
    [S, D], [D], [D], [2 * D, D], [2 * D], [H, D], [H],       // mem.init, mem.ln, mem.kv, mem.gate
    [D], [D], [D, D], [D, D], [D, D], [D, 2 * D], [D],        // ptr.ln, ptr.q/k/v, mem.update
    [D], [D], [F, D], [F], [D, F], [D],                       // ln2, ffn.fc1, ffn.fc2
  ];
  const shapes = [[V, D], [D], [D]];
  for (let l = 0; l < L; l++) shapes.push(...layer);
  shapes.push([D, D], [D, D], [1, D], [1]);
  return shapes;
}

export function cases(preset: Preset): BenchCase[] {
  const shapes = parameterShapes(preset);
  const count = shapes.reduce((s, sh) => s + sh.reduce((a, b) => a * b, 1), 0);
  const shape = `${shapes.length} tensors, ${(count / 1e6).toFixed(1)}M params`;
  const setup = () => {
    const params = shapes.map((s, i) => mg.parameter(mg.randn(s, { seed: i, std: 0.02 })));
    for (const p of params) p.grad = mg.randn(p.shape, { seed: 1000 + p.id, std: 1e-3 });
    const dispose = () => params.forEach((p) => {
      p.zeroGrad();
      p.dispose();
    });
    return { params, dispose };
  };
  return [
    {
      op: 'AdamW step',
      shape,
      bytes: 28 * count,
      setup: () => {
        const { params, dispose } = setup();
        const opt = new mg.AdamW(params, { lr: 1e-4 });
        return { run: () => opt.step(), dispose: () => (opt.dispose(), dispose()) };
      },
    },
    {
      op: 'gradNorm',
      shape,
      bytes: 4 * count,
      setup: () => {
        const { params, dispose } = setup();
        return { run: () => void mg.gradNorm(params), dispose };
      },
    },
    {
      op: 'SGD step',
      shape,
      bytes: 12 * count,
      setup: () => {
        const { params, dispose } = setup();
        const opt = new mg.SGD(params, { lr: 1e-4 });
        return { run: () => opt.step(), dispose };
      },
    },
  ];
}
