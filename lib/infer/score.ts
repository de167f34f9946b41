// Stream-mode scoring (SPEC.md §4): a whole token stream as one sample, memory carried across every segment.
import { noGrad } from '../core/autograd.js';
import { MemgptError } from '../core/errors.js';
import { keep, tensor, tidy } from '../core/tensor.js';
import type { MemGPT } from '../nn/model.js';
import { sum } from '../ops/reduce.js';
import { checkToken } from './decoder.js';

/**
 * Stream mode of SPEC §4: the whole token stream is one sample, memory carried across every segment and
 * never reset, the last partial segment processed with its actual length. Predicts tokens[1..n).
 */
export function scoreStream(model: MemGPT, tokens: ArrayLike<number>): { nllSum: number; tokens: number } {
  const n = tokens.length;
  if (n < 2) throw new MemgptError(`scoreStream: a stream needs at least 2 tokens (got ${n})`);
  for (let i = 0; i < n; i++) checkToken(model, tokens[i], `scoreStream (index ${i})`);
  const T = model.config.segmentLen, device = model.device;
  let memory = noGrad(() => model.initialMemory(1)).map((m) => keep(m));
  let nllSum = 0;
  try {
    for (let start = 0; start < n - 1; start += T) {
      const len = Math.min(T, n - 1 - start);
      const ids = (shift: number) => tensor(Int32Array.from({ length: len }, (_, t) => tokens[start + shift + t]), [1, len], { dtype: 'int32', device });
      const out = noGrad(() =>
        tidy(() => {
          const x = ids(0);
          const seg = model.segment(x, memory);
          return { nll: sum(model.segmentNLL(seg.hf, x, ids(1))), memory: seg.memory };
        }),
      );
      nllSum += out.nll.item();
      out.nll.dispose();
      for (const m of memory) m.dispose();
      memory = out.memory.map((m) => keep(m));
    }
  } finally {
    for (const m of memory) m.dispose();
  }
  return { nllSum, tokens: n - 1 };
}
