// The decoding ops against the training ops they stand in for: attentionDecode's row for each sequence equals
// that row of the full attention (to float32 rounding: on the CPU the decode task is the forward's at one row), in every
// memory read mode, with and without RoPE and memory, in float32 and bfloat16; scatterRows writes each
// sequence's row at its own position and nothing else; copyMixProbs is a distribution whose −log P(y) equals
// tokenNLL's with the copy head, row by row. Bad shapes are clear errors; nothing leaks.
import { describe, expect, it } from 'vitest';

import * as mg from '../lib/index.js';
import { BatchDecoder } from '../lib/infer/decoder.js';
import { Decoder } from '../lib/infer/single-decoder.js';
import type { ModelConfig } from '../lib/nn/config.js';
import { MemGPT } from '../lib/nn/model.js';
import { expectClose, expectNoLeaks, forEachDevice, randomArray } from './helpers.js';
import { randomModel, randomTokens } from './models.js';

forEachDevice((device) => {
  const opts = { device };
  const int32 = { device, dtype: 'int32' as const };

  describe('attentionDecode', () => {
    const cases: { rope: boolean; S: number; memoryRead?: mg.MemoryRead; T: number }[] = [
      { rope: true, S: 0, T: 9 },
      { rope: false, S: 0, T: 70 },
      { rope: true, S: 3, memoryRead: 'gated', T: 9 },
      { rope: true, S: 5, memoryRead: 'positional', T: 70 },
      { rope: false, S: 2, memoryRead: 'positional', T: 5 },
      { rope: true, S: 4, memoryRead: 'joint', T: 33 },
      { rope: true, S: 130, memoryRead: 'positional', T: 140 },
    ];
    for (const dtype of ['float32', 'bfloat16'] as const) {
      for (const c of cases) {
        it(`equals the full attention's row at each sequence's position (${dtype}, rope ${c.rope}, S ${c.S}${c.memoryRead ? `, ${c.memoryRead}` : ''}, T ${c.T})`, () => {
          expectNoLeaks(device, () => mg.tidy(() => {
            const B = 4, H = 2, d = 8, D = H * d, { T, S } = c;
            const qkv = mg.cast(mg.tensor(randomArray(B * T * 3 * D, 1), [B, T, 3 * D], opts), dtype);
            const memKV = S ? mg.cast(mg.tensor(randomArray(B * S * 2 * D, 2), [B, S, 2 * D], opts), dtype) : undefined;
            const gateHost = randomArray(B * T * H, 3, -3, 3);
            const gate = S ? mg.cast(mg.tensor(gateHost, [B, T, H], opts), dtype) : undefined;
            const full = mg.cast(mg.attention(qkv, { nHeads: H, rope: c.rope, memKV, gateLogits: gate, memoryRead: c.memoryRead }), 'float32').toArray();
            // Token by token, each sequence starting at its own step (so at its own position), the last sitting
            // every third step out: every row decoded equals the full attention's row.
            const qkvHost = mg.cast(qkv, 'float32').toArray();
            const start = [0, 2, 1, 3];
            const cache = { keys: mg.zeros(mg.decodeKeyShape(B, H, d, T), opts), values: mg.cast(mg.zeros([B, H, T, d], opts), dtype) };
            const memory = memKV ? mg.decodeMemory(memKV, { nHeads: H, rope: c.rope, memoryRead: c.memoryRead }) : undefined;
            const fed = [0, 0, 0, 0];
            for (let step = 0; fed.some((n) => n < T); step++) {
              const positions = fed.map((n, b) => (step >= start[b] && n < T && !(b === 3 && step % 3 === 0) ? n : -1));
              const rows = new Float32Array(B * 3 * D), gateRows = new Float32Array(B * H);
              for (let b = 0; b < B; b++) {
                const t = Math.max(positions[b], 0);
                rows.set(qkvHost.subarray((b * T + t) * 3 * D, (b * T + t + 1) * 3 * D), b * 3 * D);
                gateRows.set(gateHost.subarray((b * T + t) * H, (b * T + t + 1) * H), b * H);
              }
              const out = mg.tidy(() => mg.cast(mg.attentionDecode(mg.cast(mg.tensor(rows, [B, 3 * D], opts), dtype), mg.tensor(positions, [B], int32), cache, {
                nHeads: H, rope: c.rope, memory, gateLogits: S ? mg.cast(mg.tensor(gateRows, [B, H], opts), dtype) : undefined, memoryRead: c.memoryRead,
              }), 'float32').toArray());
              const expected = new Float32Array(B * D);
              for (let b = 0; b < B; b++) if (positions[b] >= 0) expected.set(full.subarray((b * T + positions[b]) * D, (b * T + positions[b] + 1) * D), b * D);
              expectClose(out, expected, dtype === 'float32' ? 2e-6 : 1e-2, dtype === 'float32' ? 2e-5 : 1e-2);
              for (let b = 0; b < B; b++) if (positions[b] >= 0) fed[b]++;
            }
          }));
        });
      }
    }

    it('refuses bad shapes and inputs that require grad, with one clear error', () => {
      mg.tidy(() => {
        const qkv = mg.zeros([2, 12], opts);
        const pos = mg.tensor([0, 1], [2], int32);
        const cache = { keys: mg.zeros(mg.decodeKeyShape(2, 2, 2, 4), opts), values: mg.zeros([2, 2, 4, 2], opts) };
        const attend = (q: mg.Tensor, p: mg.Tensor, c: typeof cache, o: Partial<Parameters<typeof mg.attentionDecode>[3]> = {}) =>
          mg.attentionDecode(q, p, c, { nHeads: 2, rope: false, ...o });
        expect(() => attend(qkv, mg.tensor([0, 1], [2], opts), cache)).toThrow(/positions must be int32 \[2\]/);
        expect(() => attend(mg.zeros([2, 10], opts), pos, cache)).toThrow(/qkv must be \[B, 3D\]/);
        expect(() => attend(qkv, pos, cache, { nHeads: 3 })).toThrow(/nHeads 3 does not divide/);
        expect(() => attend(qkv, pos, { keys: mg.zeros([2, 2, 2, 4], opts), values: cache.values })).toThrow(/keys must be \[2, 2, 1, 2, 8\] \(decodeKeyShape\)/);
        const memory = mg.decodeMemory(mg.zeros([2, 3, 8], opts), { nHeads: 2, rope: false });
        expect(() => attend(qkv, pos, cache, { memory, gateLogits: mg.zeros([2, 3], opts) })).toThrow(/gateLogits must be \[2, 2\]/);
        expect(() => attend(qkv, pos, cache, { memory })).toThrow(/the memory and gateLogits come together/);
        expect(() => attend(qkv, pos, cache, { memory: { keys: memory.keys, values: mg.zeros([2, 2, 9, 2], opts) }, gateLogits: mg.zeros([2, 2], opts) })).toThrow(/the memory's keys must be \[2, 2, 2, 2, 8\]/);
        expect(() => mg.decodeMemory(mg.zeros([2, 3, 7], opts), { nHeads: 2, rope: false })).toThrow(/memKV must be \[B, S ≥ 1, 2D\]/);
        expect(() => mg.decodeMemory(mg.zeros([2, 3, 8], opts), { nHeads: 2, rope: false }, { keys: mg.zeros([2, 2, 1, 2, 7], opts), values: memory.values })).toThrow(/keys must be float32 \[2, 2, 1, 2, 8\]/);
        const p = mg.parameter(mg.zeros([2, 12], opts));
        expect(() => attend(p, pos, cache)).toThrow(/records no gradient/);
        p.dispose();
      });
    });
  });

  describe('scatterRows', () => {
    it('writes each sequence\'s row at its own position and leaves the rest (float32, bfloat16, int32)', () => {
      expectNoLeaks(device, () => mg.tidy(() => {
        for (const dtype of ['float32', 'bfloat16', 'int32'] as const) {
          const B = 3, T = 4, n = 5;
          const dst = mg.cast(mg.full([B, T, n], 7, opts), dtype);
          const src = mg.cast(mg.tensor(Array.from({ length: B * n }, (_, i) => i), [B, 1, n], opts), dtype);
          mg.scatterRows(src, mg.tensor([2, -1, 3], [B], int32), dst);
          const got = Array.from(mg.cast(dst, 'float32').toArray());
          const want = new Array(B * T * n).fill(7);
          for (let i = 0; i < n; i++) {
            want[(0 * T + 2) * n + i] = i;
            want[(2 * T + 3) * n + i] = 2 * n + i;
          }
          expect(got).toEqual(want);
        }
        expect(() => mg.scatterRows(mg.zeros([3, 4], opts), mg.tensor([0, 0, 0], [3], int32), mg.zeros([3, 2, 5], opts))).toThrow(/does not hold one row of 5/);
      }));
    });
  });

  describe('copyMixProbs', () => {
    it("is a distribution whose −log P(y) is tokenNLL's with the copy head, at every row of the context", () => {
      expectNoLeaks(device, () => mg.tidy(() => {
        const T = 6, D = 8, V = 11;
        const hf = mg.tensor(randomArray(T * D, 4), [1, T, D], opts);
        const emb = mg.tensor(randomArray(V * D, 5), [V, D], opts);
        const cq = mg.tensor(randomArray(T * D, 6, -2, 2), [1, T, D], opts);
        const ck = mg.tensor(randomArray(T * D, 7, -2, 2), [1, T, D], opts);
        const genHost = randomArray(T, 8, -2, 2);
        const inputs = [3, 1, 3, 10, 0, 3];
        const targets = [1, 3, 4, 3, 3, 9];
        const nll = mg.tokenNLL(hf, emb, mg.tensor(targets, [1, T], int32), {
          copy: { cq, ck, genLogit: mg.tensor(genHost, [1, T], opts), inputs: mg.tensor(inputs, [1, T], int32) },
        }).toArray();
        // Row p as a batch of T sequences: sequence p's context is rows 0 … p.
        const logits = mg.matmul(mg.reshape(hf, [T, D]), emb, { transB: true });
        const ckRows = mg.reshape(mg.broadcastTo(ck, [T, T, D]), [T, T, D]);
        const probs = mg.copyMixProbs(logits, {
          cq: mg.reshape(cq, [T, D]), ck: mg.clone(ckRows), gen: mg.tensor(genHost, [T], opts),
          tokens: mg.tensor(Array.from({ length: T * T }, (_, i) => inputs[i % T]), [T, T], int32),
          lengths: mg.tensor(Array.from({ length: T }, (_, p) => p + 1), [T], int32),
        }).toArray();
        for (let p = 0; p < T; p++) {
          const row = probs.subarray(p * V, (p + 1) * V);
          expect(Math.abs(Array.from(row).reduce((a, x) => a + x, 0) - 1)).toBeLessThan(1e-5);
          expect(-Math.log(row[targets[p]])).toBeCloseTo(nll[p], 4);
        }
        // Without a copy head, or with an empty context: the softmax of the logits.
        const plain = mg.copyMixProbs(logits).toArray();
        const soft = mg.softmax(logits).toArray();
        expectClose(plain, soft, 1e-6, 1e-5);
      }));
    });
  });
});

// Batched decoding on each device against one-sequence decoding on the CPU (itself checked against the plain
// reference and model.forward in generate.test.ts): three sequences with prompts of different lengths, so they sit
// at different positions and cross segment boundaries (and write their memories) at different steps, one of them
// sitting every third step out.
describe('BatchDecoder', () => {
  // A step's kernels are recorded once and replayed (lib/core/kernel-graph.ts): the same kernels on the same buffers,
  // so the distributions equal running the layers again exactly, across segment boundaries (memory writes, which
  // run eagerly between replays) and in bfloat16 too.
  forEachDevice((device) => {
    for (const precision of ['float32', 'bfloat16'] as const) {
      it(`replaying the kernel graphs gives running the layers again, bit for bit (${precision})`, () => {
        const cpuModel = randomModel({ vocabSize: 256, dModel: 16, nHeads: 2, dFF: 24, nLayers: 2, segmentLen: 5, memSlots: 3, copyHead: true, positional: 'rope' }, 9);
        const model = device === 'cpu' ? cpuModel : onDevice(cpuModel, device);
        model.precision = precision;
        try {
          expectNoLeaks(device, () => {
            const tokens = randomTokens(17, 4);
            const [replayed, eager] = [true, false].map((graphs) => new BatchDecoder(model, 2, { graphs }));
            try {
              for (const d of [replayed, eager]) {
                d.prefill(0, tokens.subarray(0, 6));
                d.prefill(1, tokens.subarray(2, 4));
              }
              for (let i = 6; i < tokens.length; i++) {
                expect(replayed.distributions()).toEqual(eager.distributions());
                for (const d of [replayed, eager]) d.step([tokens[i], tokens[i - 6]], [true, i % 4 !== 0]);
              }
            } finally {
              replayed.dispose();
              eager.dispose();
            }
          });
        } finally {
          for (const d of new Set([model, cpuModel])) d.dispose();
        }
      });
    }
  });

  // prefillAll feeds every sequence's prompt tail in the same steps (the prompts of a batch generation at once): each
  // row's kernels do the same arithmetic whichever rows run beside it, so it equals one prompt after another exactly.
  forEachDevice((device) => {
    it('prefillAll equals prefilling one sequence after another, bit for bit; a wrong prompt count is one clear error', () => {
      const cpuModel = randomModel({ vocabSize: 256, dModel: 16, nHeads: 2, dFF: 24, nLayers: 2, segmentLen: 5, memSlots: 3, copyHead: true, positional: 'rope' }, 12);
      const model = device === 'cpu' ? cpuModel : onDevice(cpuModel, device);
      try {
        expectNoLeaks(device, () => {
          const prompts = [randomTokens(11, 1), randomTokens(3, 2), randomTokens(7, 3)];
          const [together, apart] = [0, 1].map(() => new BatchDecoder(model, 3));
          try {
            together.prefillAll(prompts);
            prompts.forEach((p, b) => apart.prefill(b, p));
            expect([0, 1, 2].map((b) => together.length(b))).toEqual([11, 3, 7]);
            expect(together.distributions()).toEqual(apart.distributions());
            expect(() => together.prefillAll(prompts.slice(1))).toThrow(/^prefill: 2 prompts given for 3 sequences$/);
          } finally {
            together.dispose();
            apart.dispose();
          }
        });
      } finally {
        for (const d of new Set([model, cpuModel])) d.dispose();
      }
    });
  });

  const base: Partial<ModelConfig> = { vocabSize: 256, dModel: 16, nHeads: 2, dFF: 24, nLayers: 2, segmentLen: 5, memSlots: 3, copyHead: true, positional: 'rope', specVersion: 2 };
  const variants: Partial<ModelConfig>[] = [base, { ...base, specVersion: 1 }, { ...base, positional: 'sinusoidal', copyHead: false }, { ...base, memSlots: 0 }];
  for (const variant of variants) {
    forEachDevice((device) => {
      it(`each sequence's distributions equal its own decoding's (SPEC v${variant.specVersion}, ${variant.positional}, copy ${variant.copyHead}, S ${variant.memSlots})`, () => {
        const cpuModel = randomModel(variant, 3);
        const model = device === 'cpu' ? cpuModel : onDevice(cpuModel, device);
        const singles = [0, 1, 2].map(() => new Decoder(cpuModel, { graphs: false }));  // eager: the batch replays its kernel graphs
        try {
          const T = model.config.segmentLen;
          const streams = [0, 1, 2].map((s) => randomTokens(6 * T, 20 + s));
          const promptLengths = [2 * T + 1, 3, T];
          expectNoLeaks(device, () => {
            const batch = new BatchDecoder(model, 3);
            try {
              const fedTo = promptLengths.slice();
              streams.forEach((s, b) => {
                batch.prefill(b, s.subarray(0, promptLengths[b]));
                singles[b].feedMany(s.subarray(0, promptLengths[b]));
              });
              for (let step = 0; step < 2 * T + 2; step++) {
                const probs = batch.distributions();
                for (let b = 0; b < 3; b++) expectClose(probs.subarray(b * 256, (b + 1) * 256), singles[b].distribution(), 2e-6, 2e-5);
                const active = [true, step % 3 !== 1, true];
                const next = streams.map((s, b) => s[fedTo[b]]);
                batch.step(next, active);
                for (let b = 0; b < 3; b++) {
                  if (!active[b]) continue;
                  singles[b].feed(next[b]);
                  fedTo[b]++;
                }
              }
              expect([0, 1, 2].map((b) => batch.length(b))).toEqual(fedTo);
            } finally {
              batch.dispose();
            }
          });
        } finally {
          for (const s of singles) s.dispose();
          for (const d of new Set([model, cpuModel])) d.dispose();
        }
      });
    });
  }
});

/** The same weights on another device. */
function onDevice(model: MemGPT, device: mg.Device): MemGPT {
  return new MemGPT(model.config, new Map([...model.params].map(([name, p]) => [name, mg.parameter(mg.to(p, device), name)])));
}

// On CUDA a decoding step queues its kernels and waits for the device a fixed number of times (the uploads of the
// step's ids and positions, the embedding's id check), however many layers the model has: no wait per layer.
// The addon counts every wait it makes (cudaStreamSynchronize goes through one counted function).
const cudaRunnable = process.env.MEMGPT_DEVICE === 'cuda' || mg.availableDevices().includes('cuda');
describe.skipIf(!cudaRunnable)('on cuda', () => {
  it('a decoding step waits for the device as often with 1 layer as with 3 (no host synchronisation per layer)', async () => {
    const { cudaBackend } = await import('../lib/native/backend.js');
    const cuda = cudaBackend();
    const waitsPerStep = (nLayers: number) => {
      const cpuModel = randomModel({ vocabSize: 256, dModel: 16, nHeads: 2, dFF: 24, nLayers, segmentLen: 4, memSlots: 2, copyHead: true }, 5);
      const model = onDevice(cpuModel, 'cuda');
      const decoder = new BatchDecoder(model, 2);
      try {
        decoder.prefill(0, [1, 2]);
        decoder.prefill(1, [3]);
        const counts: number[] = [];
        for (let i = 0; i < 3; i++) {  // positions 1, 2, 3 for sequence 1: no segment boundary in these steps
          const before = cuda.synchronizations();
          decoder.step([4, 5], [i < 1, true]);
          counts.push(cuda.synchronizations() - before);
        }
        return counts;
      } finally {
        decoder.dispose();
        model.dispose();
        cpuModel.dispose();
      }
    };
    const one = waitsPerStep(1), three = waitsPerStep(3);
    expect(three).toEqual(one);
    // The step's one upload, and the embedding's check of the ids.
    expect(one).toEqual([2, 2, 2]);
  });
});
