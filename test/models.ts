// Shared fixtures for the whole-model tests: a model whose every weight is
// random and large enough to matter (init() is too gentle to test with), its
// weights as the plain reference takes them, and token streams with repeats.
import * as mg from '../lib/index.js';
import type { ModelConfig } from '../lib/nn/config.js';
import { MemGPT } from '../lib/nn/model.js';
import type { RefParams } from './reference_model.js';

export function randomModel(cfg: Partial<ModelConfig>, seed: number): MemGPT {
  const model = MemGPT.init(cfg, { seed, device: 'cpu' });
  const rng = new mg.Rng(seed + 100);
  for (const [name, p] of model.params) {
    const values = new Float32Array(p.size);
    const isNormWeight = /ln\d?\.weight$|ln_f\.weight$|mem\.ln\.weight$|ptr\.ln\.weight$/.test(name);
    const std = name === 'tok_emb' || name.endsWith('mem.init') ? 1 : isNormWeight || name.endsWith('bias') ? 0.2 : 0.3;
    rng.fillNormal(values, isNormWeight ? 1 : 0, std);
    p.storage.backend.copyFromHost(p.handle, 0, values);
  }
  return model;
}

export function refParams(model: MemGPT): RefParams {
  return new Map([...model.params].map(([name, p]) => [name, Float64Array.from(p.toArray())]));
}

/** Ids drawn from the first 12 symbols only, so the copy head finds earlier matches. */
export function randomTokens(n: number, seed: number): Int32Array {
  const rng = new mg.Rng(seed);
  return Int32Array.from({ length: n }, () => rng.int(12));
}
