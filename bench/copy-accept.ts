// Segmented-copy acceptance runs (the memory's second acceptance task): for each seed, trains the tiny model (8 slots) on the copy
// task through the library's trainer (bench/copy-task.ts) with its memory and, with --mem-slots 8,0,
// without; then scores greedy teacher-forced token accuracy on the copied half of fresh samples.
// Usage: npx tsx bench/copy-accept.ts [--seeds 0,1,2] [--mem-slots 8] [--steps N] [--held-out 200] [--out FILE]
//          [--register-slots N]   (SPEC v2 ablation: how many slots ptr.pos starts as a shift register; default ⌈S/2⌉)
//          [--read-bias X]        (ablation of the init: the read gates' bias mem.gate.bias; default the memory
//                                  tasks' 2, lib/tasks/passkey.ts)
import { writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';

import { runTraining } from '../lib/cli/train.js';
import { copyAccuracy, copyTask, copyTrainer } from './copy-task.js';
import { numThreads } from '../lib/index.js';
import { restartShiftRegister, setReadGateBias } from '../lib/nn/model.js';

const { values: f } = parseArgs({
  options: {
    seeds: { type: 'string', default: '0,1,2' }, 'mem-slots': { type: 'string', default: '8' }, steps: { type: 'string' },
    'held-out': { type: 'string', default: '200' }, out: { type: 'string', default: 'bench/results/copy-cpu.json' },
    'run-dir': { type: 'string', default: '/tmp/memgpt-copy' }, 'register-slots': { type: 'string' }, 'read-bias': { type: 'string' },
  },
});
const task = { ...copyTask, ...(f.steps ? { steps: Number(f.steps) } : {}) };
const runs = [];
for (const seed of f.seeds!.split(',').map(Number)) {
  for (const memSlots of f['mem-slots']!.split(',').map(Number)) {
    const start = performance.now();
    const trainer = copyTrainer(task, memSlots, seed, `${f['run-dir']}/seed-${seed}`);
    if (f['register-slots'] !== undefined) restartShiftRegister(trainer.model, Number(f['register-slots']));
    if (f['read-bias'] !== undefined && memSlots > 0) setReadGateBias(trainer.model, Number(f['read-bias']));
    try {
      await runTraining(trainer, false, `copy seed ${seed}, memSlots ${memSlots}`);
      const score = copyAccuracy(trainer.model, Number(f['held-out']), 1_000_003 + seed);
      const run = { seed, memSlots, ...(f['register-slots'] !== undefined ? { registerSlots: Number(f['register-slots']) } : {}), ...(f['read-bias'] !== undefined ? { readBias: Number(f['read-bias']) } : {}), ...score, trainSeconds: Math.round((performance.now() - start) / 1000) };
      console.log(JSON.stringify(run));
      runs.push(run);
    } finally {
      trainer.dispose();
      trainer.model.dispose();
    }
  }
}
writeFileSync(f.out!, JSON.stringify({
  what: 'segmented copy: greedy teacher-forced token accuracy on the copied half of held-out samples (24 symbols of 16, segments of 8)',
  task, model: 'tiny preset (D 64, 2 layers, 2 heads, byte tokenizer, copy head) with segmentLen 8 and rope',
  chance: 1 / 16, machine: { cpu: cpus()[0]?.model, threads: numThreads() }, date: new Date().toISOString(), runs,
}, null, 2) + '\n');
console.log(`wrote ${f.out}`);
