// The memory's start (SPEC v2 §2's initialisation of ptr.pos) and the init ablations that the benchmarks and the
// memory tasks apply on top of it: the shift register, the read- and write-gate biases.
import { MemgptError } from '../core/errors.js';
import { writeHost, type Parameter } from '../core/tensor.js';
import type { ModelConfig } from './config.js';

/** What these helpers touch of a model: its config and its parameters by name (a MemGPT is one). */
export interface ModelParameters {
  readonly config: ModelConfig;
  readonly params: Map<string, Parameter>;
}

/**
 * SPEC v2's pointer bias at initialisation: the last ⌈S/2⌉ slots start as a shift register — slot j preferring the
 * segment's token T − S + j by 8 nats, so that they hand the next segment what this one ended with, at the positions
 * its read expects (the last token in slot S − 1, the nearest) — and the other slots start unbiased, free to point
 * by content at whatever is worth keeping longer. (Measured on the books benchmark's KJV Bible: a shift register of
 * every slot, 1.975 bits/byte; of half of them, 1.967; strength 2, 4, 8: 2.099, 2.097, 2.086.)
 */
export function fillShiftRegister(values: Float32Array, S: number, T: number, strength = 8, registerSlots = Math.ceil(S / 2)): void {
  values.fill(0);
  for (let j = S - registerSlots; j < S; j++) {
    const t = T - S + j;
    if (t >= 0) values[j * T + t] = strength;
  }
}

/** Sets every layer's write-gate bias mem.update.bias to `value` (an ablation of the init: 0 starts the gate half open). */
export function setWriteGateBias(model: ModelParameters, value: number): void {
  fillLayerBias(model, 'mem.update.bias', value, 'write-gate');
}

/**
 * Sets every layer's read-gate bias mem.gate.bias to `value` (an ablation of the init: with SPEC v2's joint read, 0
 * gives the memory its share of one softmax over slots and tokens, S/(S + p + 1) at position p when the scores are
 * alike, so little at the end of a long segment; a positive bias reads more of it from the start).
 */
export function setReadGateBias(model: ModelParameters, value: number): void {
  fillLayerBias(model, 'mem.gate.bias', value, 'read-gate');
}

function fillLayerBias(model: ModelParameters, name: string, value: number, what: string): void {
  if (!Number.isFinite(value)) throw new MemgptError(`the ${what} bias must be a finite number, got ${value}`);
  for (let l = 0; l < model.config.nLayers && model.config.memSlots > 0; l++) {
    const b = model.params.get(`layers.${l}.${name}`)!;
    writeHost(b, new Float32Array(b.size).fill(value));
  }
}

/** Restarts every layer's ptr.pos (SPEC v2) as a shift register of registerSlots slots at strength (an ablation of the init above). */
export function restartShiftRegister(model: ModelParameters, registerSlots: number, strength = 8): void {
  const { nLayers, memSlots, segmentLen, specVersion } = model.config;
  if (memSlots === 0 || specVersion < 2) return;
  if (!Number.isInteger(registerSlots) || registerSlots < 0 || registerSlots > memSlots) {
    throw new MemgptError(`register slots must be an integer in 0…${memSlots}, got ${registerSlots}`);
  }
  const values = new Float32Array(memSlots * segmentLen);
  fillShiftRegister(values, memSlots, segmentLen, strength, registerSlots);
  for (let l = 0; l < nLayers; l++) {
    writeHost(model.params.get(`layers.${l}.ptr.pos`)!, values);
  }
}
