// `memgpt bench [kernels|train|decode|books]`: the kernel microbenchmarks, the training-step benchmark (SPEC §8) and
// the decoding benchmark, as a table or, with --json, one JSON document on stdout; and the long-document benchmark
// (lib/cli/bench/books).
import { defaultDevice } from '../../native/backend.js';
import { presets, type PresetName } from '../../nn/config.js';
import { choice, int, parse, useDevice } from '../flags.js';
import { specOf } from '../flag-docs.js';
import { MemgptError } from '../../core/errors.js';
import { writeFileAtomic } from '../../train/run-folder.js';
import { formatDecodeBench, runDecodeBench } from './decode.js';
import { formatKernelBench, runKernelBench, type KernelBenchResult } from './kernels.js';
import { formatTrainBench, runTrainBench, type TrainBenchResult } from './train.js';
import type { Preset } from './types.js';
import { booksCommand } from './books/command.js';

// Each bench takes its own flags of the bench table (lib/cli/flag-docs.ts).
const kernelFlags = specOf('bench', ['preset', 'only', 'device', 'json']);
const trainFlags = specOf('bench', ['preset', 'batch-size', 'segments', 'steps', 'warmup', 'device', 'json', 'precision']);
const decodeFlags = specOf('bench', ['preset', 'batches', 'tokens', 'repeats', 'precision', 'eager', 'decoder-only', 'out', 'device', 'json']);

function kernels(argv: string[]): { json: boolean; result: KernelBenchResult } {
  const flags = parse(argv, kernelFlags);
  const which = choice(flags, 'preset', ['small', 'base', 'all'] as const, 'small');
  useDevice(flags);
  const result = runKernelBench({
    device: defaultDevice(), presets: which === 'all' ? ['small', 'base'] : [which as Preset],
    only: typeof flags.only === 'string' ? flags.only : undefined,
    onError: (message) => console.error(`memgpt bench: ${message}`),
  });
  return { json: flags.json === true, result };
}

function train(argv: string[]): { json: boolean; result: TrainBenchResult } {
  const flags = parse(argv, trainFlags);
  const preset = choice(flags, 'preset', Object.keys(presets) as PresetName[], 'small');
  useDevice(flags);
  const result = runTrainBench({
    device: defaultDevice(), preset, batch: int(flags, 'batch-size', 8), segments: int(flags, 'segments', 4),
    steps: int(flags, 'steps', 5), warmup: int(flags, 'warmup', 1, 0),
    precision: choice(flags, 'precision', ['float32', 'bfloat16'] as const, 'float32'),
  });
  return { json: flags.json === true, result };
}

function decode(argv: string[]): number {
  const flags = parse(argv, decodeFlags);
  const preset = choice(flags, 'preset', Object.keys(presets) as PresetName[], 'small');
  const list = typeof flags.batches === 'string' ? flags.batches : '1,4,16';
  const batches = list.split(',').map((b) => (/^[0-9]+$/.test(b) ? Number(b) : NaN));
  if (!batches.every((b) => Number.isSafeInteger(b) && b >= 1 && b <= 4096)) throw new MemgptError(`--batches must be comma-separated batch sizes from 1 to 4096 (got '${list}')`);
  if (flags['decoder-only'] === true && flags.batches !== undefined) throw new MemgptError('--decoder-only times batch 1 alone: give it no --batches');
  useDevice(flags);
  const result = runDecodeBench({
    device: defaultDevice(), preset, batches: flags['decoder-only'] === true ? [] : batches,
    tokens: int(flags, 'tokens', 320), repeats: int(flags, 'repeats', 3),
    precision: choice(flags, 'precision', ['float32', 'bfloat16'] as const, 'float32'), graphs: flags.eager !== true,
  });
  if (typeof flags.out === 'string') writeFileAtomic(flags.out, JSON.stringify(result, null, 2) + '\n');
  console.log(flags.json === true ? JSON.stringify(result, null, 2) : formatDecodeBench(result));
  return 0;
}

/** `memgpt bench`: returns the exit code. With no subcommand: kernels and train, at the small preset. */
export async function benchCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'books') return booksCommand(rest);
  if (sub === 'decode') return decode(rest);
  if (sub === 'kernels') {
    const { json, result } = kernels(rest);
    console.log(json ? JSON.stringify(result, null, 2) : formatKernelBench(result));
  } else if (sub === 'train') {
    const { json, result } = train(rest);
    console.log(json ? JSON.stringify(result) : formatTrainBench(result));
  } else if (sub === undefined || sub === '--json' || sub === '--device') {
    const flags = parse(argv, specOf('bench', ['device', 'json']));
    console.error('memgpt bench: the kernels at the small preset, then a small-preset training step (memgpt bench kernels|train [flags] for either)');
    const k = kernels(argv), t = train(argv);
    console.log(flags.json ? JSON.stringify({ kernels: k.result, train: t.result }, null, 2) : `${formatKernelBench(k.result)}\n\n${formatTrainBench(t.result)}`);
  } else {
    throw new MemgptError(`bench: unknown benchmark '${sub}' (kernels, train, decode or books)`);
  }
  return 0;
}
