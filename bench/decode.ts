// Decoding speed on the native decode path: greedy tokens/s at batch 1 (Decoder: distribution(), argmax, feed(),
// what `memgpt generate` does a token) and the throughput of B sequences at once (BatchDecoder: distributions(),
// argmax per row, step()), each sequence prefilled with its own random prompt, over enough tokens to cross segment
// boundaries (and write the memories). Median of the repeats; FLOPs and weight bytes per token beside them.
// Usage: npx tsx bench/decode.ts [--preset small] [--device cpu|cuda] [--threads 1] [--batches 1,4,16] [--tokens 320] [--repeats 3]
//        [--precision float32|bfloat16] [--eager] [--decoder-only] [--out FILE]
// --decoder-only times batch 1 through Decoder alone: the API older versions have too, for a before/after.
// --eager runs every step's layers again instead of replaying the recorded kernel graph (DecoderOptions.graphs).
import { closeSync, fsyncSync, openSync, renameSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';

import * as mg from '../lib/index.js';
import { presets, type PresetName } from '../lib/nn/config.js';
import { MemGPT } from '../lib/nn/model.js';
import { cpuBackend } from '../lib/native/backend.js';

const { values: flags } = parseArgs({
  options: {
    preset: { type: 'string', default: 'small' },
    device: { type: 'string', default: 'cpu' },
    threads: { type: 'string', default: '1' },
    batches: { type: 'string', default: '1,4,16' },
    tokens: { type: 'string', default: '320' },
    repeats: { type: 'string', default: '3' },
    precision: { type: 'string', default: 'float32' },
    'decoder-only': { type: 'boolean', default: false },
    eager: { type: 'boolean', default: false },
    out: { type: 'string' },
  },
});
const preset = flags.preset as PresetName;
if (!(preset in presets)) throw new Error(`unknown preset ${preset}`);
mg.setNumThreads(Number(flags.threads));
const cfg = presets[preset];
const steps = Number(flags.tokens), repeats = Number(flags.repeats);
const device = flags.device as mg.Device;
if (!mg.availableDevices().includes(device)) throw new Error(`device ${device} is not available here (${mg.availableDevices().join(', ')})`);
const model = MemGPT.init(cfg, { seed: 0, device });
if (flags.precision !== 'float32' && flags.precision !== 'bfloat16') throw new Error(`--precision must be float32 or bfloat16`);
model.precision = flags.precision;
const promptLength = 32;
// Spread, so that the script still runs against versions whose decoders take no options (a before/after).
const decoderOptions = flags.eager ? [{ graphs: false }] as const : [] as const;
const prompts = (B: number, seed: number) => {
  const rng = new mg.Rng(seed);
  return Array.from({ length: B }, () => Int32Array.from({ length: promptLength }, () => rng.int(cfg.vocabSize)));
};
const argmax = (p: ArrayLike<number>, from: number, n: number) => {
  let best = 0;
  for (let v = 1; v < n; v++) if (p[from + v] > p[from + best]) best = v;
  return best;
};
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Seconds for `steps` greedy tokens of one sequence through Decoder. */
function timeDecoder(seed: number): number {
  const decoder = new mg.Decoder(model, ...decoderOptions);
  try {
    decoder.feedMany(prompts(1, seed)[0]);
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) decoder.feed(argmax(decoder.distribution(), 0, cfg.vocabSize));
    return (performance.now() - t0) / 1000;
  } finally {
    decoder.dispose();
  }
}

/** Seconds for `steps` greedy tokens of each of B sequences through BatchDecoder. */
function timeBatch(B: number, seed: number): number {
  const decoder = new mg.BatchDecoder(model, B, ...decoderOptions);
  try {
    prompts(B, seed).forEach((p, b) => decoder.prefill(b, p));
    const next = new Int32Array(B);
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) {
      const probs = decoder.distributions();
      for (let b = 0; b < B; b++) next[b] = argmax(probs, b * cfg.vocabSize, cfg.vocabSize);
      decoder.step(next);
    }
    return (performance.now() - t0) / 1000;
  } finally {
    decoder.dispose();
  }
}

// Multiply-adds of one token's dense layers (×2 for FLOPs): per layer qkv, out, FFN and the read gate; the tied
// output head and the copy head's query, key and gate. Attention (≤ 4·T·D a layer) and the memory write (once a
// segment) come on top; the weights these stream are the bytes per token below.
const { dModel: D, dFF: F, nLayers: L, nHeads: H, vocabSize: V, memSlots: S, copyHead } = cfg;
const macs = L * (4 * D * D + 2 * D * F + (S > 0 ? D * H : 0)) + V * D + (copyHead ? 2 * D * D + D : 0);
const flopsPerToken = 2 * macs;

const rows: Record<string, unknown>[] = [];
timeDecoder(99);  // warm-up (JIT, allocator caches)
const decoderSeconds = Array.from({ length: repeats }, (_, r) => timeDecoder(r));
const decoderTps = steps / median(decoderSeconds);
rows.push({ api: 'Decoder', batch: 1, tokensPerSecond: Math.round(decoderTps), secondsPerRepeat: decoderSeconds.map((s) => +s.toFixed(3)) });
console.error(JSON.stringify(rows.at(-1)));
if (!flags['decoder-only']) {
  for (const B of flags.batches.split(',').map(Number)) {
    timeBatch(B, 98);
    const seconds = Array.from({ length: repeats }, (_, r) => timeBatch(B, r));
    const tps = (B * steps) / median(seconds);
    rows.push({ api: 'BatchDecoder', batch: B, tokensPerSecond: Math.round(tps), secondsPerRepeat: seconds.map((s) => +s.toFixed(3)) });
    console.error(JSON.stringify(rows.at(-1)));
  }
}
for (const row of rows) {
  const tps = row.tokensPerSecond as number;
  row.gflopsPerSecond = +((tps * flopsPerToken) / 1e9).toFixed(2);
}

// The bounds. One sequence: every token streams all weights from memory once, so no decoder can pass bandwidth /
// weight bytes tokens/s (the copy probe counts bytes read plus bytes written, a 256 MB triad: a pure read stream is
// no faster than that total, so this bound is generous; weights that stay in a large L3 can beat it). A batch:
// every token costs its dense layers' FLOPs, so none can pass peak FLOP/s / FLOPs a token (the attention on top).
const weightBytes = macs * (model.precision === 'bfloat16' ? 2 : 4);
const copyGBs = device === 'cpu' ? cpuBackend().probeCopyBandwidth(256 << 20, 5) : null;
const peakGflops = device === 'cpu' ? cpuBackend().probePeakFlops(0.2) : null;
const roofline = copyGBs === null || peakGflops === null ? undefined : {
  copyGBs: +copyGBs.toFixed(1),
  batch1BoundTokensPerSecond: Math.round((copyGBs * 1e9) / weightBytes),
  peakGflops: +peakGflops.toFixed(1),
  batchBoundTokensPerSecond: Math.round((peakGflops * 1e9) / flopsPerToken),
  what: `batch 1 cannot beat (copy bandwidth, one thread) / (${model.precision} weight bytes a token): each token streams every weight once; no batch can beat (peak FMA FLOP/s) / (dense FLOPs a token)`,
};

const result = {
  bench: 'decode',
  preset,
  device,
  machine: { cpu: cpus()[0]?.model ?? 'unknown', threads: mg.numThreads(), ...(device === 'cuda' ? { gpu: mg.cudaStatus().info?.name } : {}) },
  greedyTokensPerSequence: steps,
  promptTokens: promptLength,
  segmentLen: cfg.segmentLen,
  precision: model.precision,
  flopsPerToken,
  graphs: !flags.eager,
  weightBytesPerToken: weightBytes,
  ...(roofline ? { roofline } : {}),
  rows,
  date: new Date().toISOString(),
};
const text = JSON.stringify(result, null, 2) + '\n';
console.log(text);
if (flags.out) {
  const tmp = `${flags.out}.tmp-${process.pid}`;
  writeFileSync(tmp, text);
  const fd = openSync(tmp, 'r');
  fsyncSync(fd);
  closeSync(fd);
  renameSync(tmp, flags.out);
}
