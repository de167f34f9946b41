// The built-in tasks, run end to end with a few steps: the embedded default of `memgpt train`
// (the pass key, with and without memory: both run folders, the report line), the segmented-copy
// trainer, and the scorers' arithmetic.
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';

import { readSafetensorsHeader } from '../lib/io/safetensors.js';
import { defaultTrainCommand } from '../lib/cli/train.js';
import { defaultPasskeyTask, passkeyAccuracy, passkeyModelConfig } from '../lib/tasks/passkey.js';
import { copyAccuracy, copyTask, copyTrainer } from '../bench/copy-task.js';
import { MemGPT } from '../lib/nn/model.js';

afterEach(() => vi.restoreAllMocks());

describe('memgpt train with no arguments', () => {
  it('trains with memory and with memSlots = 0, writes both run folders and reports both accuracies', async () => {
    const out = mkdtempSync(join(tmpdir(), 'memgpt-default-'));
    const printed: string[] = [];
    vi.spyOn(console, 'log').mockImplementation((line: string) => void printed.push(line));
    const notes: string[] = [];
    vi.spyOn(console, 'error').mockImplementation((line: string) => void notes.push(line));
    const code = await defaultTrainCommand({ ...defaultPasskeyTask, steps: 4 }, out, 3);
    expect(code).toBe(0);
    expect(printed).toHaveLength(1);
    expect(printed[0]).toMatch(/^pass-key accuracy on 3 held-out keys .*: \d+\.\d% with memory, \d+\.\d% with memSlots = 0/);
    expect(notes[0]).toMatch(/2 segments of 32 bytes/);
    for (const run of ['with-memory', 'no-memory']) {
      for (const file of ['model.safetensors', 'optimizer.safetensors', 'metrics.jsonl', 'loss.svg']) expect(existsSync(join(out, run, file))).toBe(true);
    }
    const names = (run: string) => [...readSafetensorsHeader(join(out, run, 'model.safetensors')).tensors.keys()];
    expect(names('with-memory')).toContain('layers.0.mem.init');
    expect(names('no-memory').some((n) => n.includes('.mem.') || n.includes('.ptr.'))).toBe(false);
  }, 60_000);
});

describe('passkeyAccuracy', () => {
  it('scores greedy decoding of fresh keys: exact ≤ digits, both in [0, 1], the same for the same seed', () => {
    const model = MemGPT.init(passkeyModelConfig(defaultPasskeyTask, 8), { seed: 3 });
    try {
      const a = passkeyAccuracy(model, defaultPasskeyTask, 5, 11);
      const b = passkeyAccuracy(model, defaultPasskeyTask, 5, 11);
      expect(a).toEqual(b);
      expect(a.keys).toBe(5);
      expect(a.exact).toBeGreaterThanOrEqual(0);
      expect(a.exact).toBeLessThanOrEqual(a.digits);
      expect(a.digits).toBeLessThanOrEqual(1);
      // Digits are counted in fifths of a key.
      expect(Math.abs(a.digits * 5 * 5 - Math.round(a.digits * 5 * 5))).toBeLessThan(1e-9);
    } finally {
      model.dispose();
    }
  });
});

describe('copy task', () => {
  it('trains through the library trainer and scores the 24 copied tokens of each sample', async () => {
    const out = mkdtempSync(join(tmpdir(), 'memgpt-copy-'));
    const trainer = copyTrainer({ ...copyTask, steps: 3, batchSize: 2 }, 8, 0, out);
    try {
      expect(trainer.model.config).toMatchObject({ segmentLen: 8, memSlots: 8, positional: 'rope' });
      for (let i = 0; i < 3; i++) expect(Number.isFinite(trainer.trainStep().loss)).toBe(true);
      const a = copyAccuracy(trainer.model, 3, 5);
      expect(a.tokens).toBe(3 * 24);
      expect(a.accuracy).toBeGreaterThanOrEqual(0);
      expect(a.accuracy).toBeLessThanOrEqual(1);
      expect(Math.abs(a.accuracy * 72 - Math.round(a.accuracy * 72))).toBeLessThan(1e-9);
    } finally {
      trainer.dispose();
      trainer.model.dispose();
    }
  });
});
