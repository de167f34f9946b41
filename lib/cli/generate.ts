// `memgpt generate`: a continuation of a prompt, printed token by token (or as JSON lines with log-probabilities),
// with the sampling controls, stop strings, and a clean end on Ctrl-C.
import { readFileSync, statSync } from 'node:fs';

import { MemgptError } from '../core/errors.js';
import { getTokenizer } from '../data/index.js';
import { streamTokens } from '../infer/text.js';
import { loadModel } from '../io/checkpoint.js';
import { int, num, parse, required, useDevice } from './flags.js';
import { generateBatch, type BatchGenerateOptions } from '../infer/batch.js';
import type { TextCodec } from '../infer/text.js';
import type { MemGPT } from '../nn/model.js';
import { specOf } from './flag-docs.js';

/** Reads --prompt-file: a regular UTF-8 text file of at most 16 MiB (a FIFO or /dev/zero would block or never end). */
function readPromptFile(path: string): string {
  let st;
  try {
    st = statSync(path);
  } catch {
    throw new MemgptError(`generate: --prompt-file ${path} does not exist`);
  }
  if (!st.isFile()) throw new MemgptError(`generate: --prompt-file ${path} is not a regular file`);
  if (st.size > 16 * 2 ** 20) throw new MemgptError(`generate: --prompt-file ${path} is ${st.size} bytes, more than the 16 MiB a prompt may be`);
  return readFileSync(path, 'utf8');
}

/** --num-samples N: N continuations decoded as one batch, printed when all are done (text, or one JSON line each). */
async function generateSamples(model: MemGPT, codec: TextCodec, prompt: string, n: number, options: BatchGenerateOptions, json: boolean): Promise<number> {
  const ids = codec.encode(prompt);
  const results = await generateBatch(model, Array.from({ length: n }, () => ids), options, codec);
  results.forEach((r, b) => {
    const seed = (options.seed ?? 0) + b;
    if (json) console.log(JSON.stringify({ sample: b, seed, tokens: r.tokens, logprobs: r.logprobs, text: r.text, reason: r.reason }));
    else process.stdout.write(`--- sample ${b + 1} of ${n} (seed ${seed}, ${r.reason}) ---\n${r.text}\n`);
  });
  if (results.some((r) => r.reason === 'aborted')) {
    console.error(`memgpt: generate: interrupted after ${Math.max(...results.map((r) => r.tokens.length))} tokens`);
    return 130;
  }
  return 0;
}

/**
 * `memgpt generate`: prints the continuation (not the prompt) token by token as it is generated; with --json, one
 * line per token (id, log-probability, the text it releases) and a last line saying why it stopped. Ctrl-C ends it
 * cleanly after the current token (exit 130).
 */
export async function generateCommand(argv: string[]): Promise<number> {
  const flags = parse(argv, specOf('generate'));
  const stops = (flags.stop ?? []) as string[];
  const ckpt = required(flags, 'checkpoint', 'generate');
  if ((flags.prompt === undefined) === (flags['prompt-file'] === undefined)) throw new MemgptError('generate: give one of --prompt TEXT and --prompt-file PATH');
  const promptText = typeof flags.prompt === 'string' ? flags.prompt : readPromptFile(flags['prompt-file'] as string);
  const options = {
    maxTokens: int(flags, 'max-tokens', 200, 0),
    temperature: num(flags, 'temperature', 1),
    topK: flags['top-k'] === undefined ? undefined : int(flags, 'top-k', 0),
    topP: num(flags, 'top-p', 1, (n) => n > 0 && n <= 1, 'in (0, 1]'),
    minP: num(flags, 'min-p', 0, (n) => n >= 0 && n <= 1, 'in [0, 1]'),
    repetitionPenalty: num(flags, 'repetition-penalty', 1, (n) => n > 0, 'a number > 0'),
    seed: int(flags, 'seed', 0, 0),
    stop: stops,
  };
  if (options.stop.some((s) => s === '')) throw new MemgptError('generate: --stop must not be empty');
  useDevice(flags);
  const model = loadModel(ckpt);
  const abort = new AbortController();
  const onInterrupt = () => abort.abort();
  process.once('SIGINT', onInterrupt);
  try {
    const tokenizer = getTokenizer(model.config.tokenizer);
    if (tokenizer.encode(promptText).length === 0) throw new MemgptError('generate: the prompt is empty');
    const samples = int(flags, 'num-samples', 1);
    if (samples > 1) return await generateSamples(model, tokenizer, promptText, samples, { ...options, signal: abort.signal }, flags.json === true);
    const stream = streamTokens(model, tokenizer, promptText, { ...options, signal: abort.signal });
    let count = 0, text = '';
    let step = await stream.next();
    for (; !step.done; step = await stream.next()) {
      const t = step.value;
      if (t.token >= 0) count++;
      text += t.text;
      if (flags.json) console.log(JSON.stringify(t.token >= 0 ? { token: t.token, logprob: t.logprob, text: t.text } : { text: t.text }));
      else if (t.text) process.stdout.write(t.text);
    }
    const reason = step.value;
    if (flags.json) console.log(JSON.stringify({ done: true, reason, tokens: count, text }));
    else process.stdout.write('\n');
    if (reason === 'aborted') {
      console.error(`memgpt: generate: interrupted after ${count} tokens`);
      return 130;
    }
  } finally {
    process.off('SIGINT', onInterrupt);
    model.dispose();
  }
  return 0;
}
