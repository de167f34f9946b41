// The `memgpt` train / eval / generate commands end to end on the CPU, as users
// run them (the compiled dist/ through bin/memgpt.js): run folder contents, JSON
// lines, bit-exact resume after a kill, eval against the plain reference, and
// one clear line for every kind of bad input.
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import * as mg from '../lib/index.js';
import { packageRoot } from '../lib/native/backend.js';
import { loadModel, saveModel } from '../lib/io/checkpoint.js';
import { resolveConfig } from '../lib/nn/config.js';
import { readSafetensors, writeSafetensors } from '../lib/io/safetensors.js';
import { MemGPT } from '../lib/nn/model.js';
import { committedCheckpoint, runFiles } from '../lib/train/run-folder.js';
import { runMemgpt } from './helpers.js';
import { referenceSampleNLL } from './reference_model.js';

const bin = join(packageRoot, 'bin', 'memgpt.js');
const tinyConfig = { tokenizer: 'byte', dModel: 16, nHeads: 2, dFF: 32, nLayers: 1, segmentLen: 8, memSlots: 2 };

const memgpt = runMemgpt;

function workspace() {
  const dir = mkdtempSync(join(tmpdir(), 'memgpt-train-'));
  const text = Array.from({ length: 60 }, (_, i) => `Line ${i}: the quick brown fox jumps over the lazy dog ${i * 7}.`).join('\n');
  writeFileSync(join(dir, 'data.txt'), text);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(tinyConfig));
  return dir;
}

const jsonLines = (s: string) => s.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { step: number; loss: number; tokensPerSecond: number });

describe('memgpt train', () => {
  it('trains with bfloat16 linear layers (--precision bfloat16): the losses follow the float32 run', () => {
    const dir = workspace();
    const losses = (precision: string) => {
      const r = memgpt(['train', '--config', join(dir, 'config.json'), '--data', join(dir, 'data.txt'), '--out', join(dir, precision),
        '--steps', '12', '--batch-size', '2', '--segments', '2', '--lr', '3e-3', '--log-every', '1', '--json', '--precision', precision]);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      return jsonLines(r.stdout).map((l) => l.loss);
    };
    const f32 = losses('float32'), bf16 = losses('bfloat16');
    expect(bf16).not.toEqual(f32); // the bf16 path ran
    // Same data, same steps: the two runs stay within 1% of each other step by step (measured: ≤ 0.01%).
    for (let i = 0; i < f32.length; i++) expect(Math.abs(bf16[i] - f32[i])).toBeLessThan(0.01 * f32[i]);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(mean(bf16.slice(-4))).toBeLessThan(mean(bf16.slice(0, 4)) - 0.1);
  });

  it('trains, logs JSON lines and writes the run folder', () => {
    const dir = workspace();
    const out = join(dir, 'run');
    const r = memgpt(['train', '--config', join(dir, 'config.json'), '--data', join(dir, 'data.txt'), '--out', out,
      '--steps', '6', '--batch-size', '2', '--segments', '2', '--lr', '3e-3', '--log-every', '1', '--eval-every', '3', '--json']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const lines = jsonLines(r.stdout);
    expect(lines.map((l) => l.step)).toEqual([1, 2, 3, 4, 5, 6]);
    for (const l of lines) {
      expect(Number.isFinite(l.loss)).toBe(true);
      expect(l.tokensPerSecond).toBeGreaterThan(0);
    }
    expect(readdirSync(out).sort()).toEqual(['checkpoint.json', 'checkpoints', 'loss.svg', 'memory.svg', 'metrics.jsonl', 'model.safetensors', 'optimizer.safetensors', 'optimizer.svg']);
    // One committed checkpoint (the last step's); the top-level pair are links to it.
    expect(readdirSync(join(out, 'checkpoints'))).toEqual(['step-6']);
    expect(JSON.parse(readFileSync(join(out, 'checkpoint.json'), 'utf8'))).toEqual({ format: 1, step: 6, folder: 'step-6' });
    expect(statSync(join(out, 'model.safetensors')).ino).toBe(statSync(join(out, 'checkpoints', 'step-6', 'model.safetensors')).ino);
    expect(readFileSync(join(out, 'loss.svg'), 'utf8')).toContain('<svg');
    const metrics = jsonLines(readFileSync(join(out, 'metrics.jsonl'), 'utf8')) as unknown as { memory?: { readGate: number }[]; evalLoss?: number }[];
    expect(metrics[0].memory?.length).toBe(1);
    expect(metrics.filter((m) => m.evalLoss !== undefined).length).toBe(2);
    // A second run into the same folder without --resume is refused, and the first run is untouched.
    const before = readFileSync(join(out, 'metrics.jsonl'), 'utf8');
    const again = memgpt(['train', '--config', join(dir, 'config.json'), '--data', join(dir, 'data.txt'), '--out', out, '--steps', '2']);
    expect(again.status).toBe(2);
    expect(again.stderr).toBe(`memgpt: train: ${out} already holds a run (checkpoint at step 6); continue it with --resume, or give another --out`);
    expect(readFileSync(join(out, 'metrics.jsonl'), 'utf8')).toBe(before);
  });

  it('a held-out split shorter than one sample is refused before training, leaving no run folder behind', () => {
    const dir = workspace();
    const out = join(dir, 'short-held-out');
    const r = memgpt(['train', '--preset', 'tiny', '--data', join(dir, 'data.txt'), '--out', out, '--steps', '3', '--segments', '4',
      '--held-out', '0.02']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/the held-out split has \d+ tokens, fewer than one sample of 128 \+ 1; give more data, a larger --held-out, or --held-out 0$/);
    expect(existsSync(out)).toBe(false);
  });

  it('--mem-slots and --segment-len override the preset or config (ablations without a config file), not a checkpoint', () => {
    const dir = workspace();
    const run = (name: string, extra: string[]) => memgpt(['train', '--data', join(dir, 'data.txt'), '--out', join(dir, name), '--steps', '2',
      '--batch-size', '1', '--segments', '2', '--held-out', '0', ...extra]);
    let r = run('preset', ['--preset', 'tiny', '--mem-slots', '0', '--segment-len', '16']);
    expect(r.stderr).toMatch(/wrote/);
    expect(r.status).toBe(0);
    const fromPreset = loadModel(join(dir, 'preset', 'model.safetensors'));
    expect([fromPreset.config.memSlots, fromPreset.config.segmentLen, fromPreset.config.dModel]).toEqual([0, 16, 64]);
    fromPreset.dispose();
    r = run('config', ['--config', join(dir, 'config.json'), '--mem-slots', '3']);
    expect(r.status).toBe(0);
    const fromConfig = loadModel(join(dir, 'config', 'model.safetensors'));
    expect([fromConfig.config.memSlots, fromConfig.config.segmentLen, fromConfig.config.dModel]).toEqual([3, 8, 16]);
    fromConfig.dispose();
    // A checkpoint's architecture is what it is: a different --mem-slots with --init is one clear error.
    r = run('init', ['--init', join(dir, 'config', 'model.safetensors'), '--mem-slots', '5']);
    expect(r.status).toBe(2);
    expect(r.stderr).toBe(`memgpt: train: --mem-slots 5 does not fit ${join(dir, 'config', 'model.safetensors')}, whose memSlots is 3`);
    expect(existsSync(join(dir, 'init'))).toBe(false);
    r = run('bad', ['--preset', 'tiny', '--segment-len', '0']);
    expect(r.stderr).toBe("memgpt: --segment-len must be a decimal integer ≥ 1 (got '0')");
    // Decimal digits only: Number() alone would take these.
    for (const steps of ['0x2', '1e0', ' 2']) expect(run('bad', ['--preset', 'tiny', '--steps', steps]).stderr).toBe(`memgpt: --steps must be a decimal integer ≥ 1 (got '${steps}')`);
  });

  it('--tokenizer overrides the preset\'s, --min-lr ends the schedule there, --sample-every prints greedy samples', () => {
    const dir = workspace();
    let r = memgpt(['train', '--preset', 'tiny', '--data', join(dir, 'data.txt'), '--out', join(dir, 'a'), '--steps', '4', '--warmup', '0', '--held-out', '0', '--segments', '1',
      '--lr', '0.002', '--min-lr', '0.0005', '--log-every', '1', '--sample-every', '2', '--json']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr.split('\n').filter((l) => l.startsWith('sample at step ')).map((l) => l.split(':')[0])).toEqual(['sample at step 2', 'sample at step 4']);
    const lrs = r.stdout.trim().split('\n').map((l) => (JSON.parse(l) as { lr: number }).lr);
    expect(lrs[0]).toBeCloseTo(0.002, 10);
    expect(lrs[3]).toBeCloseTo(0.0005 + 0.5 * 0.0015 * (1 + Math.cos(Math.PI * 3 / 4)), 10);
    r = memgpt(['train', '--preset', 'tiny', '--tokenizer', 'gpt2', '--data', join(dir, 'data.txt'), '--out', join(dir, 'g'), '--steps', '1', '--held-out', '0', '--segments', '1']);
    expect(r.status, r.stderr).toBe(0);
    const model = loadModel(join(dir, 'g', 'model.safetensors'));
    expect([model.config.tokenizer, model.config.vocabSize, model.config.dModel]).toEqual(['gpt2', 50257, 64]);
    model.dispose();
    expect(memgpt(['train', '--preset', 'tiny', '--data', join(dir, 'data.txt'), '--out', join(dir, 'x'), '--lr', '0.001', '--min-lr', '0.01']).stderr)
      .toBe("memgpt: --min-lr must be a number in [0, --lr 0.001] (got '0.01')");
  });

  it('resumes after a kill and continues bit for bit', () => {
    const dir = workspace();
    const args = (out: string) => ['train', '--config', join(dir, 'config.json'), '--data', join(dir, 'data.txt'), '--out', out,
      '--steps', '6', '--batch-size', '2', '--segments', '2', '--checkpoint-every', '3', '--log-every', '1', '--json'];
    const whole = memgpt(args(join(dir, 'a')));
    expect(whole.status).toBe(0);
    const killed = memgpt(args(join(dir, 'b')), { MEMGPT_FAULT_KILL_AFTER_STEP: '4' });
    expect(killed.signal).toBe('SIGKILL');
    const resumed = memgpt([...args(join(dir, 'b')), '--resume']);
    expect(resumed.stderr).toBe('');
    expect(resumed.status).toBe(0);
    const a = jsonLines(whole.stdout), b = jsonLines(resumed.stdout);
    expect(b.map((l) => l.step)).toEqual([4, 5, 6]);
    expect(b.map((l) => l.loss)).toEqual(a.slice(3).map((l) => l.loss));
    // The killed run's rows after its checkpoint (step 4) were dropped on resume, not logged twice.
    const runB = join(dir, 'b');
    expect(readFileSync(join(runB, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).step)).toEqual([1, 2, 3, 4, 5, 6]);
    // A run folder of before checkpoint.json (just the top-level pair) still resumes; --steps may grow.
    const legacy = join(dir, 'legacy');
    mkdirSync(legacy);
    for (const f of ['model.safetensors', 'optimizer.safetensors']) copyFileSync(join(runB, f), join(legacy, f));
    const grown = memgpt([...args(legacy), '--resume', '--steps', '7']);
    expect(grown.stderr).toBe('');
    expect(jsonLines(grown.stdout).map((l) => l.step)).toEqual([7]);
    // In such a folder a crash between its two files left them at different steps: resume says so instead of mixing them.
    const legacy2 = join(dir, 'legacy2');
    mkdirSync(legacy2);
    copyFileSync(join(runB, 'optimizer.safetensors'), join(legacy2, 'optimizer.safetensors'));
    const m = loadModel(join(runB, 'model.safetensors'));
    saveModel(join(legacy2, 'model.safetensors'), m, { metadata: { 'memgpt.step': '5' } });
    m.dispose();
    const mixed = memgpt([...args(legacy2), '--resume']);
    expect(mixed.status).toBe(2);
    expect(mixed.stderr).toMatch(/model\.safetensors \(step 5\) and optimizer\.safetensors \(step 6\) disagree/);
    // Trainer-state fields are checked: a step of 2.5 used to run on, write no checkpoint and exit 0.
    const optimizerFile = join(runB, 'checkpoints', 'step-6', 'optimizer.safetensors');
    const saved = readSafetensors(optimizerFile);
    const trainer = JSON.parse(saved.metadata['memgpt.trainer']) as Record<string, unknown>;
    writeSafetensors(optimizerFile, saved.tensors, { ...saved.metadata, 'memgpt.trainer': JSON.stringify({ ...trainer, step: 2.5 }) });
    const fractional = memgpt([...args(runB), '--resume']);
    expect(fractional.status).toBe(2);
    expect(fractional.stderr).toMatch(/optimizer\.safetensors: the trainer state's step 2\.5 is not a whole number ≥ 0$/);
    // A config that does not fit the run's checkpoint is refused.
    writeFileSync(join(dir, 'other.json'), JSON.stringify({ ...tinyConfig, dModel: 32 }));
    const wrong = memgpt(['train', '--config', join(dir, 'other.json'), '--data', join(dir, 'data.txt'), '--out', join(dir, 'b'), '--resume']);
    expect(wrong.status).toBe(2);
    expect(wrong.stderr).toMatch(/^memgpt: train: the config given does not fit the checkpoint/);
  });

  it('eval --json on a random-weight checkpoint matches the plain reference', () => {
    const dir = workspace();
    const cfg = resolveConfig(tinyConfig as Partial<mg.ModelConfig>);
    const model = MemGPT.init(cfg, { seed: 3, device: 'cpu' });
    const rng = new mg.Rng(4);
    for (const p of model.params.values()) p.storage.backend.copyFromHost(p.handle, 0, rng.fillNormal(new Float32Array(p.size), 0, 0.3));
    const ckpt = join(dir, 'random.safetensors');
    saveModel(ckpt, model);
    const text = readFileSync(join(dir, 'data.txt'));
    const params = new Map([...model.params].map(([n, p]) => [n, Float64Array.from(p.toArray())]));
    model.dispose();
    const segments = 2, N = segments * cfg.segmentLen;
    let sum = 0, count = 0;
    for (let j = 0; (j + 1) * N + 1 <= text.length; j++) {
      for (const v of referenceSampleNLL(cfg, params, text.subarray(j * N, j * N + N + 1), segments)) {
        sum += v;
        count++;
      }
    }
    const r = memgpt(['eval', '--checkpoint', ckpt, '--data', join(dir, 'data.txt'), '--segments', String(segments), '--batch-size', '3', '--json']);
    expect(r.status).toBe(0);
    const result = JSON.parse(r.stdout) as { loss: number; tokens: number; bitsPerToken: number };
    expect(result.tokens).toBe(count);
    expect(Math.abs(result.loss - sum / count)).toBeLessThanOrEqual(1e-5 * (sum / count));
    expect(result.bitsPerToken).toBeCloseTo(result.loss / Math.LN2, 10);
  });

  it('generate prints a continuation; eval --stream scores the whole file', () => {
    const dir = workspace();
    const out = join(dir, 'run');
    expect(memgpt(['train', '--config', join(dir, 'config.json'), '--data', join(dir, 'data.txt'), '--out', out, '--steps', '2', '--batch-size', '2', '--segments', '2']).status).toBe(0);
    const g = memgpt(['generate', '--checkpoint', join(out, 'model.safetensors'), '--prompt', 'Line 3: the', '--max-tokens', '12', '--temperature', '0']);
    expect(g.status).toBe(0);
    expect(g.stdout.length).toBeGreaterThan(0);
    const s = memgpt(['eval', '--checkpoint', join(out, 'model.safetensors'), '--data', join(dir, 'data.txt'), '--stream', '--json']);
    expect(s.status).toBe(0);
    expect(JSON.parse(s.stdout).tokens).toBe(readFileSync(join(dir, 'data.txt')).length - 1);
    // --json: a line per token (id, log-probability, the text it released), then why it stopped and the whole text.
    const ckpt = join(out, 'model.safetensors');
    const j = memgpt(['generate', '--checkpoint', ckpt, '--prompt', 'Line 3: the', '--max-tokens', '12', '--temperature', '0', '--json']);
    const lines = jsonLines(j.stdout) as unknown as { token?: number; logprob?: number; text: string; done?: boolean; reason?: string; tokens?: number }[];
    const last = lines.pop()!;
    expect(last).toMatchObject({ done: true, reason: 'max-tokens', tokens: 12 });
    expect(lines.filter((l) => l.token !== undefined)).toHaveLength(12);
    for (const l of lines.filter((x) => x.token !== undefined)) expect(l.logprob! <= 0 && Number.isFinite(l.logprob)).toBe(true);
    expect(lines.map((l) => l.text).join('')).toBe(last.text);
    expect(`${last.text}\n`).toBe(g.stdout);
    // --stop cuts the text before the stop string (not printed); --prompt-file reads the prompt from a file.
    const stop = last.text.slice(3, 5);
    writeFileSync(join(dir, 'prompt.txt'), 'Line 3: the');
    const stopped = memgpt(['generate', '--checkpoint', ckpt, '--prompt-file', join(dir, 'prompt.txt'), '--max-tokens', '12', '--temperature', '0', '--stop', stop, '--stop', 'zzz']);
    expect(stopped.stdout).toBe(`${last.text.slice(0, last.text.indexOf(stop))}\n`);
    // --num-samples: continuations decoded together; the greedy ones all equal the lone greedy text, and sample b
    // with temperature is what --seed S + b gives alone.
    const greedy = jsonLines(memgpt(['generate', '--checkpoint', ckpt, '--prompt', 'Line 3: the', '--max-tokens', '12', '--temperature', '0', '--num-samples', '3', '--json']).stdout) as unknown as { sample: number; text: string; reason: string }[];
    expect(greedy.map((l) => [l.sample, l.text, l.reason])).toEqual([0, 1, 2].map((b) => [b, last.text, 'max-tokens']));
    const sampled = jsonLines(memgpt(['generate', '--checkpoint', ckpt, '--prompt', 'Line', '--max-tokens', '8', '--seed', '5', '--num-samples', '2', '--json']).stdout) as unknown as { text: string }[];
    const alone = jsonLines(memgpt(['generate', '--checkpoint', ckpt, '--prompt', 'Line', '--max-tokens', '8', '--seed', '6', '--json']).stdout).pop() as unknown as { text: string };
    expect(sampled[1].text).toBe(alone.text);
    // The sampling controls are flags too; bad values and a prompt given twice are one clear line.
    expect(memgpt(['generate', '--checkpoint', ckpt, '--prompt', 'Line', '--max-tokens', '5', '--top-p', '0.9', '--min-p', '0.05', '--repetition-penalty', '1.3', '--seed', '2']).status).toBe(0);
    for (const [args, message] of [
      [['--prompt', 'x', '--prompt-file', join(dir, 'prompt.txt')], 'memgpt: generate: give one of --prompt TEXT and --prompt-file PATH'],
      [['--prompt-file', dir], `memgpt: generate: --prompt-file ${dir} is not a regular file`],
      [['--prompt', 'x', '--min-p', '2'], "memgpt: --min-p must be in [0, 1] (got '2')"],
      [['--prompt', 'x', '--repetition-penalty', '0'], "memgpt: --repetition-penalty must be a number > 0 (got '0')"],
      [['--prompt', 'x', '--stop', ''], 'memgpt: generate: --stop must not be empty'],
    ] as const) {
      const r = memgpt(['generate', '--checkpoint', ckpt, ...args]);
      expect([r.status, r.stderr]).toEqual([2, message]);
    }
  });

  it('generate ends cleanly on Ctrl-C: the text so far, a newline, one line on stderr, exit 130', async () => {
    const dir = workspace();
    const out = join(dir, 'run');
    expect(memgpt(['train', '--config', join(dir, 'config.json'), '--data', join(dir, 'data.txt'), '--out', out, '--steps', '1', '--batch-size', '2', '--segments', '2']).status).toBe(0);
    const child = spawn(process.execPath, [bin, 'generate', '--checkpoint', join(out, 'model.safetensors'), '--prompt', 'Line', '--max-tokens', '100000', '--json'], {
      env: { ...process.env, MEMGPT_DEVICE: 'cpu', MEMGPT_QUIET: '1' }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '', stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await new Promise<void>((resolve) => child.stdout.on('data', (d) => {
      stdout += d;
      if (stdout.split('\n').length > 5) resolve();
    }));
    child.kill('SIGINT');
    expect(await exit).toBe(130);
    const lines = jsonLines(stdout) as unknown as { token?: number; done?: boolean; reason?: string; tokens?: number }[];
    const last = lines.at(-1)!;
    expect(last).toMatchObject({ done: true, reason: 'aborted' });
    expect(last.tokens).toBe(lines.filter((l) => l.token !== undefined).length);
    expect(stderr.trim()).toBe(`memgpt: generate: interrupted after ${last.tokens} tokens`);
  });

  it('bad input: one clear line, a non-zero exit, and no half-written file', () => {
    const dir = workspace();
    writeFileSync(join(dir, 'empty.txt'), '');
    writeFileSync(join(dir, 'binary.bin'), Buffer.from([0, 1, 2, 255, 0, 7]));
    writeFileSync(join(dir, 'corrupt.safetensors'), Buffer.from([8, 0, 0, 0, 0, 0, 0, 0, 123, 34]));
    const out = join(dir, 'run');
    const base = ['--config', join(dir, 'config.json'), '--out', out, '--steps', '1'];
    const cases: [string[], RegExp][] = [
      [['train', ...base, '--data', join(dir, 'missing.txt')], /missing\.txt/],
      [['train', ...base, '--data', join(dir, 'empty.txt')], /empty/],
      [['train', ...base, '--data', join(dir, 'binary.bin')], /binary/],
      [['train', ...base, '--data', join(dir, 'data.txt'), '--lr', 'fast'], /--lr must be a positive number/],
      [['train', ...base, '--data', join(dir, 'data.txt'), '--frobnicate'], /Unknown option '--frobnicate'/],
      [['train', ...base, '--data', join(dir, 'data.txt'), '--optimizer', 'adam'], /--optimizer must be adamw or sgd/],
      [['train', ...base, '--data', join(dir, 'data.txt'), '--precision', 'fp8'], /--precision must be float32 or bfloat16/],
      [['eval', '--checkpoint', join(dir, 'corrupt.safetensors'), '--data', join(dir, 'data.txt')], /corrupt\.safetensors/],
      [['eval', '--checkpoint', join(dir, 'nope.safetensors'), '--data', join(dir, 'data.txt')], /nope\.safetensors/],
      [['generate', '--checkpoint', join(dir, 'corrupt.safetensors'), '--prompt', 'x'], /corrupt\.safetensors/],
      [['train', '--init', join(dir, 'corrupt.safetensors'), '--data', join(dir, 'data.txt'), '--out', out], /corrupt\.safetensors/],
    ];
    for (const [args, pattern] of cases) {
      const r = memgpt(args);
      expect(r.status, args.join(' ')).toBe(2);
      const lines = r.stderr.split('\n').filter(Boolean);
      expect(lines, args.join(' ')).toHaveLength(1);
      expect(lines[0]).toMatch(/^memgpt: /);
      expect(lines[0]).toMatch(pattern);
    }
    expect(existsSync(out) ? readdirSync(out) : []).toEqual([]);
  });
});

describe('Trainer.run (the training loop in the API)', () => {
  it('takes partial options over the documented defaults, reports every step, redraws the plots at each evaluation, and stops on a signal after a checkpoint', async () => {
    const dir = workspace();
    const corpus = mg.loadCorpus(join(dir, 'data.txt'), mg.getTokenizer('byte'));
    const model = MemGPT.init({ ...tinyConfig, tokenizer: 'byte' }, { seed: 1, device: 'cpu' });
    const out = join(dir, 'api');
    const trainer = new mg.Trainer(model, corpus, corpus, out, { steps: 6, batchSize: 2, segments: 2, warmup: 2, evalEvery: 2, evalBatches: 1, logEvery: 1 });
    try {
      // Everything not given is the default.
      expect(trainer.options).toEqual({ ...mg.defaultTrainOptions, steps: 6, batchSize: 2, segments: 2, warmup: 2, evalEvery: 2, evalBatches: 1, logEvery: 1 });
      const seen: number[] = [];
      const evaluated: number[] = [];
      const stop = new AbortController();
      const last = await trainer.run({
        signal: stop.signal,
        onStep: (entry) => {
          seen.push(entry.step);
          if (entry.evalLoss !== undefined) {
            evaluated.push(entry.step);
            expect(Number.isFinite(entry.evalLoss)).toBe(true);
          }
          if (entry.step === 4) stop.abort();
        },
      });
      expect(seen).toEqual([1, 2, 3, 4]);
      expect(evaluated).toEqual([2, 4]);
      expect(last?.step).toBe(4);
      // Stopped at step 4 with a checkpoint of it (checkpointEvery 0 would write only at the end), and the plots.
      expect(committedCheckpoint(runFiles(out))?.step).toBe(4);
      for (const plot of ['loss.svg', 'optimizer.svg', 'memory.svg']) expect(readFileSync(join(out, plot), 'utf8')).toMatch(/^<svg/);
      expect(readFileSync(join(out, 'optimizer.svg'), 'utf8')).toContain('learning rate');
    } finally {
      trainer.dispose();
      model.dispose();
    }
  });
});
