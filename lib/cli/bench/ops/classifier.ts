// Benchmark cases of the op family "classifier": tokenNLL (tied logits + cross-entropy, fused) forward and
// forward+backward, with and without the copy head, at a preset's shapes. Flops are the nominal work
// 2·N·V·D forward and 4·N·V·D more backward (N = B·T; the backward also recomputes the logits, 2·N·V·D
// not counted), plus the copy scores 2·B·T²·D forward and 4·B·T²·D backward.
import * as mg from '../../../index.js';
import { presetShapes, type BenchCase, type Preset } from '../types.js';

export function cases(preset: Preset): BenchCase[] {
  const { batch: B, T, D, V } = presetShapes[preset];
  const N = B * T;
  const out: BenchCase[] = [];
  for (const copy of [false, true]) {
    for (const backward of [false, true]) {
      const logitFlops = (backward ? 6 : 2) * N * V * D;
      const copyFlops = copy ? (backward ? 6 : 2) * B * T * T * D : 0;
      out.push({
        op: `tokenNLL${copy ? ' copy' : ''}${backward ? ' forward+backward' : ''}`,
        shape: `hf [${B},${T},${D}], tokEmb [${V},${D}]`,
        flops: logitFlops + copyFlops,
        setup: () => {
          const leaf = (shape: number[], seed: number, std: number) => mg.keep(mg.randn(shape, { seed, std, requiresGrad: backward }));
          const ids = (seed: number) => {
            const rng = new mg.Rng(seed);
            return mg.keep(mg.tensor(Int32Array.from({ length: N }, () => rng.int(V)), [B, T], { dtype: 'int32' }));
          };
          const hf = leaf([B, T, D], 1, 1), emb = leaf([V, D], 2, 0.02), targets = ids(3);
          const heads = copy
            ? { cq: leaf([B, T, D], 4, 1), ck: leaf([B, T, D], 5, 1), genLogit: leaf([B, T], 6, 1), inputs: ids(7) }
            : undefined;
          const all = [hf, emb, targets, ...(heads ? Object.values(heads) : [])];
          const run = backward
            ? () => {
                mg.tidy(() => mg.sum(mg.tokenNLL(hf, emb, targets, { copy: heads })).backward());
                for (const t of all) t.zeroGrad();
              }
            : () => mg.noGrad(() => mg.tokenNLL(hf, emb, targets, { copy: heads }).dispose());
          return { run, dispose: () => all.forEach((t) => t.dispose()) };
        },
      });
    }
  }
  return out;
}
