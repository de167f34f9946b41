// Decoding speed on the native decode path: greedy tokens/s at batch 1 (Decoder: distribution(), argmax, feed(),
// what `memgpt generate` does a token) and the throughput of B sequences at once (BatchDecoder: distributions(),
// argmax per row, step()), each sequence prefilled with its own random prompt, over enough tokens to cross segment
// boundaries (and write the memories). Median of the repeats; FLOPs, weight bytes and the bounds they set beside
// them. Run by `memgpt bench decode` and `npx tsx bench/decode.ts`.
import { cpus } from 'node:os';

import * as mg from '../../index.js';
import { cpuBackend } from '../../native/backend.js';
import { presets, type PresetName } from '../../nn/config.js';
import { MemGPT, type Precision } from '../../nn/model.js';

export interface DecodeBenchOptions {
  device: mg.Device;
  preset: PresetName;
  /** Batch sizes timed through BatchDecoder after batch 1 through Decoder (empty: Decoder alone). */
  batches: number[];
  /** Greedy tokens each sequence decodes in a repeat. */
  tokens: number;
  repeats: number;
  precision: Precision;
  /** Replay recorded kernel graphs (the default) or run every step's layers again (DecoderOptions.graphs). */
  graphs: boolean;
}

export interface DecodeBenchRow {
  api: 'Decoder' | 'BatchDecoder';
  batch: number;
  tokensPerSecond: number;
  secondsPerRepeat: number[];
  gflopsPerSecond: number;
}

export interface DecodeBenchResult {
  bench: 'decode';
  preset: PresetName;
  device: mg.Device;
  machine: { cpu: string; threads: number; gpu?: string };
  greedyTokensPerSequence: number;
  promptTokens: number;
  segmentLen: number;
  precision: Precision;
  graphs: boolean;
  /** FLOPs of one token's dense layers (attention and the memory write come on top). */
  flopsPerToken: number;
  /** The bytes of those layers' weights, which every token reads once. */
  weightBytesPerToken: number;
  /** On the CPU: batch 1 cannot beat copy bandwidth / weight bytes, no batch can beat peak FLOP/s / FLOPs a token. */
  roofline?: { copyGBs: number; batch1BoundTokensPerSecond: number; peakGflops: number; batchBoundTokensPerSecond: number; what: string };
  rows: DecodeBenchRow[];
  date: string;
}

const promptLength = 32;

function argmax(p: ArrayLike<number>, from: number, n: number): number {
  let best = 0;
  for (let v = 1; v < n; v++) if (p[from + v] > p[from + best]) best = v;
  return best;
}

function median(xs: number[]): number {
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
}

export function runDecodeBench(o: DecodeBenchOptions): DecodeBenchResult {
  const cfg = presets[o.preset];
  const model = MemGPT.init(cfg, { seed: 0, device: o.device });
  model.precision = o.precision;
  const options = { graphs: o.graphs };
  const prompts = (B: number, seed: number) => {
    const rng = new mg.Rng(seed);
    return Array.from({ length: B }, () => Int32Array.from({ length: promptLength }, () => rng.int(cfg.vocabSize)));
  };
  // Seconds for o.tokens greedy tokens of one sequence through Decoder, or of each of B through BatchDecoder.
  const timeDecoder = (seed: number): number => {
    const decoder = new mg.Decoder(model, options);
    try {
      decoder.feedMany(prompts(1, seed)[0]);
      const t0 = performance.now();
      for (let i = 0; i < o.tokens; i++) decoder.feed(argmax(decoder.distribution(), 0, cfg.vocabSize));
      return (performance.now() - t0) / 1000;
    } finally {
      decoder.dispose();
    }
  };
  const timeBatch = (B: number, seed: number): number => {
    const decoder = new mg.BatchDecoder(model, B, options);
    try {
      decoder.prefillAll(prompts(B, seed));
      const next = new Int32Array(B);
      const t0 = performance.now();
      for (let i = 0; i < o.tokens; i++) {
        const probs = decoder.distributions();
        for (let b = 0; b < B; b++) next[b] = argmax(probs, b * cfg.vocabSize, cfg.vocabSize);
        decoder.step(next);
      }
      return (performance.now() - t0) / 1000;
    } finally {
      decoder.dispose();
    }
  };
  // Multiply-adds of one token's dense layers (×2 for FLOPs): per layer qkv, out, FFN and the read gate; the tied
  // output head and the copy head's query, key and gate.
  const { dModel: D, dFF: F, nLayers: L, nHeads: H, vocabSize: V, memSlots: S, copyHead } = cfg;
  const macs = L * (4 * D * D + 2 * D * F + (S > 0 ? D * H : 0)) + V * D + (copyHead ? 2 * D * D + D : 0);
  const flopsPerToken = 2 * macs;
  const weightBytes = macs * (o.precision === 'bfloat16' ? 2 : 4);
  const rows: DecodeBenchRow[] = [];
  const row = (api: DecodeBenchRow['api'], batch: number, seconds: number[]): void => {
    const tps = (batch * o.tokens) / median(seconds);
    rows.push({ api, batch, tokensPerSecond: Math.round(tps), secondsPerRepeat: seconds.map((s) => +s.toFixed(3)), gflopsPerSecond: +((tps * flopsPerToken) / 1e9).toFixed(2) });
  };
  try {
    timeDecoder(99);  // warm-up (JIT, allocator caches)
    row('Decoder', 1, Array.from({ length: o.repeats }, (_, r) => timeDecoder(r)));
    for (const B of o.batches) {
      timeBatch(B, 98);
      row('BatchDecoder', B, Array.from({ length: o.repeats }, (_, r) => timeBatch(B, r)));
    }
  } finally {
    model.dispose();
  }
  // The copy probe counts bytes read plus bytes written (a 256 MB triad): a pure read stream is no faster than that
  // total, so the batch-1 bound is generous (and weights that stay in a large L3 can beat it).
  let roofline: DecodeBenchResult['roofline'];
  if (o.device === 'cpu') {
    const copyGBs = cpuBackend().probeCopyBandwidth(256 << 20, 5), peakGflops = cpuBackend().probePeakFlops(0.2);
    roofline = {
      copyGBs: +copyGBs.toFixed(1), batch1BoundTokensPerSecond: Math.round((copyGBs * 1e9) / weightBytes),
      peakGflops: +peakGflops.toFixed(1), batchBoundTokensPerSecond: Math.round((peakGflops * 1e9) / flopsPerToken),
      what: `batch 1 cannot beat (copy bandwidth) / (${o.precision} weight bytes a token): each token streams every weight once; no batch can beat (peak FMA FLOP/s) / (dense FLOPs a token)`,
    };
  }
  return {
    bench: 'decode', preset: o.preset, device: o.device,
    machine: { cpu: cpus()[0]?.model ?? 'unknown', threads: mg.numThreads(), ...(o.device === 'cuda' ? { gpu: mg.cudaStatus().info?.name } : {}) },
    greedyTokensPerSequence: o.tokens, promptTokens: promptLength, segmentLen: cfg.segmentLen, precision: o.precision,
    graphs: o.graphs, flopsPerToken, weightBytesPerToken: weightBytes, ...(roofline ? { roofline } : {}), rows,
    date: new Date().toISOString(),
  };
}

/** The human form: one line per row, then the bounds. */
export function formatDecodeBench(r: DecodeBenchResult): string {
  const lines = [`decode, ${r.preset} preset, ${r.precision}, ${r.device} (${r.machine.gpu ?? `${r.machine.cpu}, ${r.machine.threads} thread${r.machine.threads === 1 ? '' : 's'}`})${r.graphs ? '' : ', eager'}: greedy tokens/s`];
  for (const row of r.rows) lines.push(`  ${row.api.padEnd(12)} batch ${String(row.batch).padStart(3)}: ${String(row.tokensPerSecond).padStart(7)} tokens/s  ${row.gflopsPerSecond.toFixed(1).padStart(6)} GFLOP/s`);
  if (r.roofline) lines.push(`  bounds: batch 1 ${r.roofline.batch1BoundTokensPerSecond} tokens/s (${r.roofline.copyGBs} GB/s copy), any batch ${r.roofline.batchBoundTokensPerSecond} (${r.roofline.peakGflops} GFLOP/s FMA peak)`);
  return lines.join('\n');
}
