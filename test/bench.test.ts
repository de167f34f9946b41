// `memgpt bench` (from dist/, as users run it): the training-step, kernel and decoding benchmarks report
// what they measured as JSON, and bad flags get one clear line and exit code 2.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { packageRoot } from '../lib/native/backend.js';

function memgpt(...args: string[]) {
  const child = spawnSync(process.execPath, [join(packageRoot, 'bin', 'memgpt.js'), ...args], {
    encoding: 'utf8', env: { ...process.env, MEMGPT_DEVICE: 'cpu', MEMGPT_QUIET: '1' }, timeout: 120_000,
  });
  return { status: child.status, stdout: child.stdout, stderr: child.stderr.trim() };
}

describe('memgpt bench', () => {
  it('train: times real training steps of the model it names', () => {
    const r = memgpt('bench', 'train', '--preset', 'tiny', '--steps', '2', '--batch-size', '2', '--segments', '2', '--json');
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, unknown>;
    // The tiny preset's parameters: SPEC v1's 184,261 plus v2's pointer position bias, 2 layers × S 8 × T 32.
    expect(out).toMatchObject({ impl: 'memgpt', device: 'cpu', preset: 'tiny', batch: 2, segments: 2, parameters: 184261 + 2 * 8 * 32 });
    const losses = out.losses as number[];
    expect(losses).toHaveLength(2);
    // A random-weight byte model starts near ln 256 and AdamW moves it down.
    expect(losses[0]).toBeGreaterThan(5);
    expect(losses[1]).toBeLessThan(losses[0]);
    expect(out.tokensPerSecond as number).toBeCloseTo((2 * 2 * 32) / (out.medianStepSeconds as number), 6);
    expect(out.peakBytes as number).toBeGreaterThan(0);
  });

  it('kernels: --only selects cases; each row has its time, rate and share of the measured ceiling', () => {
    const r = memgpt('bench', 'kernels', '--only', 'layerNorm', '--json');
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as { device: string; ceilings: { gflops: number; gbs: number }; rows: { op: string; microseconds: number; rate: number; unit: string; percentOfCeiling: number }[] };
    expect(out.device).toBe('cpu');
    expect(out.ceilings.gbs).toBeGreaterThan(0);
    expect(out.rows.map((row) => row.op)).toEqual(['layerNorm forward', 'layerNorm backward']);
    for (const row of out.rows) {
      expect(row.microseconds).toBeGreaterThan(0);
      expect(row.unit).toBe('GB/s');
      expect(row.percentOfCeiling).toBeCloseTo((100 * row.rate) / out.ceilings.gbs, 6);
    }
  });

  it('decode: greedy tokens/s of Decoder and each batch size, the bounds beside them, into --out too', () => {
    const dir = mkdtempSync(join(tmpdir(), 'memgpt-bench-decode-'));
    try {
      const file = join(dir, 'decode.json');
      const r = memgpt('bench', 'decode', '--preset', 'tiny', '--batches', '3', '--tokens', '40', '--repeats', '1', '--precision', 'bfloat16', '--out', file, '--json');
      expect(r.status).toBe(0);
      const out = JSON.parse(r.stdout) as { preset: string; precision: string; graphs: boolean; greedyTokensPerSequence: number; rows: { api: string; batch: number; tokensPerSecond: number; secondsPerRepeat: number[] }[]; roofline: { batch1BoundTokensPerSecond: number } };
      expect(out).toMatchObject({ preset: 'tiny', precision: 'bfloat16', graphs: true, greedyTokensPerSequence: 40 });
      expect(out.rows.map((row) => [row.api, row.batch])).toEqual([['Decoder', 1], ['BatchDecoder', 3]]);
      for (const row of out.rows) {
        expect(row.secondsPerRepeat).toHaveLength(1);
        // 40 tokens of each sequence in the repeat's time, which is rounded to the millisecond.
        expect(Math.abs(row.tokensPerSecond * row.secondsPerRepeat[0] - row.batch * 40)).toBeLessThanOrEqual(row.tokensPerSecond * 0.0005 + 1);
      }
      expect(out.roofline.batch1BoundTokensPerSecond).toBeGreaterThan(0);
      expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual(out);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('bad input: one line, exit 2', () => {
    for (const args of [['bench', 'train', '--steps', '0'], ['bench', 'kernels', '--preset', 'huge'], ['bench', 'nothing'], ['bench', 'train', '--wat'],
      ['bench', 'decode', '--batches', '1,0'], ['bench', 'decode', '--decoder-only', '--batches', '2'], ['bench', 'decode', '--tokens', '1e2']]) {
      const r = memgpt(...args);
      expect(r.status).toBe(2);
      expect(r.stderr.split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/^memgpt: /);
    }
  });
});
