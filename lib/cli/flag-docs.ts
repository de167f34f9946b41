// Every flag of every `memgpt` command, once: its type, what it means and its default. The commands parse against
// specOf(command), and `memgpt COMMAND --help` prints flagTable(command), so a flag cannot be parsed and left out
// of the help.
import { cudaKernelsVerified } from '../native/backend.js';

/** One flag: how it is parsed, the placeholder of its value, its default (in words) and one line on what it does. */
export interface FlagDoc {
  name: string;
  type: 'string' | 'boolean' | 'strings';
  value?: string;
  default?: string;
  help: string;
}

const device: FlagDoc = {
  name: 'device', type: 'string', value: 'cpu|cuda', help: 'where to run; MEMGPT_DEVICE does the same',
  default: cudaKernelsVerified ? 'cuda where a GPU is usable, else cpu' : 'cpu (CUDA is opt-in until its kernels are verified on a GPU)',
};
const json: FlagDoc = { name: 'json', type: 'boolean', help: 'machine-readable output: JSON lines on stdout' };

export const flagDocs = {
  train: [
    { name: 'preset', type: 'string', value: 'tiny|small|base', default: 'tiny', help: 'the model shape and its training recipe (lr, batch, segments, warmup)' },
    { name: 'config', type: 'string', value: 'FILE.json', help: 'a model config (SPEC §2 keys) instead of a preset' },
    { name: 'init', type: 'string', value: 'CKPT', help: 'start from a checkpoint\'s weights (its architecture) instead of a fresh init' },
    { name: 'data', type: 'string', value: 'PATH', help: 'the training text (required); the last --held-out of it is held out' },
    { name: 'out', type: 'string', value: 'DIR', help: 'the run folder: checkpoints, metrics.jsonl, plots (required)' },
    { name: 'tokenizer', type: 'string', value: 'byte|gpt2', default: "the preset's or config's", help: 'the tokenizer, overriding the preset\'s or config\'s (its vocabulary size follows)' },
    { name: 'mem-slots', type: 'string', value: 'S', default: "the preset's or config's", help: 'memory slots a layer (0: no memory), overriding the preset or config' },
    { name: 'segment-len', type: 'string', value: 'T', default: "the preset's or config's", help: 'tokens a segment, overriding the preset or config' },
    { name: 'steps', type: 'string', value: 'N', default: '1000', help: 'optimizer steps of the whole run' },
    { name: 'batch-size', type: 'string', value: 'B', default: "the preset's recipe (8; base 16)", help: 'samples a step' },
    { name: 'segments', type: 'string', value: 'K', default: "the preset's recipe (4; base 2)", help: 'segments a sample: how far back the gradient reaches through the memory' },
    { name: 'lr', type: 'string', value: 'X', default: "the preset's recipe (tiny 3e-3, small 1e-3, base 6e-4)", help: 'peak learning rate' },
    { name: 'min-lr', type: 'string', value: 'X', default: '0.1 × --lr', help: 'where the cosine schedule ends (at most --lr)' },
    { name: 'warmup', type: 'string', value: 'N', default: "the recipe's (100; base 200), at most steps/10", help: 'steps of linear warmup' },
    { name: 'schedule', type: 'string', value: 'cosine|constant', default: 'cosine', help: 'the learning rate after the warmup' },
    { name: 'optimizer', type: 'string', value: 'adamw|sgd', default: 'adamw', help: 'AdamW (betas 0.9, 0.95) or plain SGD' },
    { name: 'weight-decay', type: 'string', value: 'W', default: '0.1', help: 'AdamW weight decay, on the matrices only' },
    { name: 'grad-clip', type: 'string', value: 'C', default: '1', help: 'clip the gradient\'s global norm to C (0: off)' },
    { name: 'grad-accum', type: 'string', value: 'N', default: '1', help: 'micro-batches summed into each step' },
    { name: 'order', type: 'string', value: 'random|sequential|stream', default: 'random', help: 'how samples are drawn: random windows, windows in order, or stream (each batch row reads whole documents, its memory carried from batch to batch)' },
    { name: 'seed', type: 'string', value: 'S', default: '0', help: 'seed of the initialisation and the sample order' },
    { name: 'held-out', type: 'string', value: 'FRACTION', default: '0.05', help: 'the fraction at the end of --data held out for evaluation (0: none)' },
    { name: 'eval-every', type: 'string', value: 'N', default: '0 (only at the end)', help: 'evaluate on the held-out text every N steps' },
    { name: 'eval-batches', type: 'string', value: 'N', default: '8', help: 'held-out batches an evaluation reads' },
    { name: 'checkpoint-every', type: 'string', value: 'N', default: '0 (only at the end)', help: 'write a checkpoint every N steps' },
    { name: 'log-every', type: 'string', value: 'N', default: '10', help: 'log a metrics row (and a progress line) every N steps' },
    { name: 'sample-every', type: 'string', value: 'N', default: '0 (never)', help: 'print a short greedy generation every N steps, to watch what the model learns' },
    { name: 'precision', type: 'string', value: 'float32|bfloat16', default: 'float32', help: 'the forward\'s precision (weights and optimizer state stay float32)' },
    { name: 'resume', type: 'boolean', help: 'continue the run in --out with its saved options (only --steps and the every-N flags may change; the world size may)' },
    { name: 'nproc-per-node', type: 'string', value: 'N', default: '1', help: 'data parallel: start N ranks on this node (--batch-size is per rank); ranks started by torchrun read RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT instead' },
    { name: 'nnodes', type: 'string', value: 'N', default: '1', help: 'data parallel: nodes of the run, each started with the same command and its --node-rank' },
    { name: 'node-rank', type: 'string', value: 'K', default: '0', help: 'data parallel: this node\'s index among --nnodes' },
    { name: 'master-addr', type: 'string', value: 'HOST', default: '127.0.0.1', help: 'data parallel: the host of node 0 (needed with --nnodes > 1)' },
    { name: 'master-port', type: 'string', value: 'PORT', default: 'a free port (one node), 29500 (several)', help: 'data parallel: the rendezvous port on node 0' },
    { name: 'zero', type: 'string', value: '0|1', default: '0', help: 'data parallel: 1 shards AdamW\'s state over the ranks (ZeRO-1)' },
    { name: 'dist-timeout', type: 'string', value: 'SECONDS', default: '300', help: 'data parallel: how long a rank waits for the others in a collective before the run ends' },
    device,
    json,
  ],
  eval: [
    { name: 'checkpoint', type: 'string', value: 'CKPT', help: 'the model to score (required)' },
    { name: 'data', type: 'string', value: 'PATH', help: 'the text to score (required)' },
    { name: 'stream', type: 'boolean', help: 'score the whole file as one stream, the memory carried from start to end' },
    { name: 'segments', type: 'string', value: 'K', default: '4', help: 'segments a sample (without --stream)' },
    { name: 'batch-size', type: 'string', value: 'B', default: '1', help: 'samples a batch (without --stream)' },
    device,
    json,
  ],
  generate: [
    { name: 'checkpoint', type: 'string', value: 'CKPT', help: 'the model (required)' },
    { name: 'prompt', type: 'string', value: 'TEXT', help: 'the prompt (or --prompt-file)' },
    { name: 'prompt-file', type: 'string', value: 'PATH', help: 'read the prompt from a file (at most 16 MiB)' },
    { name: 'max-tokens', type: 'string', value: 'N', default: '200', help: 'tokens to generate' },
    { name: 'temperature', type: 'string', value: 'X', default: '1', help: 'divides log P before sampling; 0 is greedy' },
    { name: 'top-k', type: 'string', value: 'K', default: 'off', help: 'sample among the K most likely tokens' },
    { name: 'top-p', type: 'string', value: 'P', default: '1 (off)', help: 'sample among the most likely tokens whose probabilities add up to P' },
    { name: 'min-p', type: 'string', value: 'P', default: '0 (off)', help: 'drop tokens less likely than P times the most likely one' },
    { name: 'repetition-penalty', type: 'string', value: 'R', default: '1 (off)', help: 'P^R for tokens already in the context (> 1 discourages repeats)' },
    { name: 'stop', type: 'strings', value: 'TEXT', help: 'end before this text (repeatable; the stop text is not printed)' },
    { name: 'seed', type: 'string', value: 'S', default: '0', help: 'seed of the sampler (sample b of --num-samples uses S + b)' },
    { name: 'num-samples', type: 'string', value: 'N', default: '1', help: 'N continuations of the prompt, decoded together in one batch, printed as each set is done' },
    device,
    { ...json, help: 'one JSON line per token (id, log-probability, text), then {done, reason, tokens, text}' },
  ],
  bench: [
    { name: 'preset', type: 'string', value: 'NAME', default: 'small', help: 'kernels: small|base|all; train, decode: tiny|small|base' },
    { name: 'only', type: 'string', value: 'SUBSTRING', help: 'kernels: only the kernels whose name contains this' },
    { name: 'batch-size', type: 'string', value: 'B', default: '8', help: 'train: samples a step' },
    { name: 'segments', type: 'string', value: 'K', default: '4', help: 'train: segments a sample' },
    { name: 'steps', type: 'string', value: 'N', default: '5', help: 'train: timed steps (their median is reported)' },
    { name: 'warmup', type: 'string', value: 'N', default: '1', help: 'train: untimed steps first' },
    { name: 'precision', type: 'string', value: 'float32|bfloat16', default: 'float32', help: 'train, decode: the forward\'s precision' },
    { name: 'batches', type: 'string', value: 'LIST', default: '1,4,16', help: 'decode: batch sizes timed through BatchDecoder, after batch 1 through Decoder' },
    { name: 'tokens', type: 'string', value: 'N', default: '320', help: 'decode: greedy tokens each sequence decodes a repeat' },
    { name: 'repeats', type: 'string', value: 'N', default: '3', help: 'decode: repeats of each batch size (their median is reported)' },
    { name: 'eager', type: 'boolean', help: 'decode: run every step\'s layers again instead of replaying the recorded kernels' },
    { name: 'decoder-only', type: 'boolean', help: 'decode: batch 1 through Decoder alone (no --batches)' },
    { name: 'out', type: 'string', value: 'FILE.json', help: 'decode: also write the JSON result to this file (whole, then renamed into place)' },
    device,
    json,
  ],
  books: [
    { name: 'corpus', type: 'string', value: 'kjv|linux-doc|austen|all|LIST', default: 'all', help: 'the corpora, or a comma-separated list of them' },
    { name: 'preset', type: 'string', value: 'tiny|small', default: 'tiny', help: 'the model shape; each variant changes it as its name says' },
    { name: 'variants', type: 'string', value: 'LIST', default: 'the comparisons, below', help: 'comma-separated variants (below)' },
    { name: 'seeds', type: 'string', value: 'N', default: '3', help: 'seeds 0 … N−1 of each variant' },
    { name: 'seed-list', type: 'string', value: 'LIST', help: 'these seeds instead of --seeds (comma-separated)' },
    { name: 'steps', type: 'string', value: 'N', default: '3000', help: 'training steps of each run; every variant trains on the same tokens' },
    { name: 'lr', type: 'string', value: 'X', default: "the preset's recipe", help: 'peak learning rate of every run' },
    { name: 'jobs', type: 'string', value: 'N', default: '1', help: 'runs side by side, each in its own process on threads/jobs threads' },
    { name: 'out', type: 'string', value: 'FILE.json', default: 'books-cpu.json', help: 'the results file; finished runs in it are not run again; plots go beside it (FILE-<corpus>-<preset>.svg)' },
    { name: 'eval-bytes', type: 'string', value: 'N', default: '0: whole documents', help: 'score only the first N bytes of each held-out document' },
    { name: 'spec-version', type: 'string', value: '1|2', default: "the preset's (2)", help: 'the memory of this SPEC version (runs of another than the preset\'s are named "<variant> v1")' },
    { name: 'cache', type: 'string', value: 'DIR', default: '$MEMGPT_CACHE/books or ~/.cache/memgpt/books', help: 'where the corpora live' },
    { name: 'setup', type: 'boolean', help: 'fetch and unpack the corpora (apt-get download, no root), then stop' },
    { name: 'keep-runs', type: 'boolean', help: 'keep each run\'s folder (checkpoints, metrics) instead of deleting it' },
    { name: 'merge', type: 'string', value: 'A.json,B.json', help: 'merge the runs of these results files into --out (e.g. from several machines), then stop' },
    { name: 'one', type: 'string', value: 'SPEC.json', help: 'internal: one run, its result as one JSON line (what each --jobs child runs)' },
    json,
  ],
  demo: [
    { name: 'steps', type: 'string', value: 'N', default: '500', help: 'training steps of the demo' },
    { name: 'lr', type: 'string', value: 'X', default: '200', help: 'learning rate of its plain gradient descent' },
    { name: 'seed', type: 'string', value: 'S', default: '0', help: 'seed' },
    device,
  ],
  doctor: [json],
} satisfies Record<string, FlagDoc[]>;

export type CommandName = keyof typeof flagDocs;

/** The parse spec of a command's flags (or of the named ones only). */
export function specOf(command: CommandName, only?: readonly string[]): Record<string, FlagDoc['type']> {
  const docs: FlagDoc[] = flagDocs[command];
  return Object.fromEntries(docs.filter((f) => !only || only.includes(f.name)).map((f) => [f.name, f.type]));
}

/** The "Flags:" section of `memgpt COMMAND --help`: one line a flag, with its default. */
export function flagTable(command: CommandName): string {
  const docs: FlagDoc[] = flagDocs[command];
  const heads = docs.map((f) => `--${f.name}${f.value ? ` ${f.value}` : ''}${f.type === 'strings' ? ' (repeatable)' : ''}`);
  const width = Math.max(...heads.map((h) => h.length)) + 2;
  return docs.map((f, i) => `  ${heads[i].padEnd(width)}${f.help}${f.default ? ` (default: ${f.default})` : ''}`).join('\n');
}
