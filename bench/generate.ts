// Generation with a long context: memory and time per token must stay flat however much text came before
// (SPEC §5). One Decoder prefills random bytes (the fast full-segment path) up to each context length, then
// times generated tokens there and records live tensors, allocator bytes and the process RSS.
// Usage: npx tsx bench/generate.ts [--preset tiny] [--threads N] [--contexts 1000,100000,1000000] [--tokens 200] [--budget-s 180] [--out FILE]
import { writeFileSync, renameSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';

import * as mg from '../lib/index.js';
import { yieldToEventLoop } from '../lib/cli/train.js';
import { presets, type PresetName } from '../lib/nn/config.js';
import { MemGPT } from '../lib/nn/model.js';
import { Decoder } from '../lib/infer/single-decoder.js';
import { sampleToken } from '../lib/infer/sampling.js';

const { values: flags } = parseArgs({
  options: {
    preset: { type: 'string', default: 'tiny' },
    contexts: { type: 'string', default: '1000,100000,1000000' },
    tokens: { type: 'string', default: '200' },
    'budget-s': { type: 'string', default: '180' },
    threads: { type: 'string' },
    out: { type: 'string' },
  },
});
const preset = flags.preset as PresetName;
if (!(preset in presets)) throw new Error(`unknown preset ${preset}`);
const contexts = flags.contexts.split(',').map(Number);
const genTokens = Number(flags.tokens);
const budgetS = Number(flags['budget-s']);
const cfg = presets[preset];
if (flags.threads) mg.setNumThreads(Number(flags.threads));

const model = MemGPT.init(cfg, { seed: 0, device: 'cpu' });
const decoder = new Decoder(model);
const data = new mg.Rng(1), sampler = new mg.Rng(2);
const chunk = cfg.segmentLen * 1024;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const mib = (bytes: number) => Math.round((bytes / 2 ** 20) * 10) / 10;

interface Row {
  context: number;
  prefillTokens: number;
  prefillSeconds: number;
  prefillTokensPerSecond: number;
  medianMsPerToken: number;
  p90MsPerToken: number;
  liveTensors: number;
  bytesInUse: number;
  rssMiB: number;
  /** RSS change over the timed generated tokens alone. */
  rssGrowthDuringGenerationKiB: number;
  note?: string;
}
// Warm-up (JIT, allocator caches) on a throwaway decoder, so the first row measures the same code as the rest.
{
  const warm = new Decoder(model);
  warm.feedMany(Int32Array.from({ length: 20 * cfg.segmentLen + 5 }, (_, i) => i % 256));
  for (let i = 0; i < 2 * cfg.segmentLen; i++) warm.feed(sampleToken(warm.distribution(), { temperature: 1, topP: 1 }, sampler));
  warm.dispose();
}

const rows: Row[] = [];
const started = performance.now();
let note: string | undefined;

for (const target of contexts) {
  // Prefill from where the last measurement left off, in chunks so the time budget can be checked.
  let want = target - decoder.length;
  const last = rows[rows.length - 1];
  if (last && want > 0) {
    const spentS = (performance.now() - started) / 1000;
    const estimateS = want / last.prefillTokensPerSecond;
    if (spentS + estimateS > budgetS) {
      const fits = Math.max(0, Math.floor((budgetS - spentS) * last.prefillTokensPerSecond * 0.9));
      note = `prefill to ${target} tokens would take about ${Math.round(estimateS)} s at ${Math.round(last.prefillTokensPerSecond)} tokens/s; ` +
        `measured at ${decoder.length + fits} tokens instead (budget ${budgetS} s)`;
      want = fits;
    }
  }
  const t0 = performance.now();
  let fed = 0;
  while (fed < want) {
    const n = Math.min(chunk, want - fed);
    decoder.feedMany(Int32Array.from({ length: n }, () => data.int(256)));
    fed += n;
    await yieldToEventLoop();
    if (fed % (chunk * 8) === 0) console.error(`  prefilled ${decoder.length} tokens, ${Math.round(fed / ((performance.now() - t0) / 1000))} tokens/s`);
  }
  const prefillSeconds = (performance.now() - t0) / 1000;
  const context = decoder.length;
  const times: number[] = [];
  const rssBefore = process.memoryUsage().rss;
  for (let i = 0; i < genTokens; i++) {
    const s = performance.now();
    decoder.feed(sampleToken(decoder.distribution(), { temperature: 1, topP: 1 }, sampler));
    times.push(performance.now() - s);
    await yieldToEventLoop();  // outside the timed part
  }
  const mem = mg.memory('cpu');
  const row: Row = {
    context,
    prefillTokens: fed,
    prefillSeconds: Math.round(prefillSeconds * 100) / 100,
    prefillTokensPerSecond: fed > 0 ? Math.round(fed / prefillSeconds) : 0,
    medianMsPerToken: Math.round(median(times) * 1000) / 1000,
    p90MsPerToken: Math.round([...times].sort((a, b) => a - b)[Math.floor(times.length * 0.9)] * 1000) / 1000,
    liveTensors: mem.liveTensors,
    bytesInUse: mem.bytesInUse,
    rssMiB: mib(process.memoryUsage().rss),
    rssGrowthDuringGenerationKiB: Math.round((process.memoryUsage().rss - rssBefore) / 1024),
  };
  if (note && context < target) row.note = note;
  rows.push(row);
  console.error(JSON.stringify(row));
  if (note) break;
}
decoder.dispose();
model.dispose();

// What a small tensor's allocation and dispose() leave in the process (should be ~0: handles are plain externals).
const probeCount = 200_000;
const rss0 = process.memoryUsage().rss;
for (let i = 0; i < probeCount; i++) mg.zeros([16], { device: 'cpu' }).dispose();
const rssPerTensorAllocation = Math.round((process.memoryUsage().rss - rss0) / probeCount);

const result = {
  bench: 'generate',
  preset,
  device: 'cpu',
  machine: { cpu: cpus()[0]?.model ?? 'unknown', threads: mg.numThreads(), note: '2 cores shared with other jobs' },
  generatedTokensPerContext: genTokens,
  sampling: 'temperature 1, seeded; each timed token = distribution() + sampling + feed()',
  prefill: 'random bytes through Decoder.feedMany (model.segment per full segment: the fast path)',
  rows,
  ...(note ? { note } : {}),
  rssPerTensorAllocationBytes: rssPerTensorAllocation,
  rssNote: 'live tensors and allocator bytes are the same at every context; rssPerTensorAllocationBytes is what one small tensor allocated and disposed leaves in the process.',
  date: new Date().toISOString(),
};
const text = JSON.stringify(result, null, 2) + '\n';
console.log(text);
const out = flags.out ?? join(dirname(new URL(import.meta.url).pathname), 'results', 'generate-cpu.json');
const tmp = `${out}.tmp-${process.pid}`;
writeFileSync(tmp, text);
const fd = openSync(tmp, 'r');
fsyncSync(fd);
closeSync(fd);
renameSync(tmp, out);
