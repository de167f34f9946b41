// `memgpt eval`: a checkpoint's loss, bits per token and bits per byte on a text file, in batches or as one stream.
import { MemgptError } from '../core/errors.js';
import { getTokenizer, loadCorpus } from '../data/index.js';
import { scoreStream } from '../infer/score.js';
import { loadModel } from '../io/checkpoint.js';
import { evaluateLoss } from '../train/trainer.js';
import { int, parse, required, useDevice } from './flags.js';
import { specOf } from './flag-docs.js';

/** `memgpt eval`. */
export function evalCommand(argv: string[]): number {
  const flags = parse(argv, specOf('eval'));
  const ckpt = required(flags, 'checkpoint', 'eval');
  const data = required(flags, 'data', 'eval');
  useDevice(flags);
  const model = loadModel(ckpt);
  try {
    const corpus = loadCorpus(data, getTokenizer(model.config.tokenizer));
    let loss: number, tokens: number;
    if (flags.stream) {
      const r = scoreStream(model, corpus.tokens);
      [loss, tokens] = [r.nllSum / r.tokens, r.tokens];
    } else {
      const batchSize = int(flags, 'batch-size', 1), segments = int(flags, 'segments', 4);
      ({ loss, tokens } = evaluateLoss(model, corpus, batchSize, segments, Number.MAX_SAFE_INTEGER));
    }
    // Finite weights can still overflow float32 on the way (weights near 3e38): a loss that is not a number is no result.
    if (!Number.isFinite(loss)) throw new MemgptError(`eval: the loss is ${loss}: ${ckpt} gives activations that overflow float32`);
    const bitsPerToken = loss / Math.LN2;
    // Bytes per predicted token of this corpus, to turn bits per token into bits per byte.
    const bytesPerToken = corpus.bytes / corpus.tokens.length;
    const result = { loss, tokens, bitsPerToken, perplexity: Math.exp(loss), bitsPerByte: bitsPerToken / bytesPerToken, stream: flags.stream === true };
    if (flags.json) console.log(JSON.stringify(result));
    else console.log(`loss ${loss.toFixed(4)} nats/token over ${tokens} tokens; perplexity ${result.perplexity.toFixed(3)}; ${bitsPerToken.toFixed(4)} bits/token; ${result.bitsPerByte.toFixed(4)} bits/byte`);
  } finally {
    model.dispose();
  }
  return 0;
}
