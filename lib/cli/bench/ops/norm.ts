// Benchmark cases of the "norm" family at the presets' shapes: layer norm forward and
// backward over [batch·T, D], the token embedding forward and backward, and RoPE over a
// q-sized [batch, T, D]. All are memory-bound: each case counts the bytes read plus written.
import * as mg from '../../../index.js';
import type { NormKernels } from '../../../native/kernels.js';
import { presetShapes, type BenchCase, type Preset } from '../types.js';

const F32 = 0; // dtype code of float32 (lib/core/dtype.ts)

function kernelsOf(t: mg.Tensor): NormKernels {
  return t.storage.backend as NormKernels;
}

export function cases(preset: Preset): BenchCase[] {
  const { batch, T, D, H, V } = presetShapes[preset];
  const rows = batch * T, n = rows * D;
  const dispose = (...ts: mg.Tensor[]) => () => ts.forEach((t) => t.dispose());
  return [
    {
      op: 'layerNorm forward',
      shape: `[${rows},${D}]`,
      bytes: 4 * (2 * n + 2 * D + 2 * rows), // x in, y out, weight and bias, mean and rstd out
      setup: () => {
        const x = mg.randn([rows, D], { seed: 1 }), w = mg.randn([D], { seed: 2 }), b = mg.randn([D], { seed: 3 });
        return { run: () => mg.layerNorm(x, w, b).dispose(), dispose: dispose(x, w, b) };
      },
    },
    {
      op: 'layerNorm backward',
      shape: `[${rows},${D}]`,
      bytes: 4 * (3 * n + 3 * D + 2 * rows), // x and dy in, dx out; weight in, dweight and dbias out; mean and rstd in
      setup: () => {
        const x = mg.randn([rows, D], { seed: 1 }), w = mg.randn([D], { seed: 2 }), dy = mg.randn([rows, D], { seed: 4 });
        const mean = mg.randn([rows], { seed: 5, std: 0.1 }), rstd = mg.rand([rows], { seed: 6, low: 0.5, high: 2 });
        const dx = mg.zeros([rows, D]), dw = mg.zeros([D]), db = mg.zeros([D]);
        const k = kernelsOf(x);
        const run = () =>
          k.layerNormBackward(
            F32, rows, D, x.handle, 0, w.handle, 0, mean.handle, 0, rstd.handle, 0, dy.handle, 0, dx.handle, 0, dw.handle, 0, db.handle, 0,
          );
        return { run, dispose: dispose(x, w, dy, mean, rstd, dx, dw, db) };
      },
    },
    {
      op: 'embedding forward',
      shape: `[${batch},${T}] of [${V},${D}]`,
      bytes: 4 * rows + 2 * 4 * n, // ids in; one table row read and one output row written per token
      setup: () => {
        const ids = mg.tensor(Int32Array.from({ length: rows }, (_, i) => (i * 7919) % V), [batch, T], { dtype: 'int32' });
        const table = mg.randn([V, D], { seed: 7 });
        return { run: () => mg.embedding(ids, table).dispose(), dispose: dispose(ids, table) };
      },
    },
    {
      op: 'embedding backward',
      shape: `[${batch},${T}] into [${V},${D}]`,
      bytes: 4 * rows + 4 * n + 4 * V * D, // ids and dout in; every row of dtable written
      setup: () => {
        const ids = mg.tensor(Int32Array.from({ length: rows }, (_, i) => (i * 7919) % V), [batch, T], { dtype: 'int32' });
        const dout = mg.randn([batch, T, D], { seed: 8 }), dtable = mg.zeros([V, D]);
        const k = kernelsOf(dout);
        const run = () => k.embeddingBackward(F32, rows, V, D, ids.handle, 0, dout.handle, 0, dtable.handle, 0);
        return { run, dispose: dispose(ids, dout, dtable) };
      },
    },
    {
      op: 'rope forward',
      shape: `[${batch},${T},${D}] ${H} heads`,
      bytes: 2 * 4 * n, // x in, y out (the cos/sin table is T·D/2 floats, in cache)
      setup: () => {
        const x = mg.randn([batch, T, D], { seed: 9 });
        return { run: () => mg.rope(x, H).dispose(), dispose: dispose(x) };
      },
    },
  ];
}
