// Checkpoints (SPEC.md §7): the model as one safetensors file (tensors by their §2 names, the config
// in the metadata) and, beside it, the training state (optimizer moments and step counts, and the
// trainer's own JSON state), restored bit for bit so that a resumed run continues exactly.
import type { Device } from '../native/backend.js';
import { parameterShapes, resolveConfig, type ModelConfig, type SpecVersion } from '../nn/config.js';
import { MemgptError, shapeStr } from '../core/errors.js';
import { MemGPT } from '../nn/model.js';
import { AdamW, SGD } from '../ops/optim.js';
import { parameter, tensor, tidy, type Parameter, type Tensor } from '../core/tensor.js';
import {
  bfloat16Bytes, float32Bytes, readSafetensors, readSafetensorsHeader, storedToFloat32, writeSafetensors,
  type StoredTensor,
} from './safetensors.js';

/**
 * The checkpoint format ("memgpt.format") this code writes for training states and models of SPEC v2; a model of
 * SPEC v1 is written as format "1", as before. Both formats are read.
 */
export const CHECKPOINT_FORMAT = '2';
const MODEL_FORMATS: Record<SpecVersion, string> = { 1: '1', 2: '2' };
const READ_FORMATS = ['1', '2'];

const CONFIG_KEY = 'memgpt.config';
const FORMAT_KEY = 'memgpt.format';
const TRAINER_KEY = 'memgpt.trainer';
const OPTIMIZER_KEY = 'memgpt.optimizer';

export interface SaveModelOptions {
  /** Stored precision of the weights (default float32; bfloat16 halves the file, rounding to nearest even). */
  dtype?: 'float32' | 'bfloat16';
  /** Extra metadata strings (not the memgpt.* keys). */
  metadata?: Record<string, string>;
}

function checkExtraMetadata(path: string, metadata: unknown, reserved: string[]): Record<string, string> {
  if (metadata === undefined) return {};
  if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) throw new MemgptError(`${path}: metadata must be an object of strings`);
  for (const [key, value] of Object.entries(metadata)) {
    if (reserved.includes(key)) throw new MemgptError(`${path}: metadata key "${key}" is reserved`);
    if (typeof value !== 'string') throw new MemgptError(`${path}: metadata value of "${key}" is not a string`);
  }
  return metadata as Record<string, string>;
}

/** A stored tensor whose bytes are copied off the device only when the writer gets to it. */
function lazyStored(t: Tensor, dtype: 'F32' | 'BF16'): StoredTensor {
  return {
    dtype,
    shape: [...t.shape],
    get data() {
      const values = t.toArray() as Float32Array;
      return dtype === 'F32' ? float32Bytes(values) : bfloat16Bytes(values);
    },
  };
}

/** Writes the model's weights and config to `path` (atomically). */
export function saveModel(path: string, model: MemGPT, options: SaveModelOptions = {}): void {
  const dtype = options.dtype ?? 'float32';
  if (dtype !== 'float32' && dtype !== 'bfloat16') throw new MemgptError(`${path}: checkpoint dtype must be "float32" or "bfloat16" (got ${JSON.stringify(dtype)})`);
  const extra = checkExtraMetadata(path, options.metadata, [CONFIG_KEY, FORMAT_KEY]);
  const stored = dtype === 'float32' ? 'F32' : 'BF16';
  const tensors = parameterShapes(model.config).map(([name]): [string, StoredTensor] => {
    const p = model.params.get(name);
    if (!p) throw new MemgptError(`${path}: the model has no parameter ${name}`);
    return [name, lazyStored(p, stored)];
  });
  writeSafetensors(path, tensors, { ...extra, [CONFIG_KEY]: JSON.stringify(model.config), [FORMAT_KEY]: MODEL_FORMATS[model.config.specVersion] });
}

/** The config of a checkpoint, from its metadata (checked by resolveConfig); reads only the header. */
export function readModelConfig(path: string): ModelConfig {
  return configFromMetadata(path, readSafetensorsHeader(path).metadata);
}

function configFromMetadata(path: string, metadata: Record<string, string>): ModelConfig {
  const format = metadata[FORMAT_KEY];
  if (format === undefined) throw new MemgptError(`${path}: not a memgpt checkpoint (no "${FORMAT_KEY}" in its metadata)`);
  if (!READ_FORMATS.includes(format)) throw new MemgptError(`${path}: checkpoint format ${JSON.stringify(format)} is not supported (this version reads formats ${READ_FORMATS.join(' and ')})`);
  const text = metadata[CONFIG_KEY];
  if (text === undefined) throw new MemgptError(`${path}: not a memgpt checkpoint (no "${CONFIG_KEY}" in its metadata)`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new MemgptError(`${path}: "${CONFIG_KEY}" is not valid JSON (${(err as Error).message})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new MemgptError(`${path}: "${CONFIG_KEY}" is not a JSON object`);
  // Only dFF has a default in SPEC §1; every other key must be spelled out for the checkpoint to be portable.
  const required: (keyof ModelConfig)[] = ['vocabSize', 'dModel', 'nLayers', 'nHeads', 'segmentLen', 'memSlots', 'positional', 'copyHead', 'tokenizer'];
  for (const key of required) if (!(key in parsed)) throw new MemgptError(`${path}: "${CONFIG_KEY}" has no ${key}`);
  // Format "1" predates specVersion: its models compute SPEC v1. Format "2" names the version.
  const config = parsed as Partial<ModelConfig>;
  if (format === '1') {
    if (config.specVersion !== undefined && config.specVersion !== 1) throw new MemgptError(`${path}: a format "1" checkpoint cannot hold specVersion ${JSON.stringify(config.specVersion)}`);
    config.specVersion = 1;
  } else if (config.specVersion === undefined) {
    throw new MemgptError(`${path}: "${CONFIG_KEY}" has no specVersion`);
  }
  try {
    return resolveConfig(config);
  } catch (err) {
    throw new MemgptError(`${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** Every tensor the config needs is there with its shape and a float dtype, and nothing else is. */
function checkTensors(path: string, expected: [string, number[]][], names: Set<string>,
  tensors: Map<string, { dtype: string; shape: number[] }>): void {
  for (const [name, shape] of expected) {
    const t = tensors.get(name);
    if (!t) throw new MemgptError(`${path}: tensor ${name} is missing (the config needs ${shapeStr(shape)})`);
    if (t.shape.join() !== shape.join()) throw new MemgptError(`${path}: tensor ${name} is ${shapeStr(t.shape)} but the config needs ${shapeStr(shape)}`);
    if (t.dtype !== 'F32' && t.dtype !== 'BF16') throw new MemgptError(`${path}: tensor ${name} is ${t.dtype}; weights must be F32 or BF16`);
  }
  for (const name of tensors.keys()) if (!names.has(name)) throw new MemgptError(`${path}: unexpected tensor ${name} for this config`);
}

/** A model from a checkpoint: every tensor of the config present with its shape, none extra; BF16 widened to float32. */
export function loadModel(path: string, options: { device?: Device } = {}): MemGPT {
  // The header is checked against the config before any tensor data is read (a huge file with the wrong
  // tensors is refused without reading it).
  const header = readSafetensorsHeader(path);
  const config = configFromMetadata(path, header.metadata);
  const expected = parameterShapes(config);
  const names = new Set(expected.map(([n]) => n));
  checkTensors(path, expected, names, header.tensors);
  const { tensors } = readSafetensors(path);
  checkTensors(path, expected, names, tensors);  // the same file, unless it changed in between
  const params = new Map<string, Parameter>();
  try {
    for (const [name, shape] of expected) {
      const values = storedToFloat32(tensors.get(name)!);
      // A NaN or an infinity would load silently and surface later as a NaN loss or a failed sample: name it here.
      const bad = values.findIndex((v) => !Number.isFinite(v));
      if (bad >= 0) throw new MemgptError(`${path}: tensor ${name} holds ${values[bad]} at element ${bad}; weights must be finite`);
      params.set(name, parameter(tensor(values, shape, { device: options.device }), name));
    }
    return new MemGPT(config, params);
  } catch (err) {
    for (const p of params.values()) p.dispose();
    throw err;
  }
}

// ---------------------------------------------------------------- training state

type Optimizer = AdamW | SGD | null;

interface OptimizerRecord {
  kind: 'adamw' | 'sgd' | 'none';
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
  /** AdamW's step() calls. */
  step?: number;
  /** The optimizer's params by §2 name, in its order. */
  params?: string[];
}

function optimizerKind(optimizer: Optimizer): OptimizerRecord['kind'] {
  if (optimizer === null) return 'none';
  if (optimizer instanceof AdamW) return 'adamw';
  if (optimizer instanceof SGD) return 'sgd';
  throw new MemgptError('training state: the optimizer must be an AdamW, an SGD or null');
}

/** The §2 name of each of the optimizer's params. */
function paramNames(path: string, model: MemGPT, params: readonly Tensor[]): string[] {
  const byTensor = new Map<Tensor, string>();
  for (const [name, p] of model.params) byTensor.set(p, name);
  return params.map((p, i) => {
    const name = byTensor.get(p);
    if (name === undefined) throw new MemgptError(`${path}: the optimizer's params[${i}] ${shapeStr(p.shape)} is not a parameter of the model`);
    return name;
  });
}

/** A scalar I64 tensor (the per-param step count, as torch stores it). */
function int64Scalar(value: number): StoredTensor {
  return { dtype: 'I64', shape: [], data: new Uint8Array(BigInt64Array.of(BigInt(value)).buffer) };
}

/**
 * Writes the training state beside the model: AdamW's moments as "m.<name>" / "v.<name>" (F32) and its
 * per-param step counts as "step.<name>" (I64 scalars); the optimizer's kind and hyperparameters and the
 * trainer's state (any JSON value) in the metadata.
 */
export function saveTrainingState(path: string, model: MemGPT, optimizer: Optimizer, state: Record<string, unknown>, streamMemory?: Float32Array[]): void {
  const kind = optimizerKind(optimizer);
  let trainer: string;
  try {
    trainer = JSON.stringify(state);
  } catch (err) {
    throw new MemgptError(`${path}: the trainer state cannot be stored as JSON (${(err as Error).message})`);
  }
  if (typeof state !== 'object' || state === null || Array.isArray(state) || trainer === undefined) {
    throw new MemgptError(`${path}: the trainer state must be a JSON object`);
  }
  const record: OptimizerRecord = { kind };
  const tensors: [string, StoredTensor][] = [];
  if (optimizer instanceof AdamW) {
    const names = paramNames(path, model, optimizer.params);
    const s = optimizer.state();
    Object.assign(record, {
      lr: optimizer.lr, betas: [optimizer.beta1, optimizer.beta2], eps: optimizer.eps, weightDecay: optimizer.weightDecay,
      step: s.step, params: names,
    });
    names.forEach((name, i) => {
      tensors.push([`m.${name}`, lazyStored(s.m[i], 'F32')], [`v.${name}`, lazyStored(s.v[i], 'F32')]);
      tensors.push([`step.${name}`, int64Scalar(s.steps?.[i] ?? s.step)]);
    });
  } else if (optimizer instanceof SGD) {
    Object.assign(record, { lr: optimizer.lr, params: paramNames(path, model, optimizer.params) });
  }
  // Stream order: the memory each batch row carries into the next batch, [B, S, D] per layer (see lib/data/stream.ts).
  const { memSlots: S, dModel: D } = model.config;
  streamMemory?.forEach((m, l) => tensors.push([`${STREAM_MEMORY}${l}`, { dtype: 'F32', shape: [m.length / (S * D), S, D], data: float32Bytes(m) }]));
  writeSafetensors(path, tensors, { [TRAINER_KEY]: trainer, [OPTIMIZER_KEY]: JSON.stringify(record), [FORMAT_KEY]: CHECKPOINT_FORMAT });
}

/** Name prefix of the carried stream memory in a training state: stream.memory.{layer}. */
const STREAM_MEMORY = 'stream.memory.';

/**
 * The memory a stream-order run's batch rows carry into the next batch, as saveTrainingState stored it (per layer,
 * [batch, S, D] row-major), or null when the state holds none (the run had not drawn a batch yet).
 */
export function loadStreamMemory(path: string, model: MemGPT, batch: number): Float32Array[] | null {
  const { tensors } = readSafetensors(path);
  const { memSlots: S, dModel: D, nLayers: L } = model.config;
  const stored = Array.from({ length: L }, (_, l) => tensors.get(`${STREAM_MEMORY}${l}`));
  if (stored.every((t) => t === undefined)) return null;
  return stored.map((t, l) => {
    const key = `${STREAM_MEMORY}${l}`;
    if (!t) throw new MemgptError(`${path}: tensor ${key} is missing (the state holds the stream memory of other layers)`);
    if (t.dtype !== 'F32' || t.shape.join() !== [batch, S, D].join()) throw new MemgptError(`${path}: tensor ${key} is ${t.dtype} ${shapeStr(t.shape)}; this run carries F32 [${batch}, ${S}, ${D}]`);
    const v = storedToFloat32(t);
    const bad = v.findIndex((x) => !Number.isFinite(x));
    if (bad >= 0) throw new MemgptError(`${path}: tensor ${key} holds ${v[bad]} at element ${bad}; a memory must be finite`);
    return v;
  });
}

/**
 * Restores the optimizer saved by saveTrainingState (moments, step counts and lr, bit for bit) and returns
 * the trainer's state. The optimizer must be of the same kind, over the same params in the same order.
 */
export function loadTrainingState(path: string, model: MemGPT, optimizer: Optimizer): Record<string, unknown> {
  const kind = optimizerKind(optimizer);
  const { tensors: all, metadata } = readSafetensors(path);
  // The stream memory is read by loadStreamMemory; the optimizer's tensors are the rest.
  const tensors = new Map([...all].filter(([name]) => !name.startsWith(STREAM_MEMORY)));
  const parseJson = (key: string): unknown => {
    const text = metadata[key];
    if (text === undefined) throw new MemgptError(`${path}: not a memgpt training state (no "${key}" in its metadata)`);
    try {
      return JSON.parse(text);
    } catch (err) {
      throw new MemgptError(`${path}: "${key}" is not valid JSON (${(err as Error).message})`);
    }
  };
  const format = metadata[FORMAT_KEY];
  if (format !== undefined && !READ_FORMATS.includes(format)) throw new MemgptError(`${path}: training-state format ${JSON.stringify(format)} is not supported (this version reads formats ${READ_FORMATS.join(' and ')})`);
  const trainer = parseJson(TRAINER_KEY);
  if (typeof trainer !== 'object' || trainer === null || Array.isArray(trainer)) throw new MemgptError(`${path}: "${TRAINER_KEY}" is not a JSON object`);
  const record = parseJson(OPTIMIZER_KEY) as OptimizerRecord;
  if (typeof record !== 'object' || record === null || !['adamw', 'sgd', 'none'].includes(record.kind)) {
    throw new MemgptError(`${path}: "${OPTIMIZER_KEY}" does not name an optimizer kind`);
  }
  if (record.kind !== kind) throw new MemgptError(`${path}: the state was saved for optimizer "${record.kind}" but the run uses "${kind}"`);
  if (optimizer === null) {
    if (tensors.size > 0) throw new MemgptError(`${path}: unexpected tensor ${tensors.keys().next().value} (no optimizer state was saved)`);
    return trainer as Record<string, unknown>;
  }
  const names = paramNames(path, model, optimizer.params);
  if (!Array.isArray(record.params) || record.params.join('\n') !== names.join('\n')) {
    throw new MemgptError(`${path}: the state was saved for a different set of params (${record.params?.length ?? 0} saved, ${names.length} now, or in another order)`);
  }
  if (typeof record.lr !== 'number' || !(record.lr > 0)) throw new MemgptError(`${path}: "${OPTIMIZER_KEY}" has no valid lr`);
  if (optimizer instanceof SGD) {
    if (tensors.size > 0) throw new MemgptError(`${path}: unexpected tensor ${tensors.keys().next().value} (SGD has no state)`);
    optimizer.lr = record.lr;
    return trainer as Record<string, unknown>;
  }

  const expected = new Set<string>();
  const steps: number[] = [];
  names.forEach((name, i) => {
    const shape = optimizer.params[i].shape;
    for (const moment of ['m', 'v']) {
      const key = `${moment}.${name}`;
      expected.add(key);
      const t = tensors.get(key);
      if (!t) throw new MemgptError(`${path}: tensor ${key} is missing`);
      if (t.dtype !== 'F32') throw new MemgptError(`${path}: tensor ${key} is ${t.dtype}; moments must be F32`);
      if (t.shape.join() !== shape.join()) throw new MemgptError(`${path}: tensor ${key} is ${shapeStr(t.shape)} but the parameter is ${shapeStr(shape)}`);
    }
    const key = `step.${name}`;
    expected.add(key);
    const t = tensors.get(key);
    if (!t) throw new MemgptError(`${path}: tensor ${key} is missing`);
    if (t.dtype !== 'I64' || t.shape.length !== 0) throw new MemgptError(`${path}: tensor ${key} must be an I64 scalar (is ${t.dtype} ${shapeStr(t.shape)})`);
    const step = new BigInt64Array(t.data.slice().buffer)[0];
    if (step < 0n || step > BigInt(Number.MAX_SAFE_INTEGER)) throw new MemgptError(`${path}: tensor ${key} holds an impossible step count ${step}`);
    steps.push(Number(step));
  });
  for (const key of tensors.keys()) if (!expected.has(key)) throw new MemgptError(`${path}: unexpected tensor ${key}`);
  if (!Number.isSafeInteger(record.step) || record.step! < 0) throw new MemgptError(`${path}: "${OPTIMIZER_KEY}" has no valid step count`);

  tidy(() => {
    // A moment that is not finite would turn the first step's update, and every weight after it, into NaN: named here.
    // The second moment must also be ≥ 0 (a sum of squares): its square root is taken.
    const values = (moment: string, name: string) => {
      const v = storedToFloat32(tensors.get(`${moment}.${name}`)!);
      const bad = v.findIndex((x) => !Number.isFinite(x) || (moment === 'v' && x < 0));
      if (bad >= 0) throw new MemgptError(`${path}: tensor ${moment}.${name} holds ${v[bad]} at element ${bad}; optimizer moments must be finite${moment === 'v' ? ' and ≥ 0' : ''}`);
      return v;
    };
    const load = (moment: string) => names.map((name, i) => tensor(values(moment, name), optimizer.params[i].shape, { device: optimizer.params[i].device }));
    optimizer.loadState({ m: load('m'), v: load('v'), step: record.step!, steps });
  });
  optimizer.lr = record.lr;
  return trainer as Record<string, unknown>;
}
