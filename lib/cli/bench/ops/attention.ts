// Benchmark cases of the fused attention op (SPEC §3 self-attention + gated memory read) at the preset shapes:
// forward, and forward + backward, with RoPE and memory on as in the presets; in float32 and in bfloat16
// (the mixed-precision path: tensor cores on CUDA).
import * as mg from '../../../index.js';
import { presetShapes, type BenchCase, type Preset } from '../types.js';

/**
 * Forward flops counted as 4·B·H·(T·T/2 + T·S)·d: two GEMM-like products (q·kᵀ and p·v) of 2 flops per
 * multiply-add over the causal half of the T×T scores, and the same over the T×S memory scores; softmax and
 * gating are not counted. Forward + backward counts 3.5× that (backward recomputes q·kᵀ and adds dp = dA·vᵀ,
 * dq, dk and dv: five products against the forward's two).
 */
export function cases(preset: Preset): BenchCase[] {
  const { batch: B, T, D, H, S } = presetShapes[preset];
  const d = D / H;
  const forwardFlops = 4 * B * H * ((T * T) / 2 + T * S) * d;
  const shape = `qkv [${B},${T},${3 * D}] H ${H} mem [${B},${S},${2 * D}]`;
  const out: BenchCase[] = [];
  for (const dtype of ['float32', 'bfloat16'] as const) {
    const tag = dtype === 'bfloat16' ? ' bf16' : '';
    const make = (dims: number[], seed: number) => {
      const t = mg.randn(dims, { seed });
      if (dtype === 'float32') return mg.keep(t);
      const c = mg.keep(mg.cast(t, dtype));
      t.dispose();
      return c;
    };
    const inputs = () => ({ qkv: make([B, T, 3 * D], 1), memKV: make([B, S, 2 * D], 2), gateLogits: make([B, T, H], 3) });
    const dispose = (xs: Record<string, mg.Tensor>) => () => Object.values(xs).forEach((t) => t.dispose());
    out.push(
      {
        op: `attention${tag} forward`,
        shape,
        flops: forwardFlops,
        setup: () => {
          const x = inputs();
          const run = () => mg.noGrad(() => mg.attention(x.qkv, { nHeads: H, rope: true, memKV: x.memKV, gateLogits: x.gateLogits }).dispose());
          return { run, dispose: dispose(x) };
        },
      },
      {
        op: `attention${tag} forward+backward`,
        shape,
        flops: 3.5 * forwardFlops,
        setup: () => {
          const x = inputs();
          for (const t of Object.values(x)) t.requiresGrad = true;
          const dOut = make([B, T, D], 4);
          const run = () => {
            mg.tidy(() => mg.attention(x.qkv, { nHeads: H, rope: true, memKV: x.memKV, gateLogits: x.gateLogits }).backward(dOut));
            for (const t of Object.values(x)) t.zeroGrad();
          };
          return { run, dispose: dispose({ ...x, dOut }) };
        },
      },
    );
  }
  return out;
}
