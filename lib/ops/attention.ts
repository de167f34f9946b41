// Ops of the family "attention": fused causal self-attention with RoPE, the memory read and its gate.
// One op computes SPEC §3 from `q, k, v = split(...)` to `O = g·R + (1 − g)·A`; its backward gives the
// gradients of qkv, memKV and gateLogits in one native call (native/cpu/attention.cpp has the design).
// float32 or bfloat16: the inputs share one dtype, which the output, the saved A and R and the gradients take;
// the per-row logsumexps are float32 either way, and the native math is float32 (bfloat16 rounded once per output).
import { isGradEnabled, record } from '../core/autograd.js';
import { dtypeCode } from '../core/dtype.js';
import { MemgptError, shapeStr } from '../core/errors.js';
import { empty, type Tensor } from '../core/tensor.js';
import type { AttentionKernels } from '../native/kernels.js';
import { callNative, checkTensors, handleOf, sameDtype } from './util.js';


/**
 * How the memory is read (SPEC §3). 'gated' (SPEC v1): R from the unrotated query, g = σ(gate logit).
 * 'positional' (SPEC v2): the slots sit at positions −S … −1, just before the segment, R is read by the rotated
 * query against the slot keys rotated there (with rope), and g = σ(gate logit + lse_R − lse_A): with a zero logit,
 * one softmax over the slots and the segment's keys together.
 */
export type MemoryRead = 'gated' | 'positional' | 'joint';
// 'joint' (the joint softmax without slot positions) exists for ablations only.
export const memModes: Record<MemoryRead, number> = { gated: 0, joint: 1, positional: 3 };

/** The native code of a memory read (default 'gated'), or one clear error naming op. */
export function memModeOf(op: string, memoryRead: MemoryRead | undefined): number {
  const mode = memModes[memoryRead ?? 'gated'];
  if (mode === undefined) throw new MemgptError(`${op}: memoryRead must be 'gated', 'positional' or 'joint' (got ${String(memoryRead)})`);
  return mode;
}

/** Options of attention(): heads, RoPE, and the memory read (memKV [B, S, 2D] with gateLogits [B, T, H], both or neither). */
export interface AttentionOptions {
  nHeads: number;
  rope: boolean;
  memKV?: Tensor;
  gateLogits?: Tensor;
  /** How the memory is read (default 'gated', SPEC v1). */
  memoryRead?: MemoryRead;
  /**
   * Diagnostics: called after the forward with the mean read gate g over every (batch, token, head), the share of
   * each head's output taken from the memory (with the joint softmax, the gate including lse_R − lse_A).
   */
  onReadGate?: (meanGate: number) => void;
}


function kernels(op: string, x: Tensor): AttentionKernels {
  const k = x.storage.backend;
  if (!k.attentionForward || !k.attentionBackward) throw new MemgptError(`${op}: not implemented on ${x.device} yet`);
  return k;
}

/**
 * Causal multi-head attention of qkv [B, T, 3D] (q, k, v blocks of D), RoPE on q and k when `rope`, and with
 * memKV the gated memory read O = σ(gateLogits)·softmax(q₀·mkᵀ/√d)·mv + (1 − σ)·A; returns O [B, T, D].
 */
export function attention(qkv: Tensor, options: AttentionOptions): Tensor {
  const op = 'attention';
  const { nHeads: H, rope, memKV, gateLogits } = options;
  const memMode = memModeOf(op, options.memoryRead);
  if (memKV === undefined && gateLogits !== undefined) throw new MemgptError(`${op}: gateLogits ${shapeStr(gateLogits.shape)} given without memKV (they come together)`);
  if (memKV !== undefined && gateLogits === undefined) throw new MemgptError(`${op}: memKV ${shapeStr(memKV.shape)} given without gateLogits (they come together)`);
  const mem = memKV !== undefined;
  const named: Record<string, Tensor> = mem ? { qkv, memKV: memKV!, gateLogits: gateLogits! } : { qkv };
  checkTensors(op, named, ['float32', 'bfloat16']);
  if (mem) {
    sameDtype(op, qkv, memKV!);
    sameDtype(op, qkv, gateLogits!);
  }
  if (qkv.rank !== 3 || qkv.shape[2] % 3 !== 0) throw new MemgptError(`${op}: qkv must be [B, T, 3D], got ${shapeStr(qkv.shape)}`);
  const [B, T, threeD] = qkv.shape;
  const D = threeD / 3;
  if (!Number.isInteger(H) || H < 1) throw new MemgptError(`${op}: nHeads must be a positive integer, got ${H}`);
  if (D % H !== 0) throw new MemgptError(`${op}: width D = ${D} of qkv ${shapeStr(qkv.shape)} is not divisible by nHeads = ${H}`);
  const d = D / H;
  if (d === 0) throw new MemgptError(`${op}: qkv ${shapeStr(qkv.shape)} has zero width`);
  if (rope && d % 2 !== 0) throw new MemgptError(`${op}: rope needs an even head width, got d = ${d} (D = ${D}, nHeads = ${H})`);
  let S = 0;
  if (mem) {
    const m = memKV!, g = gateLogits!;
    if (m.rank !== 3 || m.shape[0] !== B || m.shape[2] !== 2 * D || m.shape[1] < 1) {
      throw new MemgptError(`${op}: memKV must be [B, S, 2D] = [${B}, S ≥ 1, ${2 * D}] for qkv ${shapeStr(qkv.shape)}, got ${shapeStr(m.shape)}`);
    }
    if (g.rank !== 3 || g.shape[0] !== B || g.shape[1] !== T || g.shape[2] !== H) {
      throw new MemgptError(`${op}: gateLogits must be [B, T, H] = [${B}, ${T}, ${H}], got ${shapeStr(g.shape)}`);
    }
    S = m.shape[1];
  }
  const k = kernels(op, qkv);
  const inputs = mem ? [qkv, memKV!, gateLogits!] : [qkv];
  const wantsGrad = isGradEnabled() && inputs.some((t) => t.requiresGrad);
  const dt = qkv.dtype;
  const opts = { device: qkv.device, dtype: dt };
  const f32 = { device: qkv.device, dtype: 'float32' as const };
  const out = empty([B, T, D], opts);
  const lseSelf = empty([B, H, T], f32);
  const lseMem = mem ? empty([B, H, T], f32) : null;
  // A and R are saved only with memory and only when a backward can come; without memory A is the output itself.
  const saveA = mem && wantsGrad ? empty([B, T, D], opts) : null;
  const saveR = mem && wantsGrad ? empty([B, T, D], opts) : null;
  try {
    callNative(op, named, () =>
      k.attentionForward!(
        dtypeCode[dt], B, T, H, d, S, rope, memMode,
        ...handleOf(qkv), ...handleOf(memKV), ...handleOf(gateLogits), ...handleOf(out), ...handleOf(lseSelf), ...handleOf(lseMem), ...handleOf(saveA), ...handleOf(saveR),
      ),
    );
    if (mem && options.onReadGate) options.onReadGate(meanReadGate(gateLogits!.toArray(), lseSelf.toArray(), lseMem!.toArray(), B, T, H, memMode !== 0));
    const saved = mem && wantsGrad ? [qkv, memKV!, gateLogits!, saveA!, saveR!, lseSelf, lseMem!] : [qkv, out, lseSelf];
    record(op, inputs, [out], wantsGrad ? saved : [], ([dOut], sv, needs) => {
      const [sq, sm, sg, sa, sr, sls, slm] = mem ? sv : [sv[0], null, null, sv[1], null, sv[2], null];
      const dQkv = empty(qkv.shape, opts);
      const dMem = mem ? empty(memKV!.shape, opts) : null;
      const dGate = mem ? empty(gateLogits!.shape, opts) : null;
      callNative('attention backward', { qkv: sq, dOut }, () =>
        k.attentionBackward!(
          dtypeCode[dt], B, T, H, d, S, rope, memMode,
          ...handleOf(sq), ...handleOf(sm), ...handleOf(sg), ...handleOf(sa), ...handleOf(sr), ...handleOf(sls), ...handleOf(slm), ...handleOf(dOut),
          ...handleOf(dQkv), ...handleOf(dMem), ...handleOf(dGate),
        ),
      );
      const grads = [dQkv, dMem, dGate].slice(0, inputs.length);
      return grads.map((g, i) => {
        if (needs[i]) return g;
        g?.dispose();
        return null;
      });
    });
  } catch (e) {
    out.dispose();
    throw e;
  } finally {
    // The graph holds its own views of what it saved; these handles are the op's.
    lseSelf.dispose();
    lseMem?.dispose();
    saveA?.dispose();
    saveR?.dispose();
  }
  return out;
}

/** Mean over (b, t, h) of σ(logit [B,T,H] + (joint ? lse_mem − lse_self [B,H,T] : 0)), in double. */
function meanReadGate(logits: ArrayLike<number>, lseSelf: ArrayLike<number>, lseMem: ArrayLike<number>, B: number, T: number, H: number, joint: boolean): number {
  let total = 0;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < H; h++) {
        const li = (b * H + h) * T + t;
        total += 1 / (1 + Math.exp(-(logits[(b * T + t) * H + h] + (joint ? lseMem[li] - lseSelf[li] : 0))));
      }
    }
  }
  return total / (B * T * H);
}
