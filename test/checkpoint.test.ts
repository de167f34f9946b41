// Checkpoints: a saved model reloads to the same weights and the same loss bit for bit (bfloat16 within
// its rounding), AdamW resumes exactly, every broken or mismatched file is one clear MemgptError, and
// PyTorch (bench/torch_load.py) reads the file and computes the same loss.
import { spawnSync } from 'node:child_process';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import * as mg from '../lib/index.js';
import {
  loadModel, loadTrainingState, readModelConfig, saveModel, saveTrainingState,
} from '../lib/io/checkpoint.js';
import { resolveConfig, type ModelConfig } from '../lib/nn/config.js';
import { bf16BitsToFloat, floatToBf16Bits } from '../lib/core/dtype.js';
import { MemgptError } from '../lib/core/errors.js';
import { readSafetensors, writeSafetensors, type StoredTensor } from '../lib/io/safetensors.js';
import { MemGPT } from '../lib/nn/model.js';
import { expectNoLeaks } from './helpers.js';
import { randomModel, randomTokens } from './models.js';

const dir = mkdtempSync(join(tmpdir(), 'memgpt-ckpt-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let fileCount = 0;
const freshPath = (name = 'model') => join(dir, `${name}-${fileCount++}.safetensors`);

const small: Partial<ModelConfig> = { vocabSize: 256, dModel: 16, nHeads: 2, dFF: 24, nLayers: 2, segmentLen: 5, memSlots: 3 };

function lossOf(model: MemGPT, tokens: Int32Array, batch: number, segments: number): number {
  const out = mg.noGrad(() => model.forward(tokens, batch, segments));
  const loss = out.loss.item();
  out.loss.dispose();
  return loss;
}

/** Runs fn and returns the MemgptError it throws (failing if it throws anything else or nothing). */
function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(MemgptError);
    expect((err as Error).message).not.toContain('\n');
    return (err as Error).message;
  }
  return expect.fail('expected a MemgptError');
}

describe('model checkpoints', () => {
  it('float32: same weights, config and metadata; same loss bit for bit', () => {
    expectNoLeaks('cpu', () => {
      const model = randomModel(small, 1);
      const path = freshPath();
      saveModel(path, model, { metadata: { note: 'first run' } });
      const { tensors, metadata } = readSafetensors(path);
      expect(JSON.parse(metadata['memgpt.config'])).toEqual(resolveConfig(small));
      expect(metadata['memgpt.format']).toBe('2');
      expect(metadata.note).toBe('first run');
      expect([...tensors.keys()]).toEqual(mg.parameterShapes(model.config).map(([n]) => n));
      expect(readModelConfig(path)).toEqual(model.config);

      const loaded = loadModel(path);
      try {
        expect(loaded.config).toEqual(model.config);
        for (const [name, p] of model.params) expect(loaded.params.get(name)!.toArray()).toEqual(p.toArray());
        const tokens = randomTokens(2 * (3 * 5 + 1), 4);
        expect(lossOf(loaded, tokens, 2, 3)).toBe(lossOf(model, tokens, 2, 3));
      } finally {
        loaded.dispose();
        model.dispose();
      }
    });
  });

  it('a SPEC v1 checkpoint (format "1", no specVersion, no ptr.pos) loads, evaluates as v1, trains and is written back as v1', () => {
    expectNoLeaks('cpu', () => {
      const v1 = randomModel({ ...small, specVersion: 1 }, 4);
      const path = freshPath('v1');
      // As the writer of format "1" wrote it: no specVersion in the config.
      const { specVersion: _v, ...oldConfig } = v1.config;
      const tensors = mg.parameterShapes(v1.config).map(([name]): [string, StoredTensor] => [name, { dtype: 'F32', shape: [...v1.params.get(name)!.shape], data: new Uint8Array((v1.params.get(name)!.toArray() as Float32Array).buffer.slice(0)) }]);
      expect(tensors.some(([n]) => n.endsWith('ptr.pos'))).toBe(false);
      writeSafetensors(path, tensors, { 'memgpt.config': JSON.stringify(oldConfig), 'memgpt.format': '1' });
      const loaded = loadModel(path);
      try {
        expect(loaded.config.specVersion).toBe(1);
        const tokens = randomTokens(2 * (3 * 5 + 1), 4);
        expect(lossOf(loaded, tokens, 2, 3)).toBe(lossOf(v1, tokens, 2, 3));
        // The same weights read as SPEC v2 would be a different function (v2 needs ptr.pos, so it is not even loadable).
        const asV2 = freshPath('v1-as-v2');
        writeSafetensors(asV2, tensors, { 'memgpt.config': JSON.stringify({ ...oldConfig, specVersion: 2 }), 'memgpt.format': '2' });
        expect(errorOf(() => loadModel(asV2))).toMatch(/tensor layers\.0\.ptr\.pos is missing/);
        // It trains: a few AdamW steps on one batch lower its loss.
        const params = [...loaded.params.values()];
        const opt = new mg.AdamW(params, { lr: 1e-2 });
        const before = lossOf(loaded, tokens, 2, 3);
        for (let i = 0; i < 5; i++) {
          mg.tidy(() => loaded.forward(tokens, 2, 3).loss.backward());
          opt.step();
          opt.zeroGrad();
        }
        expect(lossOf(loaded, tokens, 2, 3)).toBeLessThan(before);
        opt.dispose();
        const again = freshPath('v1-again');
        saveModel(again, loaded);
        expect(readSafetensors(again).metadata['memgpt.format']).toBe('1');
        expect(readModelConfig(again).specVersion).toBe(1);
      } finally {
        loaded.dispose();
        v1.dispose();
      }
    });
  });

  it('bfloat16: half the bytes, weights rounded to nearest even, widened on load', () => {
    expectNoLeaks('cpu', () => {
      const model = randomModel({ ...small, copyHead: false, memSlots: 0, positional: 'sinusoidal' }, 2);
      const path32 = freshPath(), path16 = freshPath();
      saveModel(path32, model);
      saveModel(path16, model, { dtype: 'bfloat16' });
      const header = (p: string) => Number(readFileSync(p).readBigUInt64LE(0)) + 8;
      expect((readFileSync(path16).length - header(path16)) * 2).toBe(readFileSync(path32).length - header(path32));
      expect([...readSafetensors(path16).tensors.values()].every((t) => t.dtype === 'BF16')).toBe(true);
      const loaded = loadModel(path16);
      try {
        for (const [name, p] of model.params) {
          const original = p.toArray();
          const got = loaded.params.get(name)!.toArray();
          expect(loaded.params.get(name)!.dtype).toBe('float32');
          for (let i = 0; i < original.length; i++) {
            expect(got[i]).toBe(bf16BitsToFloat(floatToBf16Bits(original[i])));
            expect(Math.abs(got[i] - original[i])).toBeLessThanOrEqual(Math.abs(original[i]) * 2 ** -8); // half an ulp of an 8-bit significand
          }
        }
        const tokens = randomTokens(2 * 5 + 1, 5);
        expect(Math.abs(lossOf(loaded, tokens, 1, 2) - lossOf(model, tokens, 1, 2))).toBeLessThan(0.05);
      } finally {
        loaded.dispose();
        model.dispose();
      }
    });
  });

  it('saving over an existing checkpoint replaces it whole', () => {
    const path = freshPath();
    const a = randomModel(small, 3), b = randomModel({ ...small, nLayers: 1 }, 4);
    try {
      saveModel(path, a);
      saveModel(path, b);
      expect(readModelConfig(path).nLayers).toBe(1);
      const loaded = loadModel(path);
      expect(loaded.params.get('tok_emb')!.toArray()).toEqual(b.params.get('tok_emb')!.toArray());
      loaded.dispose();
    } finally {
      a.dispose();
      b.dispose();
    }
  });

  it('bad options are refused', () => {
    const model = randomModel(small, 5);
    try {
      expect(errorOf(() => saveModel(freshPath(), model, { dtype: 'float16' as 'float32' }))).toMatch(/checkpoint dtype must be "float32" or "bfloat16"/);
      expect(errorOf(() => saveModel(freshPath(), model, { metadata: { 'memgpt.config': '{}' } }))).toMatch(/metadata key "memgpt.config" is reserved/);
    } finally {
      model.dispose();
    }
  });
});

describe('broken or mismatched checkpoints: one clear MemgptError each', () => {
  const model = randomModel(small, 6);
  const goodPath = freshPath('good');
  saveModel(goodPath, model);
  const good = readSafetensors(goodPath);
  const goodTensors = () => [...good.tensors].map(([n, t]): [string, StoredTensor] => [n, { ...t, data: t.data.slice() }]);
  afterAll(() => model.dispose());

  /** A checkpoint made of the good one's tensors and metadata after `edit`. */
  function variant(edit: (tensors: [string, StoredTensor][], metadata: Record<string, string>) => [string, StoredTensor][] | void): string {
    const tensors = goodTensors(), metadata = { ...good.metadata };
    const path = freshPath('variant');
    writeSafetensors(path, edit(tensors, metadata) ?? tensors, metadata);
    return path;
  }

  it('truncated files, corrupted headers, a header length past the end', () => {
    const whole = readFileSync(goodPath);
    for (const cut of [0, 4, 8, 100, Number(whole.readBigUInt64LE(0)) + 8, whole.length - 1]) {
      const path = freshPath('cut');
      writeFileSync(path, whole.subarray(0, cut));
      expect(errorOf(() => loadModel(path))).toMatch(new RegExp(`^${path}: not a valid safetensors file \\(`));
      expect(errorOf(() => readModelConfig(path))).toMatch(/not a valid safetensors file/);
    }
    const corrupt = Buffer.from(whole);
    corrupt.write('#', 8 + 50);
    const corruptPath = freshPath('corrupt');
    writeFileSync(corruptPath, corrupt);
    expect(errorOf(() => loadModel(corruptPath))).toMatch(/not a valid safetensors file \(the header is not JSON/);
    const longHeader = Buffer.from(whole);
    longHeader.writeBigUInt64LE(BigInt(whole.length), 0);
    const longPath = freshPath('long');
    writeFileSync(longPath, longHeader);
    expect(errorOf(() => loadModel(longPath))).toMatch(/header length \d+ runs past the end of the \d+-byte file/);
  });

  it('an empty file, a text file, a missing file', () => {
    const empty = freshPath('empty');
    writeFileSync(empty, '');
    expect(errorOf(() => loadModel(empty))).toBe(`${empty}: not a valid safetensors file (the file is empty)`);
    const text = join(dir, 'notes.txt');
    writeFileSync(text, 'just some notes about training runs\n');
    expect(errorOf(() => loadModel(text))).toMatch(/^.*notes\.txt: not a valid safetensors file \(the header length \d+ is absurd/);
    expect(errorOf(() => loadModel(join(dir, 'missing.safetensors')))).toMatch(/missing\.safetensors: not a valid safetensors file \(no such file\)/);
    // Not regular files: refused at once (a FIFO would block the read forever; /dev/zero never ends).
    const fifo = join(dir, 'fifo.safetensors');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    expect(errorOf(() => loadModel(fifo))).toBe(`${fifo}: not a valid safetensors file (not a regular file)`);
    expect(errorOf(() => loadModel('/dev/zero'))).toBe('/dev/zero: not a valid safetensors file (not a regular file)');
  });

  it('a wrong-shaped, missing or extra tensor', () => {
    const reshaped = variant((ts) => {
      const i = ts.findIndex(([n]) => n === 'layers.0.attn.qkv.weight');
      ts[i] = [ts[i][0], { dtype: 'F32', shape: [48, 8], data: new Uint8Array(48 * 8 * 4) }];
    });
    expect(errorOf(() => loadModel(reshaped))).toBe(`${reshaped}: tensor layers.0.attn.qkv.weight is [48,8] but the config needs [48,16]`);
    const missing = variant((ts) => ts.filter(([n]) => n !== 'layers.1.mem.init'));
    expect(errorOf(() => loadModel(missing))).toBe(`${missing}: tensor layers.1.mem.init is missing (the config needs [3,16])`);
    const extra = variant((ts) => [...ts, ['layers.2.ln1.weight', { dtype: 'F32', shape: [16], data: new Uint8Array(64) }]]);
    expect(errorOf(() => loadModel(extra))).toBe(`${extra}: unexpected tensor layers.2.ln1.weight for this config`);
    const ints = variant((ts) => {
      ts[0] = [ts[0][0], { ...ts[0][1], dtype: 'I32' }];
    });
    expect(errorOf(() => loadModel(ints))).toBe(`${ints}: tensor tok_emb is I32; weights must be F32 or BF16`);
  });

  it('a weight that is NaN or infinite, named at load', () => {
    for (const [bad, shown] of [[Number.NaN, 'NaN'], [Number.POSITIVE_INFINITY, 'Infinity']] as const) {
      const path = variant((ts) => {
        const i = ts.findIndex(([n]) => n === 'layers.1.ffn.fc2.weight');
        const data = new Float32Array(ts[i][1].data.buffer.slice(0));
        data[5] = bad;
        ts[i] = [ts[i][0], { ...ts[i][1], data: new Uint8Array(data.buffer) }];
      });
      expect(errorOf(() => loadModel(path))).toBe(`${path}: tensor layers.1.ffn.fc2.weight holds ${shown} at element 5; weights must be finite`);
    }
  });

  it('a huge file whose header does not fit the config is refused from the header, without reading the data', () => {
    // 4 GiB of (sparse) tensor data behind a header whose tok_emb is the wrong shape: read whole, this would exhaust
    // the heap or fail on the size; checked from the header, it is one line at once.
    const bytes = 4 * 2 ** 30;
    const header = JSON.stringify({ __metadata__: good.metadata, tok_emb: { dtype: 'F32', shape: [256, bytes / 1024], data_offsets: [0, bytes] } });
    const padded = header.padEnd(Math.ceil(header.length / 8) * 8, ' ');
    const path = freshPath('huge');
    const fd = openSync(path, 'w');
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(padded.length));
    writeSync(fd, length);
    writeSync(fd, padded);
    ftruncateSync(fd, 8 + padded.length + bytes);
    closeSync(fd);
    expect(errorOf(() => loadModel(path))).toBe(`${path}: tensor tok_emb is [256,4194304] but the config needs [256,16]`);
    rmSync(path);
  });

  it('a config that does not fit the tensors, or is not valid', () => {
    const wider = variant((_, md) => {
      md['memgpt.config'] = JSON.stringify({ ...resolveConfig(small), dModel: 32, dFF: 24 });
    });
    expect(errorOf(() => loadModel(wider))).toBe(`${wider}: tensor tok_emb is [256,16] but the config needs [256,32]`);
    const odd = variant((_, md) => {
      md['memgpt.config'] = JSON.stringify({ ...resolveConfig(small), nHeads: 3 });
    });
    expect(errorOf(() => readModelConfig(odd))).toBe(`${odd}: config: dModel 16 is not divisible by nHeads 3`);
    // A hostile size in a small file is refused before any tensor list is built (nLayers 1e9 ran out of heap).
    const deep = variant((_, md) => {
      md['memgpt.config'] = JSON.stringify({ ...resolveConfig(small), nLayers: 1e9 });
    });
    expect(errorOf(() => loadModel(deep))).toBe(`${deep}: config: nLayers 1000000000 is more than 512, the most memgpt accepts`);
    const huge = variant((_, md) => {
      md['memgpt.config'] = JSON.stringify({ ...resolveConfig(small), dModel: 16384, dFF: 131072, nLayers: 512, nHeads: 64 });
    });
    expect(errorOf(() => loadModel(huge))).toMatch(/config: 3\.\d+e\+12 parameters is more than 1\.72e\+10, the most memgpt accepts$/);
    const garbled = variant((_, md) => {
      md['memgpt.config'] = '{"dModel": 16,';
    });
    expect(errorOf(() => loadModel(garbled))).toMatch(/"memgpt\.config" is not valid JSON/);
    const partial = variant((_, md) => {
      const { segmentLen: _s, ...rest } = resolveConfig(small);
      md['memgpt.config'] = JSON.stringify(rest);
    });
    expect(errorOf(() => loadModel(partial))).toBe(`${partial}: "memgpt.config" has no segmentLen`);
    const noConfig = variant((_, md) => {
      delete md['memgpt.config'];
    });
    expect(errorOf(() => loadModel(noConfig))).toBe(`${noConfig}: not a memgpt checkpoint (no "memgpt.config" in its metadata)`);
    const newer = variant((_, md) => {
      md['memgpt.format'] = '3';
    });
    expect(errorOf(() => readModelConfig(newer))).toBe(`${newer}: checkpoint format "3" is not supported (this version reads formats 1 and 2)`);
    const unversioned = variant((_, md) => {
      const { specVersion: _v, ...rest } = resolveConfig(small);
      md['memgpt.config'] = JSON.stringify(rest);
    });
    expect(errorOf(() => readModelConfig(unversioned))).toBe(`${unversioned}: "memgpt.config" has no specVersion`);
    const mislabelled = variant((_, md) => {
      md['memgpt.format'] = '1';
    });
    expect(errorOf(() => readModelConfig(mislabelled))).toBe(`${mislabelled}: a format "1" checkpoint cannot hold specVersion 2`);
    const plain = freshPath('plain');
    writeSafetensors(plain, goodTensors());
    expect(errorOf(() => loadModel(plain))).toBe(`${plain}: not a memgpt checkpoint (no "memgpt.format" in its metadata)`);
  });

  it('a failed load leaks nothing', () => {
    const reshaped = variant((ts) => {
      const i = ts.findIndex(([n]) => n === 'copy.gen.bias');
      ts[i] = [ts[i][0], { dtype: 'F32', shape: [2], data: new Uint8Array(8) }];
    });
    expectNoLeaks('cpu', () => {
      expect(errorOf(() => loadModel(reshaped))).toMatch(/copy\.gen\.bias is \[2\] but the config needs \[1\]/);
    });
  });
});

describe('training state', () => {
  /** One training step on a fixed batch: forward, backward, AdamW/SGD step. */
  function trainStep(model: MemGPT, optimizer: mg.AdamW | mg.SGD, tokens: Int32Array, lr: number, frozen?: mg.Tensor): void {
    optimizer.zeroGrad();
    const out = model.forward(tokens, 1, 2);
    out.loss.backward();
    out.loss.dispose();
    frozen?.zeroGrad();
    optimizer.step(lr);
  }

  it('AdamW resumes bit for bit: a step after reloading equals a step without', () => {
    expectNoLeaks('cpu', () => {
      const tokens = randomTokens(2 * 5 + 1, 9);
      const model = randomModel(small, 7);
      const params = [...model.params.values()];
      const noDecay = params.filter((p) => p.rank === 1);
      const options = { lr: 1e-2, weightDecay: 0.1, noDecay };
      const optimizer = new mg.AdamW(params, options);
      const modelPath = freshPath(), statePath = freshPath('optimizer');
      const rng = new mg.Rng(3);
      rng.normal(); // leaves a spare normal in the state
      const trainer = { step: 2, lr: { warmup: 10, peak: 1e-2 }, rng: rng.getState(), data: { epoch: 0, position: 22 } };
      let resumed: MemGPT | null = null;
      let resumedOptimizer: mg.AdamW | null = null;
      try {
        trainStep(model, optimizer, tokens, 1e-2);
        // A param without a gradient at a step keeps its own, smaller step count.
        trainStep(model, optimizer, tokens, 5e-3, params[0]);
        saveModel(modelPath, model);
        saveTrainingState(statePath, model, optimizer, trainer);

        resumed = loadModel(modelPath);
        const resumedParams = [...resumed.params.values()];
        resumedOptimizer = new mg.AdamW(resumedParams, { ...options, noDecay: resumedParams.filter((p) => p.rank === 1) });
        const restored = loadTrainingState(statePath, resumed, resumedOptimizer);
        expect(restored).toEqual(trainer);
        const restoredRng = new mg.Rng();
        restoredRng.setState(restored.rng as number[]);
        expect([restoredRng.normal(), restoredRng.normal(), restoredRng.uniform()]).toEqual([rng.normal(), rng.normal(), rng.uniform()]);
        const a = optimizer.state(), b = resumedOptimizer.state();
        expect(b.step).toBe(a.step);
        expect(b.steps).toEqual(a.steps);
        expect(a.steps!.slice(0, 2)).toEqual([1, 2]);
        for (let i = 0; i < params.length; i++) {
          expect(b.m[i].toArray()).toEqual(a.m[i].toArray());
          expect(b.v[i].toArray()).toEqual(a.v[i].toArray());
        }
        expect(resumedOptimizer.lr).toBe(5e-3);

        trainStep(model, optimizer, tokens, 4e-3);
        trainStep(resumed, resumedOptimizer, tokens, 4e-3);
        for (const [name, p] of model.params) expect(resumed.params.get(name)!.toArray()).toEqual(p.toArray());
      } finally {
        optimizer.dispose();
        resumedOptimizer?.dispose();
        model.dispose();
        resumed?.dispose();
      }
    });
  });

  it('SGD and no optimizer keep the trainer state; mismatches are clear errors', () => {
    expectNoLeaks('cpu', () => {
      const model = randomModel(small, 8);
      const params = [...model.params.values()];
      const sgd = new mg.SGD(params, { lr: 0.5 });
      const adamw = new mg.AdamW(params);
      try {
        const sgdPath = freshPath('sgd'), nonePath = freshPath('none'), adamPath = freshPath('adamw');
        saveTrainingState(sgdPath, model, sgd, { step: 5 });
        saveTrainingState(nonePath, model, null, { step: 6, note: 'eval only' });
        saveTrainingState(adamPath, model, adamw, { step: 0 });
        sgd.lr = 0.1;
        expect(loadTrainingState(sgdPath, model, sgd)).toEqual({ step: 5 });
        expect(sgd.lr).toBe(0.5);
        expect(loadTrainingState(nonePath, model, null)).toEqual({ step: 6, note: 'eval only' });
        expect(errorOf(() => loadTrainingState(adamPath, model, sgd))).toBe(`${adamPath}: the state was saved for optimizer "adamw" but the run uses "sgd"`);
        expect(errorOf(() => loadTrainingState(sgdPath, model, adamw))).toBe(`${sgdPath}: the state was saved for optimizer "sgd" but the run uses "adamw"`);

        const { tensors, metadata } = readSafetensors(adamPath);
        const without = freshPath('bad');
        writeSafetensors(without, [...tensors].filter(([n]) => n !== 'v.layers.1.ffn.fc1.bias'), metadata);
        expect(errorOf(() => loadTrainingState(without, model, adamw))).toBe(`${without}: tensor v.layers.1.ffn.fc1.bias is missing`);
        const misshapen = freshPath('bad');
        writeSafetensors(misshapen, [...tensors].map(([n, t]): [string, StoredTensor] => (n === 'm.tok_emb' ? [n, { ...t, shape: [16, 256] }] : [n, t])), metadata);
        expect(errorOf(() => loadTrainingState(misshapen, model, adamw))).toBe(`${misshapen}: tensor m.tok_emb is [16,256] but the parameter is [256,16]`);
        const fewer = new mg.AdamW(params.slice(1));
        try {
          expect(errorOf(() => loadTrainingState(adamPath, model, fewer))).toMatch(/saved for a different set of params/);
        } finally {
          fewer.dispose();
        }
        expect(errorOf(() => loadTrainingState(join(dir, 'nope.safetensors'), model, adamw))).toMatch(/no such file/);
        const modelPath = freshPath();
        saveModel(modelPath, model);
        expect(errorOf(() => loadTrainingState(modelPath, model, adamw))).toBe(`${modelPath}: not a memgpt training state (no "memgpt.trainer" in its metadata)`);
        expect(errorOf(() => saveTrainingState(freshPath(), model, adamw, { big: 1n } as unknown as Record<string, unknown>))).toMatch(/the trainer state cannot be stored as JSON/);
      } finally {
        adamw.dispose();
        model.dispose();
      }
    });
  });
});

const torchProbe = spawnSync('/usr/bin/python3', ['-c', 'import torch'], { encoding: 'utf8' });
const hasTorch = torchProbe.status === 0;

describe('PyTorch reads the checkpoint', () => {
  it.skipIf(!hasTorch)('bench/torch_load.py lists the tensors and computes the same loss (skipped when /usr/bin/python3 cannot import torch)', () => {
    // SPEC v2 with RoPE (slot positions) and with sinusoidal positions (the joint gate alone), and SPEC v1 (format "1").
    for (const [variant, seed] of [[small, 11], [{ ...small, positional: 'sinusoidal', copyHead: false }, 12], [{ ...small, specVersion: 1 }, 13]] as const) {
      const model = randomModel(variant, seed);
      const path = freshPath('torch');
      const tokensPath = join(dir, `tokens-${seed}.json`);
      try {
        saveModel(path, model);
        const tokens = randomTokens(3 * 5 + 1, seed);
        writeFileSync(tokensPath, JSON.stringify(Array.from(tokens)));
        if (seed === 11) {
          const listing = spawnSync('/usr/bin/python3', ['bench/torch_load.py', path], { encoding: 'utf8' });
          expect(listing.status, listing.stderr).toBe(0);
          expect(listing.stdout).toContain('layers.0.attn.qkv.weight\tF32\t[48, 16]');
          expect(listing.stdout).toContain('"segmentLen": 5');
        }
        const run = spawnSync('/usr/bin/python3', ['bench/torch_load.py', path, '--tokens', tokensPath], { encoding: 'utf8' });
        expect(run.status, run.stderr).toBe(0);
        const torchLoss = JSON.parse(run.stdout.trim()).loss as number;
        const ours = lossOf(model, tokens, 1, 3);
        expect(Math.abs(torchLoss - ours)).toBeLessThanOrEqual(1e-5 * Math.abs(ours));
      } finally {
        model.dispose();
      }
    }
  });
  if (!hasTorch) it.skip(`PyTorch check skipped: /usr/bin/python3 -c "import torch" failed (${(torchProbe.stderr || String(torchProbe.error)).trim().split('\n').pop()})`, () => {});
});
