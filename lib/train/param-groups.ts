// The parameter groups of a model by their SPEC §2 names: which get weight decay, and the per-group gradient
// norms that the training diagnostics report (where the learning signal goes).
import type { Parameter } from '../core/tensor.js';
import { gradNorm } from '../ops/optim.js';

/** What these helpers read of a model: its parameters by name (a MemGPT is one). */
interface NamedParameters {
  readonly params: Map<string, Parameter>;
}

/** Parameter groups whose gradient norms the diagnostics report: where the learning signal goes. */
export type ParamGroup = 'attention' | 'memoryRead' | 'memoryWrite' | 'ffn' | 'embeddingAndHead' | 'norms';

/** The group of a parameter, by its SPEC §2 name. */
export function paramGroup(name: string): ParamGroup {
  if (/\.attn\./.test(name)) return 'attention';
  if (/\.mem\.(ln|kv|gate)\./.test(name)) return 'memoryRead';
  if (/\.(ptr\.|mem\.update|mem\.init)/.test(name)) return 'memoryWrite';
  if (/\.ffn\./.test(name)) return 'ffn';
  if (/(^|\.)ln(\d|_f)?\./.test(name)) return 'norms';
  return 'embeddingAndHead';
}

export function groupGradNorms(model: NamedParameters): Record<ParamGroup, number> {
  const sums: Record<ParamGroup, number> = { attention: 0, memoryRead: 0, memoryWrite: 0, ffn: 0, embeddingAndHead: 0, norms: 0 };
  for (const [name, p] of model.params) {
    if (!p.grad) continue;
    sums[paramGroup(name)] += gradNorm([p]) ** 2;
  }
  for (const k of Object.keys(sums) as ParamGroup[]) sums[k] = Math.sqrt(sums[k]);
  return sums;
}

/** Weight decay goes to the matrices only: not to norms, biases or the memory's initial state. */
export function noDecay(model: NamedParameters): Parameter[] {
  return [...model.params].filter(([name, p]) => p.rank < 2 || name.endsWith('mem.init')).map(([, p]) => p);
}
