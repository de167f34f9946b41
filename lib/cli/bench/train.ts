// End-to-end training throughput: forward over k segments with the memory carried, backward,
// global-norm clipping and AdamW — the same work as bench/torch_memgpt.py does in PyTorch, timed
// the same way (median step). Run by `memgpt bench train` and `npx tsx bench/train.ts`.
import { cpus } from 'node:os';

import * as mg from '../../index.js';
import { presets, type PresetName } from '../../nn/config.js';
import { MemGPT, type Precision } from '../../nn/model.js';
import { synchronize } from '../../native/backend.js';
import { flopsPerToken as modelFlopsPerToken } from './flops.js';

export interface TrainBenchOptions {
  device: mg.Device;
  preset: PresetName;
  batch: number;
  segments: number;
  /** Timed steps (the median is reported) after `warmup` untimed ones. */
  steps: number;
  warmup: number;
  /** The forward's precision (MemGPT.precision); default float32. */
  precision?: Precision;
}

export interface TrainBenchResult {
  impl: 'memgpt';
  device: mg.Device;
  machine: string;
  preset: PresetName;
  batch: number;
  segments: number;
  precision: Precision;
  parameters: number;
  /** Model FLOPs per trained token (forward + backward: lib/cli/bench/flops.ts, every product by its real size). */
  flopsPerToken: number;
  /** flopsPerToken · tokensPerSecond: divide by the device's peak for MFU. */
  achievedTflops: number;
  medianStepSeconds: number;
  tokensPerSecond: number;
  peakBytes: number;
  losses: number[];
}

export function runTrainBench(o: TrainBenchOptions): TrainBenchResult {
  const cfg = presets[o.preset];
  const { device, batch, segments } = o;
  const model = MemGPT.init(cfg, { seed: 0, device });
  model.precision = o.precision ?? 'float32';
  const params = [...model.params.values()];
  const optimizer = new mg.AdamW(params, { lr: 3e-4, weightDecay: 0.1 });
  try {
    const N = segments * cfg.segmentLen;
    const rng = new mg.Rng(1);
    const tokens = Int32Array.from({ length: batch * (N + 1) }, () => rng.int(cfg.vocabSize));
    const step = (): number => {
      const loss = mg.tidy(() => {
        const out = model.forward(tokens, batch, segments);
        out.loss.backward();
        return out.loss.item();
      });
      mg.clipGradNorm(params, 1.0);
      optimizer.step();
      optimizer.zeroGrad();
      return loss;
    };
    for (let i = 0; i < o.warmup; i++) step();
    synchronize(device);
    mg.resetPeakMemory(device);
    const times: number[] = [];
    const losses: number[] = [];
    for (let i = 0; i < o.steps; i++) {
      const t0 = performance.now();
      losses.push(step());
      synchronize(device);
      times.push((performance.now() - t0) / 1000);
    }
    times.sort((a, b) => a - b);
    const median = times[times.length >> 1];
    const flopsPerToken = modelFlopsPerToken(model.config).trainPerToken;
    return {
      impl: 'memgpt', device,
      machine: device === 'cpu' ? `${cpus()[0]?.model ?? 'unknown CPU'}, ${mg.numThreads()} threads` : mg.cudaStatus().reason,
      preset: o.preset, batch, segments, precision: model.precision, parameters: model.parameterCount(), flopsPerToken,
      achievedTflops: (flopsPerToken * batch * N) / median / 1e12, medianStepSeconds: median,
      tokensPerSecond: (batch * N) / median, peakBytes: mg.memory(device).peakBytes, losses,
    };
  } finally {
    optimizer.dispose();
    model.dispose();
  }
}

/** The human form of a training benchmark: one `key: value` line each. */
export function formatTrainBench(r: TrainBenchResult): string {
  return Object.entries(r).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.map((x: number) => x.toFixed(4)).join(' ') : v}`).join('\n');
}
