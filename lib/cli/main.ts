// The `memgpt` command line. Every failure is one clear line on stderr and a
// non-zero exit code; nothing here calls process.exit, so output is flushed.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { cudaKernelsVerified, defaultDevice, packageRoot, parseDevice, setDefaultDevice } from '../native/backend.js';
import { evalCommand } from './eval.js';
import { int, num, parse, useDevice } from './flags.js';
import { flagDocs, flagTable, specOf, type CommandName } from './flag-docs.js';
import { generateCommand } from './generate.js';
import { trainCommand } from './train.js';
import { doctorReport, formatDoctor } from './doctor.js';
import { benchCommand } from './bench/command.js';
import { runDemo } from '../tasks/demo.js';
import { MemgptError } from '../core/errors.js';

const usage = `memgpt — the Memory-Gated Pointer Transformer in TypeScript

Usage:
  memgpt train    (no arguments: the built-in pass-key demo, with and without memory)
  memgpt train    [--preset NAME | --config FILE.json | --init CKPT] --data PATH --out DIR
                  [--steps N] [--batch-size B] [--segments K] [--lr X] [--optimizer adamw|sgd]
                  [--weight-decay W] [--grad-clip C] [--warmup N] [--schedule cosine|constant]
                  [--order random|sequential|stream] [--seed S] [--device cpu|cuda] [--resume] [--json]
                  [--grad-accum N] [--eval-every N] [--eval-batches N] [--checkpoint-every N]
                  [--log-every N] [--held-out FRACTION] [--precision float32|bfloat16]
                  [--mem-slots S] [--segment-len T] [--tokenizer byte|gpt2]   (override the preset's or config's)
                  [--min-lr X] [--sample-every N]
                  [--nproc-per-node N] [--nnodes N --node-rank K --master-addr HOST] [--master-port PORT]
                  [--zero 0|1] [--dist-timeout SECONDS]   (data parallel on the CPU; torchrun's variables work too)
                  --resume: the run's saved options; only --steps, --eval-every, --eval-batches,
                  --checkpoint-every, --log-every and the number of ranks may change
  memgpt eval     --checkpoint CKPT --data PATH [--segments K] [--batch-size B] [--stream] [--json]
  memgpt generate --checkpoint CKPT (--prompt TEXT | --prompt-file PATH) [--max-tokens N] [--temperature X]
                  [--top-k K] [--top-p P] [--min-p P] [--repetition-penalty R] [--stop TEXT]... [--seed S]
                  [--num-samples N]   (N continuations decoded together, each printed when all are done)
                  [--json]   (one line per token: id, log-probability, text; Ctrl-C ends it cleanly)
  memgpt bench    [kernels|train|decode|books] [--device cpu|cuda] [--json]
                  kernels: [--preset small|base|all] [--only SUBSTRING]
                  train:   [--preset tiny|small|base] [--batch-size B] [--segments K] [--steps N] [--warmup N]
                           [--precision float32|bfloat16]
                  decode:  [--preset tiny|small|base] [--batches LIST] [--tokens N] [--repeats N]
                           [--precision float32|bfloat16] [--eager] [--decoder-only] [--out FILE.json]
                  books:   [--corpus kjv|linux-doc|austen|all] [--preset tiny|small] [--variants LIST]
                           [--seeds N] [--steps N] [--jobs N] [--out FILE.json] (memgpt bench books --help)
  memgpt demo     [--steps N] [--lr X] [--seed S] [--device cpu|cuda]
  memgpt doctor   [--json]   (the builds present, GPU, driver and runtime, which backend and why)
  memgpt --version | --help

${cudaKernelsVerified
    ? 'The device is CUDA when the CUDA addon loads and a GPU is present, else the CPU;\nMEMGPT_DEVICE=cpu|cuda or --device forces it.'
    : 'The device is the CPU unless CUDA is asked for (--device cuda or MEMGPT_DEVICE=cuda): the CUDA kernels\nare not yet verified on a GPU.'}
\`memgpt doctor\` says which is used and why. MEMGPT_NUM_THREADS sets CPU threads.`;

const commandHelp: Record<string, string> = {
  train: 'Trains a model on a text file (or, with no arguments, the built-in pass-key demo), writing a run folder with checkpoints, metrics and plots.',
  eval: 'Scores a checkpoint on a text file: loss and bits per byte (--stream: whole documents, memory carried).',
  generate: 'Continues a prompt from a checkpoint.',
  bench: 'Benchmarks: kernels (time and % of ceiling), train (a median training step), decode (greedy tokens/s by batch size), books (memory on real text).',
  demo: 'A few hundred steps of a toy model, to see that the install works.',
  doctor: 'Says which builds are present, what GPU, driver and runtime were found, and which backend runs and why.',
};

/** The usage lines of one command, with a line on what it does (memgpt COMMAND --help). */
function usageOf(command: string): string {
  const lines = usage.split('\n');
  const own: string[] = [];
  let inside = false;
  for (const line of lines) {
    if (line.startsWith('  memgpt ')) inside = line.startsWith(`  memgpt ${command} `);
    else if (!line.startsWith('    ')) inside = false;
    if (inside) own.push(line);
  }
  const flags = command in flagDocs ? `\n\nFlags:\n${flagTable(command as CommandName)}` : '';
  return `memgpt ${command} — ${commandHelp[command]}\n\nUsage:\n${own.join('\n')}${flags}`;
}

function version(): string {
  const pkg = JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version: string };
  return pkg.version;
}

function positiveInt(value: string | undefined, flag: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new MemgptError(`${flag} must be a positive integer (got '${value}')`);
  return n;
}

function positiveNumber(value: string | undefined, flag: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new MemgptError(`${flag} must be a positive number (got '${value}')`);
  return n;
}

function demo(argv: string[]): number {
  const flags = parse(argv, specOf('demo'));
  useDevice(flags);
  const device = defaultDevice();
  const result = runDemo({
    device,
    steps: int(flags, 'steps', 500),
    lr: num(flags, 'lr', 200, (n) => n > 0, 'a positive number'),
    seed: int(flags, 'seed', 0, 0),
    log: (line) => console.log(line),
  });
  if (!(result.finalLoss < result.firstLoss)) throw new MemgptError(`demo: the loss did not decrease (${result.firstLoss} -> ${result.finalLoss})`);
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  try {
    const [command, ...rest] = argv;
    if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
      console.log(usage);
      return command === undefined ? 1 : 0;
    }
    if (command === '--version' || command === '-v') {
      console.log(version());
      return 0;
    }
    const wantsHelp = rest.includes('--help') || rest.includes('-h');
    // `memgpt bench books --help` has its own, longer help.
    if (wantsHelp && command in commandHelp && !(command === 'bench' && rest[0] === 'books')) {
      console.log(usageOf(command));
      return 0;
    }
    if (command === 'demo') return demo(rest);
    if (command === 'train') return await trainCommand(rest);
    if (command === 'eval') return evalCommand(rest);
    if (command === 'generate') return await generateCommand(rest);
    if (command === 'bench') return await benchCommand(rest);
    if (command === 'doctor') {
      const flags = parse(rest, specOf('doctor'));
      const report = doctorReport();
      console.log(flags.json ? JSON.stringify(report, null, 2) : formatDoctor(report));
      return 0;
    }
    throw new MemgptError(`unknown command '${command}' (run memgpt --help)`);
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    // parseArgs errors carry a code; ours are MemgptError; anything else is a bug worth its stack.
    const known = e instanceof MemgptError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS');
    console.error(`memgpt: ${known ? message.split('\n')[0] : (e as Error).stack ?? message}`);
    return 2;
  }
}
