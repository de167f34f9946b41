// Pass-key acceptance runs (the memory's first acceptance task): for each seed, trains the tiny model on the long pass-key
// task (4 segments of 64 bytes, key in the first, question at the end of the last) with its memory
// and with memSlots = 0, through the library's own trainer (lib/tasks/passkey.ts), then scores
// greedy decoding of held-out keys. Writes one JSON report.
// Usage: npx tsx bench/passkey.ts [--seeds 0,1,2] [--steps N] [--held-out 200] [--out bench/results/passkey-cpu.json]
//          [--segments 4] [--segment-len 64] [--mem-slots 8,0] [--register-slots N] [--update-bias X] [--lr X]
//          [--read-bias X]
//          (ablations of the init: --register-slots, how many slots ptr.pos starts as a shift register, default ⌈S/2⌉;
//          --update-bias, the write gate's bias mem.update.bias, default 0: σ(0) = a half-open gate; --read-bias,
//          the read gate's bias mem.gate.bias, default the memory tasks' 2, lib/tasks/passkey.ts)
import { writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';

import { runTraining } from '../lib/cli/train.js';
import { longPasskeyTask, passkeyAccuracy, passkeyTrainer } from '../lib/tasks/passkey.js';
import { numThreads } from '../lib/index.js';
import { restartShiftRegister, setReadGateBias, setWriteGateBias } from '../lib/nn/model.js';

const { values: f } = parseArgs({
  options: {
    seeds: { type: 'string', default: '0,1,2' }, steps: { type: 'string' }, 'held-out': { type: 'string', default: '200' },
    out: { type: 'string', default: 'bench/results/passkey-cpu.json' }, segments: { type: 'string' }, 'segment-len': { type: 'string' },
    'mem-slots': { type: 'string', default: '8,0' }, 'register-slots': { type: 'string' }, 'update-bias': { type: 'string' }, lr: { type: 'string' }, 'run-dir': { type: 'string', default: '/tmp/memgpt-passkey' },
    'read-bias': { type: 'string' },
  },
});
const task = {
  ...longPasskeyTask,
  ...(f.steps ? { steps: Number(f.steps) } : {}),
  ...(f.segments ? { segments: Number(f.segments) } : {}),
  ...(f['segment-len'] ? { segmentLen: Number(f['segment-len']) } : {}),
  ...(f.lr ? { lr: Number(f.lr) } : {}),
};
const heldOut = Number(f['held-out']);
const runs = [];
for (const seed of f.seeds!.split(',').map(Number)) {
  for (const memSlots of f['mem-slots']!.split(',').map(Number)) {
    const start = performance.now();
    const trainer = passkeyTrainer(task, memSlots, seed, `${f['run-dir']}/seed-${seed}`);
    try {
      if (f['register-slots'] !== undefined) restartShiftRegister(trainer.model, Number(f['register-slots']));
      if (f['update-bias'] !== undefined) setWriteGateBias(trainer.model, Number(f['update-bias']));
      if (f['read-bias'] !== undefined) setReadGateBias(trainer.model, Number(f['read-bias']));
      await runTraining(trainer, false, `seed ${seed}, memSlots ${memSlots}`);
      const score = passkeyAccuracy(trainer.model, task, heldOut, 1_000_003 + seed);
      const run = { seed, memSlots, ...(f['register-slots'] !== undefined ? { registerSlots: Number(f['register-slots']) } : {}), ...(f['update-bias'] !== undefined ? { updateBias: Number(f['update-bias']) } : {}), ...(f['read-bias'] !== undefined ? { readBias: Number(f['read-bias']) } : {}), ...score, trainSeconds: Math.round((performance.now() - start) / 1000), runDir: trainer.files.dir };
      console.log(JSON.stringify(run));
      runs.push(run);
    } finally {
      trainer.dispose();
      trainer.model.dispose();
    }
  }
}
const report = {
  what: 'pass-key across segments: greedy exact-match accuracy on held-out keys, with memory (8 slots) and with memSlots = 0',
  task, model: 'tiny preset (D 64, 2 layers, 2 heads, byte tokenizer, copy head, rope) with segmentLen = task.segmentLen',
  chance: { exact: 1 / 90000, digits: 0.1 },
  machine: { cpu: cpus()[0]?.model, threads: numThreads() },
  date: new Date().toISOString(),
  runs,
};
writeFileSync(f.out!, JSON.stringify(report, null, 2) + '\n');
console.log(`wrote ${f.out}`);
