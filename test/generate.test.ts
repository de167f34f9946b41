// Generation and stream scoring: the Decoder's token-by-token cache path gives the same P(y) as the
// model's full-segment computation (and the plain-loops reference of SPEC §3) across several segments;
// scoreStream is the stream mode of §4; sampling is seeded; memory stays bounded and nothing leaks.
import { describe, expect, it } from 'vitest';

import * as mg from '../lib/index.js';
import { resolveConfig, type ModelConfig } from '../lib/nn/config.js';
import { MemGPT } from '../lib/nn/model.js';
import { Decoder } from '../lib/infer/single-decoder.js';
import { generateTokens } from '../lib/infer/sampling.js';
import { scoreStream } from '../lib/infer/score.js';
import { expectClose, expectNoLeaks } from './helpers.js';
import { referenceSampleNLL, type RefParams } from './reference_model.js';
import { randomModel, refParams, randomTokens } from './models.js';

const small: Partial<ModelConfig> = { vocabSize: 256, dModel: 16, nHeads: 2, dFF: 24, nLayers: 2, segmentLen: 5, memSlots: 3, copyHead: true };

function expectRelClose(actual: number, expected: number, rel: number): void {
  if (!(Math.abs(actual - expected) <= rel * Math.abs(expected))) expect.fail(`got ${actual}, expected ${expected} (rel ${rel})`);
}

const variants: Partial<ModelConfig>[] = [
  { ...small, positional: 'rope' },
  { ...small, positional: 'sinusoidal' },
  { ...small, positional: 'rope', memSlots: 0 },
  { ...small, positional: 'sinusoidal', copyHead: false },
];
const name = (v: Partial<ModelConfig>) => `${v.positional}, copyHead ${v.copyHead}, memSlots ${v.memSlots}`;

describe('Decoder', () => {
  for (const variant of variants) {
    it(`token by token equals the plain reference across 3 segments: ${name(variant)}`, () => {
      const cfg = resolveConfig(variant);
      const segments = 3, N = segments * cfg.segmentLen;
      const model = randomModel(cfg, 7);
      try {
        const tokens = randomTokens(N + 1, 11);
        const ref = referenceSampleNLL(cfg, refParams(model), tokens, segments);
        expectNoLeaks('cpu', () => {
          const decoder = new Decoder(model);
          for (let p = 0; p < N; p++) {
            decoder.feed(tokens[p]);
            const probs = decoder.distribution();
            expectRelClose(-Math.log(probs[tokens[p + 1]]), ref[p], 1e-5);
          }
          expect(decoder.length).toBe(N);
          decoder.dispose();
        });
      } finally {
        model.dispose();
      }
    });
  }

  // In bfloat16 precision the decoder computes in bfloat16 as forward does (bf16 caches, bf16 linears): its mean NLL
  // is within 0.2% of forward's bf16 loss and within 1% of the float32 reference (the bar of the model's own bf16
  // test), and measurably off the float32 value (the float32 decoder matches it to 1e-5 a token): the bf16 path ran.
  it('in bfloat16 precision, token by token equals forward in bfloat16 across 3 segments', () => {
    const cfg = resolveConfig({ ...small, positional: 'rope' });
    const segments = 3, N = segments * cfg.segmentLen;
    const model = randomModel(cfg, 7);
    try {
      const tokens = randomTokens(N + 1, 11);
      const ref = referenceSampleNLL(cfg, refParams(model), tokens, segments).reduce((a, b) => a + b, 0) / N;
      model.precision = 'bfloat16';
      const forwardLoss = mg.noGrad(() => mg.tidy(() => model.forward(tokens, 1, segments).loss.item()));
      expectNoLeaks('cpu', () => {
        const decoder = new Decoder(model);
        let sum = 0;
        for (let p = 0; p < N; p++) {
          decoder.feed(tokens[p]);
          sum -= Math.log(decoder.distribution()[tokens[p + 1]]);
        }
        decoder.dispose();
        const decoded = sum / N;
        expectRelClose(decoded, forwardLoss, 2e-3);
        expectRelClose(decoded, ref, 0.01);
        expect(Math.abs(decoded - ref)).toBeGreaterThan(1e-4 * ref);
      });
    } finally {
      model.dispose();
    }
  });

  it('feedMany (full segments through model.segment, then a partial one) equals feeding one by one', () => {
    const cfg = resolveConfig({ ...small, positional: 'rope' });
    const model = randomModel(cfg, 3);
    try {
      const tokens = randomTokens(2 * cfg.segmentLen + 3, 5);
      expectNoLeaks('cpu', () => {
        const one = new Decoder(model), many = new Decoder(model);
        for (const t of tokens) one.feed(t);
        // Ends on a boundary (the copy head then points into the finished segment), then mid-segment.
        many.feedMany(tokens.subarray(0, 2 * cfg.segmentLen));
        const oneAtBoundary = new Decoder(model);
        oneAtBoundary.feedMany(Array.from(tokens.subarray(0, 2 * cfg.segmentLen - 1)));
        oneAtBoundary.feed(tokens[2 * cfg.segmentLen - 1]);
        const [a, b] = [many.distribution(), oneAtBoundary.distribution()];
        for (let v = 0; v < a.length; v++) expectRelClose(a[v], b[v], 1e-4);
        many.feedMany(tokens.subarray(2 * cfg.segmentLen));
        const [c, d] = [many.distribution(), one.distribution()];
        for (let v = 0; v < c.length; v++) expectRelClose(c[v], d[v], 1e-4);
        for (const dec of [one, many, oneAtBoundary]) dec.dispose();
      });
    } finally {
      model.dispose();
    }
  });

  it('the distribution sums to 1; memory stays bounded over many segments; nothing leaks after dispose', () => {
    const cfg = resolveConfig(small);
    const model = randomModel(cfg, 4);
    try {
      const tokens = randomTokens(10 * cfg.segmentLen + 2, 9);
      expectNoLeaks('cpu', () => {
        const decoder = new Decoder(model);
        for (let i = 0; i < 2 * cfg.segmentLen + 2; i++) decoder.feed(tokens[i]);
        const after2 = mg.memory('cpu');
        for (let i = 2 * cfg.segmentLen + 2; i < tokens.length; i++) decoder.feed(tokens[i]);
        const after10 = mg.memory('cpu');
        expect(after10.liveTensors).toBe(after2.liveTensors);
        expect(after10.bytesInUse).toBe(after2.bytesInUse);
        const probs = decoder.distribution();
        expect(probs.reduce((a, p) => a + p, 0)).toBeCloseTo(1, 6);  // float32 probabilities, summed in double on the device
        decoder.dispose();
        expect(() => decoder.feed(1)).toThrow(/disposed/);
      });
    } finally {
      model.dispose();
    }
  });

  it('a decoder of a disposed model says so, though its replayed steps hold the weights, and frees them with itself', () => {
    expectNoLeaks('cpu', () => {
      const model = randomModel(small, 2);
      const decoder = new Decoder(model);
      decoder.feedMany([1, 2, 3]);
      decoder.distribution();
      model.dispose();
      expect(() => decoder.feed(4)).toThrow(/^step: the model was disposed$/);
      expect(() => decoder.distribution()).toThrow(/^distributions: the model was disposed$/);
      decoder.dispose();
    });
  });

  it('rejects bad tokens and an early distribution()', () => {
    const model = randomModel(small, 1);
    try {
      const decoder = new Decoder(model);
      expect(() => decoder.distribution()).toThrow(/no token has been fed yet/);
      expect(() => decoder.feed(256)).toThrow(/token id 256 is outside the vocabulary \(256\)/);
      expect(() => decoder.feedMany([1, -1])).toThrow(/index 1.*token id -1/);
      decoder.dispose();
    } finally {
      model.dispose();
    }
  });
});

describe('scoreStream', () => {
  for (const variant of [variants[0], variants[2]]) {
    it(`equals model.forward on k·T+1 tokens and the reference mid-segment: ${name(variant)}`, () => {
      const cfg = resolveConfig(variant);
      const T = cfg.segmentLen;
      const model = randomModel(cfg, 8);
      try {
        const tokens = randomTokens(4 * T + 1, 13);
        expectNoLeaks('cpu', () => {
          const whole = scoreStream(model, tokens);
          const out = mg.noGrad(() => model.forward(tokens, 1, 4));
          out.loss.dispose();
          expect(whole.tokens).toBe(4 * T);
          expectRelClose(whole.nllSum, out.nllSum, 1e-5);
          // Ends mid-segment: 2·T + 3 predictions. Attention and the copy head are causal and a segment's own
          // memory write reaches only later segments, so the partial segment's losses are the first ones
          // of the full segment the reference computes.
          const partial = scoreStream(model, tokens.subarray(0, 2 * T + 4));
          const ref = referenceSampleNLL(cfg, refParams(model), tokens.subarray(0, 3 * T + 1), 3);
          expect(partial.tokens).toBe(2 * T + 3);
          expectRelClose(partial.nllSum, ref.slice(0, 2 * T + 3).reduce((a, b) => a + b, 0), 1e-5);
        });
      } finally {
        model.dispose();
      }
    });
  }

  it('rejects streams that are too short or out of the vocabulary', () => {
    const model = randomModel(small, 1);
    try {
      expect(() => scoreStream(model, [3])).toThrow(/at least 2 tokens/);
      expect(() => scoreStream(model, [3, 999])).toThrow(/index 1.*token id 999/);
    } finally {
      model.dispose();
    }
  });
});

describe('generateTokens and streamText', () => {
  const prompt = [1, 2, 3, 1, 2, 3, 4];

  it('greedy is deterministic and equals topK 1; seeded sampling is reproducible; stopAt stops', () => {
    const model = randomModel(small, 2);
    try {
      expectNoLeaks('cpu', () => {
        const greedy = [...generateTokens(model, prompt, { maxTokens: 12, temperature: 0 })];
        expect(greedy).toHaveLength(12);
        expect([...generateTokens(model, prompt, { maxTokens: 12, temperature: 0 })]).toEqual(greedy);
        expect([...generateTokens(model, prompt, { maxTokens: 12, temperature: 1.3, topK: 1, seed: 5 })]).toEqual(greedy);
        // The greedy token is the argmax of the distribution after the prompt.
        const decoder = new Decoder(model);
        decoder.feedMany(prompt);
        const probs = decoder.distribution();
        decoder.dispose();
        expect(probs.indexOf(Math.max(...probs))).toBe(greedy[0]);
        const sample = (seed: number) => [...generateTokens(model, prompt, { maxTokens: 12, temperature: 1, topP: 0.95, topK: 50, seed })];
        const a = sample(1);
        expect(sample(1)).toEqual(a);
        expect([sample(2), sample(3), sample(4)].some((b) => b.join() !== a.join())).toBe(true);
        for (const t of a) expect(t >= 0 && t < 256).toBe(true);
        const stopped = [...generateTokens(model, prompt, { maxTokens: 12, temperature: 0, stopAt: (t) => t === greedy[2] })];
        expect(stopped).toEqual(greedy.slice(0, greedy.indexOf(greedy[2]) + 1));
        expect([...generateTokens(model, prompt, { maxTokens: 0 })]).toEqual([]);
        // Stopping early (break) frees the decoder too.
        for (const t of generateTokens(model, prompt, { maxTokens: 100 })) if (t >= 0) break;
      });
    } finally {
      model.dispose();
    }
  });

  it('top-p keeps only the most likely tokens', () => {
    const probs = Float64Array.from([0.05, 0.6, 0.3, 0.05]);
    const rng = new mg.Rng(0);
    const seen = new Set<number>();
    for (let i = 0; i < 200; i++) seen.add(mg.sampleToken(probs, { temperature: 1, topP: 0.8 }, rng));
    expect([...seen].sort()).toEqual([1, 2]);
    for (let i = 0; i < 50; i++) expect(mg.sampleToken(probs, { temperature: 1, topP: 0.5 }, rng)).toBe(1);
    // NaN logits give no drawable token: one clear error, not an undefined id; a NaN beside finite ones is never drawn.
    const nan = Float64Array.from([Number.NaN, Number.NaN, Number.NaN]);
    expect(() => mg.sampleToken(nan, { temperature: 1, topP: 1 }, rng)).toThrow(/no token a finite, positive probability/);
    expect(() => mg.sampleToken(nan, { temperature: 0, topP: 1 }, rng)).toThrow(/no token a finite, positive probability/);
    const partly = Float64Array.from([Number.NaN, 0.25, 0.75]);
    expect(mg.sampleToken(partly, { temperature: 0, topP: 1 }, rng)).toBe(2);
    for (let i = 0; i < 20; i++) expect(mg.sampleToken(partly, { temperature: 1, topP: 1 }, rng)).toBeGreaterThan(0);
  });

  it('rejects bad options with clear errors', () => {
    const model = randomModel(small, 2);
    try {
      const bad = (options: object, p: ArrayLike<number> = prompt) => () => generateTokens(model, p, { maxTokens: 3, ...options });
      expect(bad({ maxTokens: -1 })).toThrow(/maxTokens must be an integer ≥ 0/);
      expect(bad({ maxTokens: 1.5 })).toThrow(/maxTokens must be an integer ≥ 0/);
      expect(bad({ temperature: -0.1 })).toThrow(/temperature must be a number ≥ 0/);
      expect(bad({ topK: 0 })).toThrow(/topK must be an integer ≥ 1/);
      expect(bad({ topP: 0 })).toThrow(/topP must be in \(0, 1\]/);
      expect(bad({ topP: 1.5 })).toThrow(/topP must be in \(0, 1\]/);
      expect(bad({}, [])).toThrow(/generate: the prompt is empty/);
      expect(bad({}, [1, 300])).toThrow(/prompt \(index 1\).*token id 300/);
    } finally {
      model.dispose();
    }
  });

  it('min-p keeps tokens at least that fraction as likely as the top one; the repetition penalty is P^penalty on seen tokens', () => {
    const probs = Float64Array.from([0.05, 0.6, 0.3, 0.05]);
    const rng = new mg.Rng(0);
    const drawn = (options: { temperature: number; topP: number; minP?: number }) => {
      const seen = new Set<number>();
      for (let i = 0; i < 300; i++) seen.add(mg.sampleToken(probs, options, rng));
      return [...seen].sort();
    };
    expect(drawn({ temperature: 1, topP: 1, minP: 0.4 })).toEqual([1, 2]);  // 0.3/0.6 = 0.5 ≥ 0.4; 0.05/0.6 < 0.4
    expect(drawn({ temperature: 1, topP: 1, minP: 0.6 })).toEqual([1]);
    expect(drawn({ temperature: 1, topP: 1, minP: 0 })).toEqual([0, 1, 2, 3]);
    // min-p applies after temperature: at temperature 4 the weights flatten, and 0.05 passes 0.4 of the top.
    expect(drawn({ temperature: 4, topP: 1, minP: 0.4 })).toEqual([0, 1, 2, 3]);
    const penalized = mg.penalizeRepeats(probs, [1, 1, 3], 2);
    const raw = [0.05, 0.36, 0.3, 0.0025];
    const total = raw.reduce((a, b) => a + b, 0);
    raw.forEach((p, v) => expect(penalized[v]).toBeCloseTo(p / total, 12));
    expect([...mg.penalizeRepeats(probs, [0, 2], 1)]).toEqual([...probs]);
    expect([...probs]).toEqual([0.05, 0.6, 0.3, 0.05]);  // the input is not changed
  });

  it('sampledTokens gives the model log-probability of each token; a repetition penalty changes greedy output away from repeats', () => {
    const model = randomModel(small, 2);
    try {
      const decoder = new Decoder(model);
      decoder.feedMany(prompt);
      const probs = decoder.distribution();
      decoder.dispose();
      const [first] = [...mg.sampledTokens(model, prompt, { maxTokens: 1, temperature: 0 })];
      expect(first.token).toBe(probs.indexOf(Math.max(...probs)));
      expect(first.logprob).toBeCloseTo(Math.log(probs[first.token]), 12);
      const plain = [...generateTokens(model, prompt, { maxTokens: 30, temperature: 0 })];
      const penalized = [...generateTokens(model, prompt, { maxTokens: 30, temperature: 0, repetitionPenalty: 50 })];
      const repeats = (ts: number[]) => ts.filter((t, i) => [...prompt, ...ts.slice(0, i)].includes(t)).length;
      expect(repeats(penalized)).toBeLessThan(repeats(plain));
      expect(() => generateTokens(model, prompt, { maxTokens: 3, minP: 1.5 })).toThrow(/minP must be in \[0, 1\]/);
      expect(() => generateTokens(model, prompt, { maxTokens: 3, repetitionPenalty: 0 })).toThrow(/repetitionPenalty must be a finite number > 0/);
    } finally {
      model.dispose();
    }
  });

  it('stop strings end the text before them, even across tokens; an abort signal ends it after the current token', async () => {
    const bytes = (ids: ArrayLike<number>) => new TextDecoder().decode(Uint8Array.from(ids));
    const codec = { encode: (text: string) => new TextEncoder().encode(text), decode: bytes };
    const model = randomModel(small, 2);
    try {
      const options = { maxTokens: 40, temperature: 0 };
      const full = [...mg.textPieces(generateTokens(model, codec.encode('abcab'), options), bytes)].join('');
      expect(full.length).toBeGreaterThan(10);
      const collect = async (opts: mg.TextGenerateOptions) => {
        const it = mg.streamTokens(model, codec, 'abcab', opts);
        let text = '', step = await it.next();
        for (; !step.done; step = await it.next()) text += step.value.text;
        return { text, reason: step.value };
      };
      // A stop string of three characters from the middle of the greedy output: the text ends just before it.
      const stop = full.slice(6, 9);
      const cut = await collect({ ...options, stop: [stop, 'never appears'] });
      expect(cut).toEqual({ text: full.slice(0, full.indexOf(stop)), reason: 'stop' });
      expect(await collect(options)).toEqual({ text: full, reason: 'max-tokens' });
      // A held-back prefix of a stop string that never completes is released at the end.
      const tail = full.slice(-2) + 'zz';
      expect(await collect({ ...options, stop: [tail] })).toEqual({ text: full, reason: 'max-tokens' });
      const abort = new AbortController();
      const it = mg.streamTokens(model, codec, 'abcab', { ...options, signal: abort.signal });
      const first = await it.next();
      abort.abort();
      let rest = await it.next();
      while (!rest.done) rest = await it.next();
      expect(rest.value).toBe('aborted');
      expect(first.done).toBe(false);
      await expect(collect({ ...options, stop: [''] })).rejects.toThrow(/stop must be a list of non-empty strings/);
    } finally {
      model.dispose();
    }
  });

  it('text pieces hold back tokens until a multi-byte character is complete; streamText yields them', async () => {
    const bytes = (ids: ArrayLike<number>) => new TextDecoder().decode(Uint8Array.from(ids));
    expect([...mg.textPieces([0x61, 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0x62], bytes)]).toEqual(['a', 'é', '€', 'b']);
    // An invalid byte is let through once a following token shows it cannot complete; a cut-off one at the end too.
    expect([...mg.textPieces([0x80, 0x61, 0xe2], bytes)]).toEqual(['\uFFFDa', '\uFFFD']);
    expect([...mg.textPieces([0xe2, 0xe2, 0xe2, 0xe2, 0x61], bytes)]).toEqual(['\uFFFD\uFFFD\uFFFD\uFFFD', 'a']);
    const model = randomModel(small, 2);
    try {
      const codec = { encode: (text: string) => new TextEncoder().encode(text), decode: bytes };
      const options = { maxTokens: 20, temperature: 0 };
      const pieces: string[] = [];
      expect(mg.memory('cpu').liveTensors).toBeGreaterThan(0);
      const before = mg.memory('cpu').liveTensors;
      for await (const piece of mg.streamText(model, codec, 'abcab', options)) pieces.push(piece);
      expect(pieces.join('')).toBe([...mg.textPieces(generateTokens(model, codec.encode('abcab'), options), bytes)].join(''));
      for await (const piece of mg.streamText(model, codec, 'abcab', options)) if (piece) break;
      expect(mg.memory('cpu').liveTensors).toBe(before);
    } finally {
      model.dispose();
    }
  });
});

describe('generateBatch (several continuations decoded together)', () => {
  it('sample b is what a lone generation with seed + b gives; stop strings and stopAt end each sequence on its own', async () => {
    const model = randomModel({ ...small, positional: 'rope' }, 3);
    try {
      const prompts = [[1, 2, 3, 1, 2, 3, 4], [5, 6], [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]];
      const options = { maxTokens: 12, temperature: 1, topP: 0.9, seed: 4 };
      const batch = await mg.generateBatch(model, prompts, options);
      prompts.forEach((p, b) => {
        const lone = [...mg.sampledTokens(model, p, { ...options, seed: options.seed + b })];
        expect(batch[b].tokens).toEqual(lone.map((t) => t.token));
        expectClose(batch[b].logprobs, lone.map((t) => t.logprob), 1e-6, 1e-6);
        expect(batch[b].reason).toBe('max-tokens');
      });
      // stopAt ends the sequences that produce the token, the others run on.
      const first = batch.map((s) => s.tokens[3]);
      const stopped = await mg.generateBatch(model, prompts, { ...options, stopAt: (t) => t === first[1] });
      expect(stopped[1].tokens.length).toBeLessThanOrEqual(4);
      expect(stopped[1].reason).toBe('stop-token');
      // Stop strings with a codec: the text is cut before the stop, and that sequence ends there.
      const codec = mg.getTokenizer('byte');
      const withText = await mg.generateBatch(model, prompts, options, codec);
      const stopText = codec.decode(withText[0].tokens.slice(2, 4));
      const cut = await mg.generateBatch(model, prompts, { ...options, stop: [stopText] }, codec);
      expect(cut[0].reason).toBe('stop');
      expect(cut[0].text).toBe(codec.decode(withText[0].tokens).slice(0, codec.decode(withText[0].tokens).indexOf(stopText)));
      await expect(mg.generateBatch(model, [[]], options)).rejects.toThrow(/prompt 0 is empty/);
    } finally {
      model.dispose();
    }
  });
});
