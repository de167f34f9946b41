// Experiment knobs shared by the task exploration scripts: re-draw or fill parameters of a fresh
// model by name, from flags like --init 'mem.init=1,ptr.q=0.125' (normal std) and --bias 'mem.gate.bias=0'.
import type { MemGPT } from '../lib/nn/model.js';
import { Rng } from '../lib/core/random.js';

const pairs = (spec: string) => spec.split(',').filter(Boolean).map((kv) => kv.split('=')).map(([k, v]) => [new RegExp(k), Number(v)] as const);

export function applyInitOverrides(model: MemGPT, init: string, bias: string, seed: number): void {
  const rng = new Rng(seed + 77);
  for (const [name, p] of model.params) {
    for (const [re, std] of pairs(init)) {
      if (!re.test(name)) continue;
      const v = new Float32Array(p.size);
      rng.fillNormal(v, 0, std);
      p.storage.backend.copyFromHost(p.handle, 0, v);
    }
    for (const [re, value] of pairs(bias)) if (re.test(name)) p.storage.backend.copyFromHost(p.handle, 0, new Float32Array(p.size).fill(value));
  }
}
