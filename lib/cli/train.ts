// `memgpt train`: flags and validation, the run folder (locked, resumed with its saved options), progress output,
// and the built-in pass-key demo that `memgpt train` with no arguments runs.
import { accessSync, constants as fsConstants, existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, resolve as resolvePath } from 'node:path';
import cliProgress from 'cli-progress';

import { MemgptError } from '../core/errors.js';
import { defaultDevice, setNumThreads } from '../native/backend.js';
import { getTokenizer, loadCorpus, splitCorpus, type Corpus } from '../data/index.js';
import { loadModel } from '../io/checkpoint.js';
import { presets, resolveConfig, type ModelConfig, type PresetName } from '../nn/config.js';
import { MemGPT } from '../nn/model.js';
import { generateTokens } from '../infer/sampling.js';
import { specOf } from './flag-docs.js';
import { defaultPasskeyTask, passkeyAccuracy, passkeyTrainer } from '../tasks/passkey.js';
import { RunLock, committedCheckpoint, runFiles } from '../train/run-folder.js';
import { Trainer, defaultTrainOptions, loadRunModel, recipes, savedTrainerState, type Recipe, type TrainerState, type TrainOptions } from '../train/trainer.js';
import { choice, int, num, parse, required, useDevice, type Flags } from './flags.js';
import { DEFAULT_TIMEOUT_SECONDS, ProcessGroup, cpuEngineStatus, rankFromEnv } from '../parallel/group.js';
import { launchRanks } from '../parallel/launch.js';
import { checkParallelDevice } from '../parallel/data-parallel.js';

/** Lets Node run its queued work (timers, signals, FinalizationRegistry callbacks) between steps. */
export const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));
/**
 * `--out` must be a folder this process can create or write into, checked before anything is trained: an
 * existing file, a path below a file, a read-only or unwritable place, or /proc (where Node's recursive mkdir
 * never returns) is refused with one line.
 */
function checkRunFolder(out: string): void {
  const resolved = resolvePath(out);
  if (resolved === '/proc' || resolved.startsWith('/proc/') || resolved === '/sys' || resolved.startsWith('/sys/'))
    throw new MemgptError(`train: --out ${out} is under ${resolved.startsWith('/proc') ? '/proc' : '/sys'}, not a place for a run folder`);
  let existing = resolved;
  while (!existsSync(existing)) existing = dirname(existing);  // the nearest part of the path that exists
  const stat = statSync(existing);
  if (!stat.isDirectory()) {
    throw new MemgptError(existing === resolved ? `train: --out ${out} is a file, not a folder`
      : `train: --out ${out} lies below ${existing}, which is a file`);
  }
  try {
    accessSync(existing, fsConstants.W_OK | fsConstants.X_OK);
  } catch {
    throw new MemgptError(`train: --out ${out}: ${existing} is not writable by this process`);
  }
}

/** A config file is a small JSON file: anything else (a device, a FIFO, a huge file) is refused before reading. */
const MAX_CONFIG_BYTES = 1 << 20;

function readConfigFile(path: string): Partial<ModelConfig> {
  if (!existsSync(path)) throw new MemgptError(`--config: ${path} does not exist`);
  const stat = statSync(path);
  if (!stat.isFile()) throw new MemgptError(`--config: ${path} is not a regular file`);
  if (stat.size > MAX_CONFIG_BYTES) throw new MemgptError(`--config: ${path} is ${stat.size} bytes; a config is at most ${MAX_CONFIG_BYTES}`);
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Partial<ModelConfig>;
  } catch (e) {
    throw new MemgptError(`--config: ${path} is not valid JSON (${(e as Error).message})`);
  }
}

const trainFlags = specOf('train');

/** The training options from the flags, on top of a preset's recipe (learning rate, batch, BPTT depth, warmup). */
export function trainOptionsFromFlags(flags: Flags, recipe: Recipe = recipes.tiny): TrainOptions {
  const d = defaultTrainOptions;
  const steps = int(flags, 'steps', d.steps);
  const lr = num(flags, 'lr', recipe.lr, (n) => n > 0, 'a positive number');
  return {
    steps,
    batchSize: int(flags, 'batch-size', recipe.batchSize),
    segments: int(flags, 'segments', recipe.segments),
    lr,
    minLrRatio: flags['min-lr'] === undefined ? d.minLrRatio : num(flags, 'min-lr', 0, (n) => n <= lr, `a number in [0, --lr ${lr}]`) / lr,
    warmup: int(flags, 'warmup', Math.min(recipe.warmup, Math.floor(steps / 10)), 0),
    schedule: choice(flags, 'schedule', ['cosine', 'constant'] as const, d.schedule),
    optimizer: choice(flags, 'optimizer', ['adamw', 'sgd'] as const, d.optimizer),
    weightDecay: num(flags, 'weight-decay', d.weightDecay),
    gradClip: num(flags, 'grad-clip', d.gradClip),
    gradAccum: int(flags, 'grad-accum', d.gradAccum),
    order: choice(flags, 'order', ['random', 'sequential', 'stream'] as const, d.order),
    seed: int(flags, 'seed', d.seed, 0),
    evalEvery: int(flags, 'eval-every', 0, 0),
    evalBatches: int(flags, 'eval-batches', d.evalBatches),
    checkpointEvery: int(flags, 'checkpoint-every', 0, 0),
    logEvery: int(flags, 'log-every', d.logEvery),
    precision: choice(flags, 'precision', ['float32', 'bfloat16'] as const, d.precision),
  };
}

// The flags that define a run: a resumed run keeps the values it was started with, and a different one is refused.
const runDefiningFlags = {
  'batch-size': 'batchSize', segments: 'segments', lr: 'lr', optimizer: 'optimizer', 'weight-decay': 'weightDecay',
  'grad-clip': 'gradClip', warmup: 'warmup', schedule: 'schedule', order: 'order', seed: 'seed', 'grad-accum': 'gradAccum',
  precision: 'precision', 'min-lr': 'minLrRatio',
} as const satisfies Record<string, keyof TrainOptions>;
// The flags a resumed run may change: how long it runs, and how often it evaluates, checkpoints and logs.
const resumableFlags = {
  steps: 'steps', 'eval-every': 'evalEvery', 'eval-batches': 'evalBatches', 'checkpoint-every': 'checkpointEvery', 'log-every': 'logEvery',
} as const satisfies Record<string, keyof TrainOptions>;
const mayChange = Object.keys(resumableFlags).map((f) => `--${f}`).join(', ');

/**
 * The options of a resumed run: the saved ones, with the flags of resumableFlags applied; a run-defining flag that
 * differs from the saved value is refused, naming it.
 */
function resumedOptions(flags: Flags, asked: TrainOptions, saved: Partial<TrainerState>, checkpoint: string): TrainOptions {
  const o = saved.options;
  if (!o || typeof o !== 'object') throw new MemgptError(`${checkpoint}: its trainer state has no options to resume with`);
  for (const [flag, key] of Object.entries(runDefiningFlags)) {
    if (flags[flag] !== undefined && asked[key] !== o[key]) {
      throw new MemgptError(`train --resume: --${flag} ${String(flags[flag])} differs from the run's ${String(o[key])}; a resumed run keeps the options it started with (only ${mayChange} may change)`);
    }
  }
  const options = { ...o } as TrainOptions;
  for (const [flag, key] of Object.entries(resumableFlags)) if (flags[flag] !== undefined) options[key] = asked[key];
  if (typeof saved.step === 'number' && options.steps < saved.step) {
    throw new MemgptError(`train --resume: --steps ${options.steps} is below the checkpoint's step ${saved.step}`);
  }
  return options;
}

/** The flags of the launcher, which its ranks do not get. */
const launcherFlags = ['nproc-per-node', 'nnodes', 'node-rank', 'master-addr', 'master-port'];

/** argv without the given flags (as `--flag value` or `--flag=value`). */
function withoutFlags(argv: string[], names: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i].replace(/^--/, '').split('=')[0];
    if (argv[i].startsWith('--') && names.includes(name)) {
      if (!argv[i].includes('=')) i++;
      continue;
    }
    out.push(argv[i]);
  }
  return out;
}

/** `memgpt train`: returns the exit code. */
export async function trainCommand(argv: string[]): Promise<number> {
  if (argv.length === 0) return defaultTrainCommand();
  const flags = parse(argv, trainFlags);
  const data = required(flags, 'data', 'train');
  const out = required(flags, 'out', 'train');
  checkRunFolder(out);
  const nprocPerNode = int(flags, 'nproc-per-node', 1), nnodes = int(flags, 'nnodes', 1);
  const zero = Number(choice(flags, 'zero', ['0', '1'] as const, '0')) as 0 | 1;
  const timeout = num(flags, 'dist-timeout', DEFAULT_TIMEOUT_SECONDS, (n) => n > 0, 'a positive number of seconds');
  // Under torchrun (WORLD_SIZE set) this process is already a rank; otherwise --nproc-per-node starts the ranks.
  if ((nprocPerNode > 1 || nnodes > 1) && process.env.WORLD_SIZE === undefined) {
    const engine = cpuEngineStatus();  // said once here, not by every rank
    if (!engine.available) throw new MemgptError(engine.detail);
    return launchRanks(['train', ...withoutFlags(argv, launcherFlags)], {
      nprocPerNode, nnodes, nodeRank: int(flags, 'node-rank', 0, 0),
      masterAddr: typeof flags['master-addr'] === 'string' ? flags['master-addr'] : undefined,
      masterPort: flags['master-port'] === undefined ? undefined : int(flags, 'master-port', 29500),
    });
  }
  const rank = rankFromEnv();
  if (rank && rank.worldSize > 1) {
    // Said before the rendezvous; the Trainer says the same to the API.
    checkParallelDevice(String(flags.device ?? process.env.MEMGPT_DEVICE ?? 'cpu'));
    flags.device ??= 'cpu';
    // The node's cores are shared by its ranks (torchrun sets OMP_NUM_THREADS=1 for the same reason).
    const local = Number(process.env.LOCAL_WORLD_SIZE ?? 0);
    if (process.env.MEMGPT_NUM_THREADS === undefined && local > 1) setNumThreads(Math.max(1, Math.floor(availableParallelism() / local)));
  }
  const group = ProcessGroup.join(rank, timeout);
  try {
    return await trainRank(flags, data, out, group, zero);
  } finally {
    group.close();
  }
}

/** One rank's training (the only one without data parallelism). */
async function trainRank(flags: Flags, data: string, out: string, group: ProcessGroup, zero: 0 | 1): Promise<number> {
  const root = group.rank === 0;
  const sources = ['preset', 'config', 'init'].filter((k) => flags[k] !== undefined);
  if (sources.length > 1) throw new MemgptError(`train: give one of --preset, --config, --init (got ${sources.map((s) => `--${s}`).join(', ')})`);
  const presetName = (flags.preset ?? 'tiny') as string;
  // Own properties only: `--preset __proto__` or `toString` is not a preset.
  if (typeof flags.preset === 'string' && !Object.hasOwn(presets, presetName)) throw new MemgptError(`--preset must be one of ${Object.keys(presets).join(', ')} (got '${presetName}')`);
  const asked = trainOptionsFromFlags(flags, recipes[presetName as PresetName] ?? recipes.tiny);
  // --batch-size is per rank; the run's options (and its checkpoints) hold the global batch.
  asked.batchSize *= group.worldSize;
  // --mem-slots and --segment-len change the architecture of a preset or config (ablations without a config file).
  const overrides: Partial<ModelConfig> = {};
  if (flags['mem-slots'] !== undefined) overrides.memSlots = int(flags, 'mem-slots', 0, 0);
  if (flags['segment-len'] !== undefined) overrides.segmentLen = int(flags, 'segment-len', 1);
  if (flags.tokenizer !== undefined) {
    overrides.tokenizer = choice(flags, 'tokenizer', ['byte', 'gpt2'] as const, 'byte');
    overrides.vocabSize = getTokenizer(overrides.tokenizer).vocabSize;
  }
  const sampleEvery = int(flags, 'sample-every', 0, 0);
  const checkOverrides = (model: MemGPT, what: string) => {
    for (const [key, flag] of [['memSlots', 'mem-slots'], ['segmentLen', 'segment-len'], ['tokenizer', 'tokenizer']] as const) {
      if (overrides[key] !== undefined && overrides[key] !== model.config[key]) {
        model.dispose();
        throw new MemgptError(`train: --${flag} ${overrides[key]} does not fit ${what}, whose ${key} is ${model.config[key]}`);
      }
    }
  };
  let heldOutFraction = num(flags, 'held-out', 0.05, (n) => n >= 0 && n < 1, 'in [0, 1)');
  useDevice(flags);
  // The run folder is locked before it is looked at: two trainings into one --out, or two --resume, cannot both run.
  const files = runFiles(out);
  const lock = root ? RunLock.acquire(files) : null;
  try {
    const committed = committedCheckpoint(files);
    let options = asked;
    let saved: Partial<TrainerState> | undefined;
    if (!flags.resume && committed) {
      throw new MemgptError(`train: ${out} already holds a run${committed.legacy ? '' : ` (checkpoint at step ${committed.step})`}; continue it with --resume, or give another --out`);
    }
    if (!flags.resume && existsSync(files.metrics) && root) {
      // A run that stopped before its first checkpoint left only its log and plots: nothing to resume, so start again.
      for (const f of [files.metrics, files.lossPlot, files.memoryPlot, files.optimizerPlot]) rmSync(f, { force: true });
      console.error(`memgpt: ${out} holds a run that stopped before its first checkpoint; starting it again`);
    }
    let model: MemGPT;
    if (flags.resume) {
      // The model comes from the run folder; a --preset or --config given too must describe the same model.
      if (flags.init !== undefined) throw new MemgptError('train: --resume continues the run folder; --init cannot be combined with it');
      const found = savedTrainerState(out);
      if (found) {
        saved = found.state;
        options = resumedOptions(flags, asked, saved, found.checkpoint);
        const h = saved.data?.heldOut;
        if (typeof h === 'number') {
          if (flags['held-out'] !== undefined && h !== heldOutFraction) {
            throw new MemgptError(`train --resume: --held-out ${String(flags['held-out'])} differs from the run's ${h}; a resumed run keeps its split`);
          }
          heldOutFraction = h;
        }
      }
      model = loadRunModel(out);
      const config = typeof flags.config === 'string' ? resolveConfig({ ...readConfigFile(flags.config), ...overrides })
        : typeof flags.preset === 'string' ? resolveConfig({ ...presets[flags.preset as PresetName], ...overrides }) : undefined;
      if (config && JSON.stringify(resolveConfig(config)) !== JSON.stringify(model.config)) {
        model.dispose();
        throw new MemgptError(`train: the config given does not fit the checkpoint in ${out} (${JSON.stringify(model.config)})`);
      }
      checkOverrides(model, `the run in ${out}`);
    } else if (typeof flags.init === 'string') {
      model = loadModel(flags.init);
      checkOverrides(model, flags.init);
    } else if (typeof flags.config === 'string') {
      model = MemGPT.init(resolveConfig({ ...readConfigFile(flags.config), ...overrides }), { seed: options.seed });
    } else {
      model = MemGPT.init({ ...presets[presetName as PresetName], ...overrides }, { seed: options.seed });
    }
    let trainer: Trainer;
    let promptFrom: Int32Array;
    try {
      const tokenizer = getTokenizer(model.config.tokenizer);
      const corpus = loadCorpus(data, tokenizer);
      let train: Corpus = corpus, heldOut: Corpus | null = null;
      if (heldOutFraction > 0) ({ train, heldOut } = splitCorpus(corpus, heldOutFraction));
      const before = saved?.data;
      if (before && typeof before.trainTokens === 'number' && before.trainTokens !== train.tokens.length) {
        throw new MemgptError(`train --resume: --data ${data} gives ${train.tokens.length} training tokens; the run was trained on ` +
          `${before.trainTokens} (from ${String(before.path)}): resume with the same data`);
      }
      trainer = new Trainer(model, train, heldOut, out, options, { path: data, heldOut: heldOutFraction, trainTokens: train.tokens.length }, { group, zero });
      promptFrom = (heldOut ?? train).tokens;
    } catch (e) {
      model.dispose();
      throw e;
    }
    // --sample-every: a short greedy continuation of the held-out text's (or the training text's) first tokens.
    const codec = getTokenizer(model.config.tokenizer);
    const prompt = promptFrom.subarray(0, Math.min(32, promptFrom.length));
    const sample = sampleEvery > 0 && prompt.length > 0 ? {
      every: sampleEvery,
      print: (step: number) => {
        const tokens = [...generateTokens(model, prompt, { maxTokens: 48, temperature: 0 })];
        console.error(`sample at step ${step}: ${JSON.stringify(codec.decode(prompt))} → ${JSON.stringify(codec.decode(tokens))}`);
      },
    } : undefined;
    try {
      if (flags.resume) trainer.resume();
      if (root && group.worldSize > 1) {
        console.error(`memgpt: data parallel over ${group.worldSize} ranks (${group.engine}${zero ? ', ZeRO-1' : ''}): a batch of ` +
          `${trainer.options.batchSize / group.worldSize} samples a rank, ${trainer.options.batchSize} a step`);
      }
      if (root) await runTraining(trainer, flags.json === true, 'train', sample);
      else await trainer.run();
      group.barrier();  // no rank leaves (closing its connections) while another still sums
    } finally {
      trainer.dispose();
      model.dispose();
    }
  } finally {
    lock?.release();
  }
  return 0;
}

/** Runs trainer to its last step with a progress bar (or plain lines off a TTY, or JSON lines on stdout). */
/** Runs a trainer to its end with a progress bar (or JSON lines), and `sample` (if given) every sample.every steps. */
export async function runTraining(trainer: Trainer, json: boolean, label = 'train', sample?: { every: number; print: (step: number) => void }): Promise<void> {
  const o = trainer.options;
  const bar = !json && process.stderr.isTTY
    ? new cliProgress.SingleBar(
        { format: `${label} |{bar}| step {value}/{total} | loss {loss} | held-out {heldOut} | {tps} tok/s | ETA {eta_formatted}`, stream: process.stderr, etaBuffer: 20 },
        cliProgress.Presets.shades_classic,
      )
    : null;
  let heldOut = '-';
  bar?.start(o.steps, trainer.step, { loss: '-', heldOut, tps: '-' });
  await trainer.run({
    onStep: (entry, logged) => {
      if (entry.evalLoss !== undefined) heldOut = entry.evalLoss.toFixed(4);
      if (logged || entry.evalLoss !== undefined) {
        if (json) console.log(JSON.stringify(entry));
        else if (!bar) console.error(`${label}: step ${entry.step}/${o.steps}  loss ${entry.loss.toFixed(4)}  ${entry.tokensPerSecond.toFixed(0)} tok/s${entry.evalLoss !== undefined ? `  held-out ${entry.evalLoss.toFixed(4)}` : ''}`);
      }
      bar?.update(entry.step, { loss: entry.loss.toFixed(4), heldOut, tps: entry.tokensPerSecond.toFixed(0) });
      if (sample && entry.step % sample.every === 0) {
        bar?.stop();
        sample.print(entry.step);
        if (bar && entry.step < o.steps) bar.start(o.steps, entry.step, { loss: entry.loss.toFixed(4), heldOut, tps: entry.tokensPerSecond.toFixed(0) });
      }
    },
  });
  bar?.stop();
  if (!json) console.error(`memgpt: wrote ${trainer.files.model}, ${trainer.files.optimizer}, ${trainer.files.metrics}, ${trainer.files.lossPlot}, ${trainer.files.optimizerPlot}`);
}

/** `memgpt train` with no arguments: the pass-key task, with and without memory. */
export async function defaultTrainCommand(task = defaultPasskeyTask, outDir = 'memgpt-default-run', heldOut = 200): Promise<number> {
  defaultDevice();
  const seed = 0;
  console.error(`memgpt: no --data given: training the tiny model on the built-in pass-key task (${task.segments} segments of ${task.segmentLen} bytes, a 5-digit key in the first, the question at the end of the last), with memory and then with memSlots = 0; runs go to ./${outDir}`);
  const scores = [];
  for (const memSlots of [presets.tiny.memSlots, 0]) {
    const label = memSlots > 0 ? `with memory (${memSlots} slots)` : 'memSlots = 0';
    const trainer = passkeyTrainer(task, memSlots, seed, outDir);
    try {
      await runTraining(trainer, false, label);
      const score = passkeyAccuracy(trainer.model, task, heldOut, seed + 1_000_003);
      console.error(`${label}: ${(score.exact * 100).toFixed(1)}% of ${heldOut} held-out keys exact, ${(score.digits * 100).toFixed(1)}% of digits (greedy)`);
      scores.push(score);
    } finally {
      trainer.dispose();
      trainer.model.dispose();
    }
  }
  const [mem, none] = scores;
  console.log(`pass-key accuracy on ${heldOut} held-out keys (greedy, all 5 digits right): ${(mem.exact * 100).toFixed(1)}% with memory, ${(none.exact * 100).toFixed(1)}% with memSlots = 0 (chance: 0.001%); digits right: ${(mem.digits * 100).toFixed(1)}% vs ${(none.digits * 100).toFixed(1)}% (chance ≈ 10%)`);
  return 0;
}
