// Why a pass-key run learns or not, read from its checkpoint: for fresh held-out documents, where each layer's memory
// write points in segment 0 (the pointer's mass on the 5 key digits and on the key sentence's words, by slot), and how
// much of each slot survives from the first write to the last one before the question (the cosine of the slot's
// two states), beside the run's final write gates. A run that answers points free slots at the digits and keeps them.
// Usage: npx tsx bench/passkey-probe.ts RUN_DIR [RUN_DIR ...] [--docs 40] [--out FILE.json]
//        (RUN_DIR: a pass-key run folder of bench/passkey.ts, holding model.safetensors and metrics.jsonl)
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import * as mg from '../lib/index.js';
import { loadModel } from '../lib/io/checkpoint.js';
import { passkeyDocument } from '../lib/data/index.js';
import { longPasskeyTask } from '../lib/tasks/passkey.js';
import { attention } from '../lib/ops/attention.js';
import { embedding, layerNorm } from '../lib/ops/norm.js';
import type { MemGPT } from '../lib/nn/model.js';

const { values: f, positionals: runs } = parseArgs({ allowPositionals: true, options: { docs: { type: 'string', default: '40' }, out: { type: 'string' } } });

interface LayerProbe { keyDigits: number[]; keySentence: number[]; kept: number[]; finalWriteGate: number }

/** The layer-by-layer probe of one model over `docs` documents (seeded, the same for every run). */
function probe(model: MemGPT, docs: number): LayerProbe[] {
  const { nLayers: L, memSlots: S, segmentLen: T, dModel: D, nHeads: H } = model.config;
  const P = (l: number, n: string) => model.params.get(`layers.${l}.${n}`)!;
  const out = Array.from({ length: L }, () => ({ keyDigits: new Array(S).fill(0), keySentence: new Array(S).fill(0), kept: new Array(S).fill(0), finalWriteGate: NaN }));
  const rng = new mg.Rng(4242);
  for (let n = 0; n < docs; n++) {
    const doc = passkeyDocument(rng, longPasskeyTask);
    const keyAt = doc.text.indexOf(doc.key), sentenceAt = doc.text.indexOf('The pass key is');
    mg.tidy(() => {
      let memory = model.initialMemory(1);
      const states: Float32Array[][] = [];
      for (let seg = 0; seg < longPasskeyTask.segments - 1; seg++) {
        const ids = Int32Array.from({ length: T }, (_, t) => doc.text.charCodeAt(seg * T + t));
        let h = embedding(mg.tensor(ids, [1, T], { dtype: 'int32' }), model.params.get('tok_emb')!);
        const next: mg.Tensor[] = [];
        for (let l = 0; l < L; l++) {
          h = model.block(l, h, (qkv, g) => attention(qkv, { nHeads: H, rope: true, memKV: model.memoryKV(l, memory[l]), gateLogits: g!, memoryRead: model.memoryRead }));
          if (seg === 0) {
            // SPEC §3's pointer: softmax over tokens of (M·Wpqᵀ)(c·Wpkᵀ)ᵀ/√D + ptr.pos, c = LN(h)
            const c = layerNorm(h, P(l, 'ptr.ln.weight'), P(l, 'ptr.ln.bias')).toArray();
            const mq = mg.matmul(memory[l], model.pointerQuery(l)).toArray();
            const pos = P(l, 'ptr.pos').toArray();
            for (let j = 0; j < S; j++) {
              const sc = Array.from({ length: T }, (_, t) => {
                let s = 0;
                for (let i = 0; i < D; i++) s += mq[j * D + i] * c[t * D + i];
                return s / Math.sqrt(D) + pos[j * T + t];
              });
              const mx = Math.max(...sc), e = sc.map((x) => Math.exp(x - mx)), z = e.reduce((a, b) => a + b, 0);
              for (let k = 0; k < doc.key.length; k++) out[l].keyDigits[j] += e[keyAt + k] / z / docs;
              for (let k = 0; k < 'The pass key is'.length; k++) out[l].keySentence[j] += e[sentenceAt + k] / z / docs;
            }
          }
          next.push(model.writeMemory(l, memory[l], h).M);
        }
        memory = next;
        states.push(memory.map((m) => m.toArray() as Float32Array));
      }
      for (let l = 0; l < L; l++) {
        for (let j = 0; j < S; j++) {
          const a = states[0][l].subarray(j * D, (j + 1) * D), b = states[states.length - 1][l].subarray(j * D, (j + 1) * D);
          let ab = 0, aa = 0, bb = 0;
          for (let i = 0; i < D; i++) { ab += a[i] * b[i]; aa += a[i] * a[i]; bb += b[i] * b[i]; }
          out[l].kept[j] += ab / Math.sqrt(aa * bb) / docs;
        }
      }
    });
  }
  return out;
}

const report = [];
for (const dir of runs) {
  const model = loadModel(join(dir, 'model.safetensors'));
  try {
    const layers = probe(model, Number(f.docs));
    const lines = readFileSync(join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n');
    const last = JSON.parse(lines[lines.length - 1]) as { step: number; memory?: { writeGate: number }[] };
    layers.forEach((p, l) => (p.finalWriteGate = last.memory?.[l]?.writeGate ?? NaN));
    const round = (xs: number[]) => xs.map((x) => +x.toFixed(3));
    report.push({ run: dir, step: last.step, layers: layers.map((p) => ({ keyDigits: round(p.keyDigits), keySentence: round(p.keySentence), kept: round(p.kept), finalWriteGate: +p.finalWriteGate.toFixed(3) })) });
    console.log(`${dir} (step ${last.step})`);
    layers.forEach((p, l) => console.log(`  layer ${l}: write gate ${p.finalWriteGate.toFixed(2)}; pointer on the key digits by slot ${round(p.keyDigits).join(' ')}; kept (cos) ${p.kept.map((x) => x.toFixed(2)).join(' ')}`));
  } finally {
    model.dispose();
  }
}
if (f.out) writeFileSync(f.out, JSON.stringify({ what: 'pass-key memory probe (bench/passkey-probe.ts)', docs: Number(f.docs), date: new Date().toISOString(), runs: report }, null, 2) + '\n');
