// The model's configuration (SPEC.md §1), the named presets (§6), and the
// parameter names and shapes (§2) that every backend and checkpoint uses.
// specVersion says which version of SPEC.md's function the model computes: 2 for new models; 1 is what
// checkpoints of format "1" hold (they load, evaluate and train as they were).
import { MemgptError } from '../core/errors.js';

export interface ModelConfig {
  vocabSize: number;
  dModel: number;
  nLayers: number;
  nHeads: number;
  dFF: number;
  segmentLen: number;
  memSlots: number;
  positional: 'rope' | 'sinusoidal';
  copyHead: boolean;
  tokenizer: 'byte' | 'gpt2';
  /** The version of SPEC.md's model function: 2 (positional memory, the default) or 1. */
  specVersion: SpecVersion;
}

export type SpecVersion = 1 | 2;
/** The version of the model function that new models compute. */
export const CURRENT_SPEC_VERSION: SpecVersion = 2;

export type PresetName = 'tiny' | 'small' | 'base';

export const presets: Record<PresetName, ModelConfig> = {
  tiny: { tokenizer: 'byte', vocabSize: 256, dModel: 64, nLayers: 2, nHeads: 2, dFF: 256, segmentLen: 32, memSlots: 8, copyHead: true, positional: 'rope', specVersion: 2 },
  small: { tokenizer: 'byte', vocabSize: 256, dModel: 256, nLayers: 4, nHeads: 4, dFF: 1024, segmentLen: 128, memSlots: 16, copyHead: true, positional: 'rope', specVersion: 2 },
  base: { tokenizer: 'gpt2', vocabSize: 50257, dModel: 768, nLayers: 12, nHeads: 12, dFF: 3072, segmentLen: 512, memSlots: 64, copyHead: true, positional: 'rope', specVersion: 2 },
};

/** Fills defaults (dFF = 4·dModel, vocabSize from the tokenizer) and checks every key; throws one clear error. */
/** The largest value each size key may take (see resolveConfig). */
export const CONFIG_MAXIMA = {
  vocabSize: 1 << 20, dModel: 1 << 14, nLayers: 512, nHeads: 256, dFF: 1 << 17, segmentLen: 1 << 16, memSlots: 1 << 12,
} as const;
/** The most parameters a config may describe: 2^34, about 17 billion. */
export const MAX_PARAMETERS = 2 ** 34;

/** The number of parameters of a config (SPEC §2), computed without listing them. */
function parameterCount(cfg: ModelConfig): number {
  const { vocabSize: V, dModel: D, dFF: F, memSlots: S, segmentLen: T } = cfg;
  // Per layer, a generous upper bound: attention 4D² + FFN 2DF + the memory's projections (a few D²) and slots.
  const perLayer = 4 * D * D + 2 * D * F + (S > 0 ? 8 * D * D + S * D + S * T : 0) + 16 * D + 2 * F;
  return V * D + cfg.nLayers * perLayer + 4 * D;
}

export function resolveConfig(partial: Partial<ModelConfig>): ModelConfig {
  const tokenizer = partial.tokenizer ?? 'byte';
  if (tokenizer !== 'byte' && tokenizer !== 'gpt2') throw new MemgptError(`config: tokenizer must be "byte" or "gpt2" (got ${JSON.stringify(tokenizer)})`);
  const dModel = partial.dModel ?? 64;
  const cfg: ModelConfig = {
    tokenizer,
    vocabSize: partial.vocabSize ?? (tokenizer === 'byte' ? 256 : 50257),
    dModel,
    nLayers: partial.nLayers ?? 2,
    nHeads: partial.nHeads ?? 2,
    dFF: partial.dFF ?? 4 * dModel,
    segmentLen: partial.segmentLen ?? 32,
    memSlots: partial.memSlots ?? 8,
    positional: partial.positional ?? 'rope',
    copyHead: partial.copyHead ?? true,
    specVersion: partial.specVersion ?? CURRENT_SPEC_VERSION,
  };
  const positive = ['vocabSize', 'dModel', 'nLayers', 'nHeads', 'dFF', 'segmentLen'] as const;
  for (const key of positive) {
    if (!Number.isSafeInteger(cfg[key]) || cfg[key] < 1) throw new MemgptError(`config: ${key} must be a positive integer (got ${JSON.stringify(cfg[key])})`);
  }
  if (!Number.isSafeInteger(cfg.memSlots) || cfg.memSlots < 0) throw new MemgptError(`config: memSlots must be a non-negative integer (got ${JSON.stringify(cfg.memSlots)})`);
  // Bounds far past any model this library can train, so that a hostile config (nLayers 1e9 in a small file) is
  // refused before anything is allocated for it.
  for (const [key, max] of Object.entries(CONFIG_MAXIMA) as [keyof typeof CONFIG_MAXIMA, number][]) {
    if (cfg[key] > max) throw new MemgptError(`config: ${key} ${cfg[key]} is more than ${max}, the most memgpt accepts`);
  }
  const params = parameterCount(cfg);
  if (params > MAX_PARAMETERS) throw new MemgptError(`config: ${params.toExponential(2)} parameters is more than ${MAX_PARAMETERS.toExponential(2)}, the most memgpt accepts`);
  if (cfg.dModel % cfg.nHeads !== 0) throw new MemgptError(`config: dModel ${cfg.dModel} is not divisible by nHeads ${cfg.nHeads}`);
  const headDim = cfg.dModel / cfg.nHeads;
  if (cfg.positional !== 'rope' && cfg.positional !== 'sinusoidal') throw new MemgptError(`config: positional must be "rope" or "sinusoidal" (got ${JSON.stringify(cfg.positional)})`);
  if (cfg.positional === 'rope' && headDim % 2 !== 0) throw new MemgptError(`config: RoPE needs an even head width (dModel/nHeads = ${headDim})`);
  if (cfg.positional === 'sinusoidal' && cfg.dModel % 2 !== 0) throw new MemgptError(`config: sinusoidal positions need an even dModel (got ${cfg.dModel})`);
  if (typeof cfg.copyHead !== 'boolean') throw new MemgptError('config: copyHead must be true or false');
  if (cfg.specVersion !== 1 && cfg.specVersion !== 2) throw new MemgptError(`config: specVersion must be 1 or 2 (got ${JSON.stringify(cfg.specVersion)})`);
  if (tokenizer === 'byte' && cfg.vocabSize < 256) throw new MemgptError(`config: the byte tokenizer needs vocabSize ≥ 256 (got ${cfg.vocabSize})`);
  if (tokenizer === 'gpt2' && cfg.vocabSize < 50257) throw new MemgptError(`config: the gpt2 tokenizer needs vocabSize ≥ 50257 (got ${cfg.vocabSize})`);
  const known = new Set<string>(Object.keys(cfg));
  for (const key of Object.keys(partial)) if (!known.has(key)) throw new MemgptError(`config: unknown key "${key}"`);
  return cfg;
}

/** Every parameter of SPEC.md §2, in a fixed order, with its shape. */
export function parameterShapes(cfg: ModelConfig): [name: string, shape: number[]][] {
  const { vocabSize: V, dModel: D, nHeads: H, dFF: F, memSlots: S } = cfg;
  const out: [string, number[]][] = [['tok_emb', [V, D]]];
  for (let l = 0; l < cfg.nLayers; l++) {
    const p = `layers.${l}.`;
    out.push(
      [`${p}ln1.weight`, [D]], [`${p}ln1.bias`, [D]],
      [`${p}attn.qkv.weight`, [3 * D, D]], [`${p}attn.qkv.bias`, [3 * D]],
      [`${p}attn.out.weight`, [D, D]], [`${p}attn.out.bias`, [D]],
    );
    if (S > 0) {
      out.push(
        [`${p}mem.init`, [S, D]],
        [`${p}mem.ln.weight`, [D]], [`${p}mem.ln.bias`, [D]],
        [`${p}mem.kv.weight`, [2 * D, D]], [`${p}mem.kv.bias`, [2 * D]],
        [`${p}mem.gate.weight`, [H, D]], [`${p}mem.gate.bias`, [H]],
        [`${p}ptr.ln.weight`, [D]], [`${p}ptr.ln.bias`, [D]],
        [`${p}ptr.q.weight`, [D, D]], [`${p}ptr.k.weight`, [D, D]], [`${p}ptr.v.weight`, [D, D]],
      );
      if (cfg.specVersion >= 2) out.push([`${p}ptr.pos`, [S, cfg.segmentLen]]);
      out.push([`${p}mem.update.weight`, [D, 2 * D]], [`${p}mem.update.bias`, [D]]);
    }
    out.push(
      [`${p}ln2.weight`, [D]], [`${p}ln2.bias`, [D]],
      [`${p}ffn.fc1.weight`, [F, D]], [`${p}ffn.fc1.bias`, [F]],
      [`${p}ffn.fc2.weight`, [D, F]], [`${p}ffn.fc2.bias`, [D]],
    );
  }
  out.push(['ln_f.weight', [D]], ['ln_f.bias', [D]]);
  if (cfg.copyHead) out.push(['copy.q.weight', [D, D]], ['copy.k.weight', [D, D]], ['copy.gen.weight', [1, D]], ['copy.gen.bias', [1]]);
  return out;
}
