// Model FLOPs per trained token of SPEC §3 as memgpt computes it (a multiply-add is 2 FLOPs; training is
// forward + backward = 3 × forward): every matrix product by its real size, the per-segment memory work (the
// slots' projections, the pointer, the write gate) spread over the segment's T tokens. What the cost columns of
// the benchmarks divide by; norms, softmaxes and elementwise work are left out, as is usual.
import type { ModelConfig } from '../../nn/config.js';

export interface FlopsBreakdown {
  /** Forward FLOPs per token of the parts, summed over layers. */
  projections: number;
  ffn: number;
  selfAttention: number;
  memoryRead: number;
  memoryWrite: number;
  head: number;
  /** 3 × the forward's sum. */
  trainPerToken: number;
}

export function flopsPerToken(cfg: ModelConfig): FlopsBreakdown {
  const { dModel: D, nLayers: L, nHeads: H, dFF: F, segmentLen: T, memSlots: S, vocabSize: V } = cfg;
  const avgKeys = (T + 1) / 2; // a causal query at position p sees p + 1 keys
  const projections = L * 2 * (3 * D * D + D * D);
  const ffn = L * 2 * 2 * D * F;
  const selfAttention = L * 2 * 2 * D * avgKeys;
  let memoryRead = 0, memoryWrite = 0;
  if (S > 0) {
    // Per token: the gate logits and the read of S slots; per segment: the slots' keys and values.
    memoryRead = L * (2 * D * H + 2 * 2 * D * S + (2 * S * D * 2 * D) / T);
    // Per segment: M·(Wpqᵀ·Wpk) (the pointer's token projection moved onto the slots; Wpqᵀ·Wpk itself is made
    // once a forward, negligible), the scores and α·c over T tokens, ·Wpvᵀ on the S candidates, and the write
    // gate over [M | Z].
    memoryWrite = L * ((2 * S * D * D * 2 + 2 * 2 * S * T * D + 2 * S * 2 * D * D) / T);
  }
  const head = 2 * D * V + (cfg.copyHead ? 2 * 2 * D * D + 2 * D * avgKeys + 2 * D : 0);
  const forward = projections + ffn + selfAttention + memoryRead + memoryWrite + head;
  return { projections, ffn, selfAttention, memoryRead, memoryWrite, head, trainPerToken: 3 * forward };
}
