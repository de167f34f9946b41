// Profile harness: tiny preset training steps (memory or not), for --cpu-prof.
import * as mg from '/work/main/lib/index.js';
import { presets } from '/work/main/lib/nn/config.js';
import { MemGPT } from '/work/main/lib/nn/model.js';
const mem = process.argv[2] !== '0';
const cfg = { ...presets.tiny, memSlots: mem ? 8 : 0 };
const model = MemGPT.init(cfg, { seed: 0 });
const params = [...model.params.values()];
const opt = new mg.AdamW(params, { lr: 1e-3, weightDecay: 0.1 });
const B = 8, K = 4, N = K * cfg.segmentLen;
const rng = new mg.Rng(1);
const tokens = Int32Array.from({ length: B * (N + 1) }, () => rng.int(256));
const steps = Number(process.argv[3] ?? 200);
const t0 = performance.now();
for (let i = 0; i < steps; i++) {
  mg.tidy(() => model.forward(tokens, B, K).loss.backward());
  mg.clipGradNorm(params, 1);
  opt.step();
  opt.zeroGrad();
}
console.log(`${mem ? 'mem' : 'mem0'} ${((performance.now() - t0) / steps).toFixed(2)} ms/step`);
