// The generator of the hostile set: crafted checkpoints (broken safetensors framing, hostile configs, bad tensors,
// special files) and crafted run folders (broken trainer and optimizer states), each written from a valid one made
// here, for test/hostile.test.ts to run through eval, generate and train --resume.
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, readFileSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { saveModel } from '../lib/io/checkpoint.js';
import { readSafetensors, writeSafetensors, type StoredTensor } from '../lib/io/safetensors.js';
import { MemGPT } from '../lib/nn/model.js';

export const hostileConfig = { tokenizer: 'byte' as const, dModel: 16, nHeads: 2, dFF: 32, nLayers: 1, segmentLen: 8, memSlots: 2 };

export interface HostileCase {
  name: string;
  /** A checkpoint file (for eval and generate), or a run folder (for train --resume). */
  path: string;
  kind: 'checkpoint' | 'run';
  /**
   * true: the input is valid, and the command must succeed with a finite result; 'either': valid or not is the
   * reader's call (a finite result, or one clear line); otherwise it must be refused with one clear line.
   */
  valid?: boolean | 'either';
}

/** The bytes of a safetensors file with this header object (JSON-encoded as given) and data. */
function framed(header: unknown, data: Uint8Array = new Uint8Array(0), rawHeader?: string): Buffer {
  const json = Buffer.from(rawHeader ?? JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, data]);
}

/** Writes the crafted checkpoints into `dir`; `valid` is a good checkpoint of hostileConfig to start from. */
function checkpointCases(dir: string, valid: string): HostileCase[] {
  const cases: HostileCase[] = [];
  const bytes = readFileSync(valid);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString()) as Record<string, unknown>;
  const data = bytes.subarray(8 + headerLen);
  const metadata = header.__metadata__ as Record<string, string>;
  const config = JSON.parse(metadata['memgpt.config']) as Record<string, unknown>;
  const add = (name: string, content: Buffer | Uint8Array | string, valid: boolean | 'either' = false) => {
    const path = join(dir, `${name}.safetensors`);
    writeFileSync(path, content);
    cases.push({ name, path, kind: 'checkpoint', valid });
  };
  const withHeader = (name: string, change: (h: Record<string, unknown>) => void, body: Uint8Array = data) => {
    const h = structuredClone(header);
    change(h);
    add(name, framed(h, body));
  };
  const withConfig = (name: string, change: Record<string, unknown> | string) => {
    withHeader(`config-${name}`, (h) => {
      (h.__metadata__ as Record<string, string>)['memgpt.config'] = typeof change === 'string' ? change : JSON.stringify({ ...config, ...change });
    });
  };
  const firstTensor = Object.keys(header).find((k) => k !== '__metadata__')!;
  const tensorInfo = (h: Record<string, unknown>) => h[firstTensor] as { dtype: string; shape: number[]; data_offsets: number[] };

  // The framing.
  add('valid', bytes, true);
  add('empty', Buffer.alloc(0));
  add('four-bytes', Buffer.from([1, 2, 3, 4]));
  add('header-length-zero', Buffer.alloc(8));
  add('header-length-past-end', Buffer.concat([Buffer.from([0xff, 0xff, 0, 0, 0, 0, 0, 0]), Buffer.from('{}')]));
  add('header-length-2^63', Buffer.concat([Buffer.from([0, 0, 0, 0, 0, 0, 0, 0x80]), Buffer.from('{}')]));
  add('header-not-json', framed(null, data, '{"a": tru'));
  add('header-array', framed([1, 2, 3]));
  add('header-number', framed(7));
  add('header-nul-bytes', framed(null, data, '\0'.repeat(64)));
  add('truncated-data', bytes.subarray(0, bytes.length - 17));
  add('truncated-header', bytes.subarray(0, 8 + Math.floor(headerLen / 2)));
  add('trailing-garbage', Buffer.concat([bytes, Buffer.from('garbage')]));
  add('text-file', 'this is not a checkpoint\n'.repeat(100));
  withHeader('tensor-not-object', (h) => { h[firstTensor] = 5; });
  withHeader('dtype-unknown', (h) => { tensorInfo(h).dtype = 'F128'; });
  withHeader('dtype-int', (h) => { tensorInfo(h).dtype = 'I32'; });
  withHeader('shape-negative', (h) => { tensorInfo(h).shape = [-1, 16]; });
  withHeader('shape-fraction', (h) => { tensorInfo(h).shape = [2.5, 16]; });
  withHeader('shape-huge', (h) => { tensorInfo(h).shape = [1e15, 1e15]; });
  withHeader('offsets-reversed', (h) => { const t = tensorInfo(h); t.data_offsets = [t.data_offsets[1], t.data_offsets[0]]; });
  withHeader('offsets-past-end', (h) => { tensorInfo(h).data_offsets = [0, 1e12]; });
  withHeader('offsets-strings', (h) => { tensorInfo(h).data_offsets = ['0', '4'] as unknown as number[]; });
  withHeader('metadata-not-strings', (h) => { (h.__metadata__ as Record<string, unknown>)['memgpt.format'] = 2; });
  withHeader('metadata-array', (h) => { h.__metadata__ = ['memgpt.config']; });
  withHeader('no-metadata', (h) => { delete h.__metadata__; });
  add('tensor-named-proto', framed(null, data, JSON.stringify(header).replace(`"${firstTensor}"`, '"__proto__"')));
  withHeader('format-unknown', (h) => { (h.__metadata__ as Record<string, string>)['memgpt.format'] = '99'; });
  // The config: every key bounded, nothing built from it before it is checked.
  withConfig('missing', '');
  withHeader('config-absent', (h) => { delete (h.__metadata__ as Record<string, string>)['memgpt.config']; });
  withConfig('not-json', '{"dModel": ');
  withConfig('array', '[16, 2]');
  withConfig('nLayers-1e9', { nLayers: 1e9 });
  withConfig('dModel-1e9', { dModel: 1e9 });
  withConfig('vocab-1e12', { vocabSize: 1e12 });
  withConfig('segmentLen-1e9', { segmentLen: 1e9 });
  withConfig('memSlots-1e9', { memSlots: 1e9 });
  withConfig('dFF-1e12', { dFF: 1e12 });
  withConfig('nHeads-0', { nHeads: 0 });
  withConfig('nHeads-not-dividing', { nHeads: 3 });
  withConfig('negative', { dModel: -16 });
  withConfig('fraction', { nLayers: 1.5 });
  withConfig('string-number', { dModel: '16' });
  withConfig('nan', '{"dModel": NaN}');
  withConfig('tokenizer-unknown', { tokenizer: 'gpt-9' });
  withConfig('tokenizer-proto', { tokenizer: '__proto__' });
  withConfig('positional-unknown', { positional: 'alibi' });
  withConfig('specVersion-99', { specVersion: 99 });
  withConfig('extra-key', { attention: 'linear' });
  withHeader('config-valid-v1', (h) => {
    // A SPEC v1 file (format "1", no specVersion) of a v2 model's tensors: ptr.pos is extra there, so refused.
    (h.__metadata__ as Record<string, string>)['memgpt.format'] = '1';
  });
  withConfig('proto-key', '{"__proto__": {"dModel": 1e9}}');
  // The tensors.
  const { tensors, metadata: meta } = readSafetensors(valid);
  const rewrite = (name: string, change: (t: Map<string, StoredTensor>) => void, valid: boolean | 'either' = false) => {
    const t = new Map([...tensors].map(([k, v]) => [k, { ...v, data: v.data.slice() }]));
    change(t);
    const path = join(dir, `tensors-${name}.safetensors`);
    writeSafetensors(path, t, meta);
    cases.push({ name: `tensors-${name}`, path, kind: 'checkpoint', valid });
  };
  const someName = [...tensors.keys()].find((k) => k.endsWith('attn.qkv.weight'))!;
  rewrite('missing', (t) => t.delete(someName));
  rewrite('extra', (t) => t.set('layers.9.attn.qkv.weight', t.get(someName)!));
  rewrite('wrong-shape', (t) => { const x = t.get(someName)!; t.set(someName, { ...x, shape: [x.shape[1], x.shape[0]] }); });
  rewrite('int-dtype', (t) => { const x = t.get(someName)!; t.set(someName, { ...x, dtype: 'I32' }); });
  rewrite('f64-dtype', (t) => { const x = t.get(someName)!; t.set(someName, { dtype: 'F64', shape: x.shape, data: new Uint8Array(x.data.length * 2) }); });
  const poison = (name: string, value: number, valid: boolean | 'either' = false) => rewrite(name, (t) => {
    const x = t.get(someName)!;
    new DataView(x.data.buffer, x.data.byteOffset).setFloat32(4, value, true);
  }, valid);
  poison('nan', NaN);
  poison('inf', Infinity);
  poison('huge', 3e38, 'either');  // finite: a finite loss, or one clear line
  // Special files and paths.
  const fifo = join(dir, 'fifo.safetensors');
  spawnSync('mkfifo', [fifo]);
  cases.push({ name: 'fifo', path: fifo, kind: 'checkpoint' });
  cases.push({ name: 'dev-zero', path: '/dev/zero', kind: 'checkpoint' });
  cases.push({ name: 'folder', path: dir, kind: 'checkpoint' });
  cases.push({ name: 'missing-file', path: join(dir, 'no-such.safetensors'), kind: 'checkpoint' });
  const loop = join(dir, 'loop.safetensors');
  symlinkSync(loop, loop);
  cases.push({ name: 'symlink-loop', path: loop, kind: 'checkpoint' });
  const sparse = join(dir, 'sparse-2gb.safetensors');
  writeFileSync(sparse, framed({ ...header, [firstTensor]: { ...tensorInfo(header), shape: [32768, 16384], data_offsets: [0, 2 ** 31] } }));
  truncateSync(sparse, 2 ** 31 + 4096);
  cases.push({ name: 'sparse-2gb', path: sparse, kind: 'checkpoint' });
  return cases;
}

/** Crafted run folders: copies of `run` (a valid folder at step 2) with a broken trainer or optimizer state. */
function runCases(dir: string, run: string): HostileCase[] {
  const cases: HostileCase[] = [];
  const optimizerOf = (folder: string) => join(folder, 'checkpoints', 'step-2', 'optimizer.safetensors');
  const { tensors, metadata } = readSafetensors(optimizerOf(run));
  const trainer = JSON.parse(metadata['memgpt.trainer']) as Record<string, unknown>;
  const add = (name: string, write: (optimizer: string, folder: string) => void, valid: boolean | 'either' = false) => {
    const folder = join(dir, `run-${name}`);
    cpSync(run, folder, { recursive: true });
    write(optimizerOf(folder), folder);
    cases.push({ name: `run-${name}`, path: folder, kind: 'run', valid });
  };
  const withTrainer = (name: string, change: Record<string, unknown> | string) => add(name, (path) => {
    writeSafetensors(path, tensors, { ...metadata, 'memgpt.trainer': typeof change === 'string' ? change : JSON.stringify({ ...trainer, ...change }) });
  });
  add('valid', () => {}, true);
  withTrainer('step-fraction', { step: 2.5 });
  withTrainer('step-negative', { step: -1 });
  withTrainer('step-huge', { step: 1e300 });
  withTrainer('step-string', { step: '2' });
  withTrainer('not-json', '{"step": 2,');
  withTrainer('array', '[2]');
  withTrainer('sampler-missing', { sampler: undefined });
  withTrainer('sampler-garbled', { sampler: { position: -5, epoch: 'x', order: [1, 2] } });
  withTrainer('options-missing', { options: undefined });
  withTrainer('options-lr-negative', { options: { ...(trainer.options as object), lr: -1 } });
  withTrainer('options-batch-zero', { options: { ...(trainer.options as object), batchSize: 0 } });
  withTrainer('options-batch-huge', { options: { ...(trainer.options as object), batchSize: 1e9 } });
  withTrainer('options-segments-huge', { options: { ...(trainer.options as object), segments: 1e9 } });
  withTrainer('options-lr-string', { options: { ...(trainer.options as object), lr: '0.001' } });
  withTrainer('options-schedule-unknown', { options: { ...(trainer.options as object), schedule: 'zigzag' } });
  withTrainer('tokens-negative', { tokens: -3 });
  add('optimizer-record-garbled', (path) => writeSafetensors(path, tensors, { ...metadata, 'memgpt.optimizer': '{"kind": "lion"}' }));
  add('moments-missing', (path) => writeSafetensors(path, new Map([...tensors].filter(([k]) => !k.startsWith('m.'))), metadata));
  const moment = (name: string, prefix: string, value: number) => add(name, (path) => {
    const t = new Map([...tensors].map(([k, v]) => [k, { ...v, data: v.data.slice() }]));
    const m = [...t].find(([k]) => k.startsWith(prefix))![1];
    new DataView(m.data.buffer, m.data.byteOffset).setFloat32(0, value, true);
    writeSafetensors(path, t, metadata);
  });
  moment('moment-nan', 'm.', NaN);
  moment('moment-inf', 'm.', -Infinity);
  moment('second-moment-negative', 'v.', -1);
  add('manifest-garbled', (_, folder) => writeFileSync(join(folder, 'checkpoint.json'), '{"format": 1, "step": "two"}'));
  add('manifest-names-missing-step', (_, folder) => writeFileSync(join(folder, 'checkpoint.json'), '{"format": 1, "step": 9, "folder": "step-9"}'));
  add('manifest-fifo', (_, folder) => {
    const manifest = join(folder, 'checkpoint.json');
    writeFileSync(manifest, '');
    spawnSync('rm', [manifest]);
    spawnSync('mkfifo', [manifest]);
  });
  add('optimizer-truncated', (path) => truncateSync(path, 100));
  add('lock-garbage', (_, folder) => writeFileSync(join(folder, 'run.lock'), '\0\0garbage'), true);
  return cases;
}

/** Writes the whole hostile set under `dir` (a valid checkpoint and a valid run folder made first) and lists it. */
export function writeHostileSet(dir: string, makeRun: (out: string) => void): HostileCase[] {
  mkdirSync(dir, { recursive: true });
  const valid = join(dir, 'base.safetensors');
  const model = MemGPT.init(hostileConfig, { seed: 1, device: 'cpu' });
  try {
    saveModel(valid, model);
  } finally {
    model.dispose();
  }
  const run = join(dir, 'base-run');
  makeRun(run);
  mkdirSync(join(dir, 'ckpt'));
  mkdirSync(join(dir, 'runs'));
  return [...checkpointCases(join(dir, 'ckpt'), valid), ...runCases(join(dir, 'runs'), run)];
}
