// Benchmark cases of the decoding ops at the preset shapes (B sequences, each at the last row of its segment, the
// most it reads): the attention decode row, the per-sequence cache write, the output distribution with the copy
// head, and the linear layers at decoding's few rows (the GEMV path). All are memory-bound: each is counted by
// the bytes it must read and write, against the copy ceiling.
import * as mg from '../../../index.js';
import { presetShapes, type BenchCase, type Preset } from '../types.js';

export function cases(preset: Preset): BenchCase[] {
  const { batch: B, T, D, H, S, F, V } = presetShapes[preset];
  const d = D / H;
  const int32 = { dtype: 'int32' as const };
  const keep = (t: mg.Tensor) => mg.keep(t);
  const out: BenchCase[] = [];
  out.push({
    op: 'attentionDecode',
    shape: `B ${B} at row ${T - 1} of T ${T}, H ${H}, mem [${B},${S},${2 * D}]`,
    // The cached keys and values it reads, the memory's keys and values, and the new row.
    bytes: 4 * (B * T * D * 2 + B * S * 2 * D + B * 3 * D + B * D),
    setup: () => {
      const x = {
        qkv: keep(mg.randn([B, 3 * D], { seed: 1 })), keys: keep(mg.randn(mg.decodeKeyShape(B, H, d, T), { seed: 2 })), values: keep(mg.randn([B, H, T, d], { seed: 3 })),
        memKV: keep(mg.randn([B, S, 2 * D], { seed: 4 })), gate: keep(mg.randn([B, H], { seed: 5 })), at: keep(mg.tensor(new Array(B).fill(T - 1), [B], int32)),
      };
      const memory = mg.decodeMemory(x.memKV, { nHeads: H, rope: true, memoryRead: 'positional' });
      const run = () => mg.noGrad(() => mg.attentionDecode(x.qkv, x.at, { keys: x.keys, values: x.values }, {
        nHeads: H, rope: true, memory, gateLogits: x.gate, memoryRead: 'positional',
      }).dispose());
      return { run, dispose: () => [...Object.values(x), memory.keys, memory.values].forEach((t) => t.dispose()) };
    },
  });
  out.push({
    op: 'decodeMemory',
    shape: `mem [${B},${S},${2 * D}], H ${H}`,
    // Once per memory write: it reads the memory's K/V and writes its keys (float32) and values.
    bytes: 4 * 2 * (B * S * 2 * D),
    setup: () => {
      const memKV = keep(mg.randn([B, S, 2 * D], { seed: 4 }));
      const into = mg.decodeMemory(memKV, { nHeads: H, rope: true, memoryRead: 'positional' });
      const run = () => mg.noGrad(() => mg.decodeMemory(memKV, { nHeads: H, rope: true, memoryRead: 'positional' }, into));
      return { run, dispose: () => [memKV, into.keys, into.values].forEach((t) => t.dispose()) };
    },
  });
  out.push({
    op: 'scatterRows',
    shape: `[${B},${D}] → [${B},${T},${D}]`,
    bytes: 2 * 4 * B * D,
    setup: () => {
      const src = keep(mg.randn([B, D], { seed: 1 })), dst = keep(mg.zeros([B, T, D])), at = keep(mg.tensor(new Array(B).fill(T - 1), [B], int32));
      return { run: () => mg.scatterRows(src, at, dst), dispose: () => [src, dst, at].forEach((t) => t.dispose()) };
    },
  });
  out.push({
    op: 'copyMixProbs',
    shape: `logits [${B},${V}], context [${B},${T},${D}]`,
    bytes: 4 * (2 * B * V + B * T * D + B * T + B * D),
    setup: () => {
      const x = {
        logits: keep(mg.randn([B, V], { seed: 1 })), cq: keep(mg.randn([B, D], { seed: 2 })), ck: keep(mg.randn([B, T, D], { seed: 3 })),
        gen: keep(mg.randn([B], { seed: 4 })), tokens: keep(mg.tensor(Array.from({ length: B * T }, (_, i) => i % V), [B, T], int32)),
        lengths: keep(mg.tensor(new Array(B).fill(T), [B], int32)),
      };
      return { run: () => mg.noGrad(() => mg.copyMixProbs(x.logits, x).dispose()), dispose: () => Object.values(x).forEach((t) => t.dispose()) };
    },
  });
  // The decoding step's largest layers at 1 row and at B rows: their weights are the bytes that must stream. In
  // bfloat16 (a bf16 model decoding: the decoder's weights are cast once) they are half the bytes.
  for (const dtype of ['float32', 'bfloat16'] as const) {
    const size = dtype === 'float32' ? 4 : 2;
    for (const rows of [1, B]) {
      for (const [n, k] of [[F, D], [D, F]]) {
        out.push({
          op: `linear (decode, ${rows} row${rows > 1 ? 's' : ''}${dtype === 'bfloat16' ? ', bf16' : ''})`,
          shape: `[${rows},${k}] · [${n},${k}]ᵀ`,
          bytes: size * (n * k + rows * (n + k)), // weights, input and output rows, all in dtype (the bias is noise)
          setup: () => {
            const make = (shape: number[], seed: number) => keep(mg.tidy(() => mg.cast(mg.randn(shape, { seed }), dtype)));
            const x = make([rows, k], 1), w = make([n, k], 2), b = make([n], 3);
            return { run: () => mg.noGrad(() => mg.linear(x, w, b).dispose()), dispose: () => [x, w, b].forEach((t) => t.dispose()) };
          },
        });
      }
    }
  }
  return out;
}
