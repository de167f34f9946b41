// What a run folder's committed checkpoint gives --resume: the trainer state saved in the optimizer file's
// metadata (step, sampler position, options, the data it trained on) and the model.
import { existsSync } from 'node:fs';

import type { Device } from '../native/backend.js';
import { loadModel } from '../io/checkpoint.js';
import { readSafetensorsHeader } from '../io/safetensors.js';
import type { SamplerState } from '../data/index.js';
import { MemgptError } from '../core/errors.js';
import type { MemGPT } from '../nn/model.js';
import type { TrainOptions } from './options.js';
import { committedCheckpoint, runFiles } from './run-folder.js';

/** What a run's data was, saved with its state so that --resume can tell a different corpus or split. */
export interface RunData {
  /** The --data path as given. */
  path: string;
  /** The held-out fraction (--held-out). */
  heldOut: number;
  /** Tokens of the training split. */
  trainTokens: number;
}

export interface TrainerState {
  step: number;
  sampler: SamplerState;
  options: TrainOptions;
  elapsedSeconds: number;
  tokens: number;
  /** Absent in states written before it was saved. */
  data?: RunData;
}

/** The trainer state saved with a run folder's committed checkpoint (its metadata only: no tensor is read). */
export function savedTrainerState(dir: string): { state: Partial<TrainerState>; checkpoint: string } | null {
  const cp = committedCheckpoint(runFiles(dir));
  if (!cp) return null;
  const text = readSafetensorsHeader(cp.optimizer).metadata['memgpt.trainer'];
  if (text === undefined) throw new MemgptError(`${cp.optimizer}: no trainer state to resume from`);
  try {
    return { state: JSON.parse(text) as Partial<TrainerState>, checkpoint: cp.optimizer };
  } catch (e) {
    throw new MemgptError(`${cp.optimizer}: its trainer state is not valid JSON (${(e as Error).message})`);
  }
}

/** Loads the model of the run folder's committed checkpoint, for --resume. */
export function loadRunModel(dir: string, device?: Device): MemGPT {
  const cp = committedCheckpoint(runFiles(dir));
  if (!cp) {
    throw new MemgptError(`--resume: ${dir} has no checkpoint to resume from` +
      (existsSync(runFiles(dir).metrics) ? ' (its run stopped before the first one); run the same command without --resume to start it again' : ''));
  }
  return loadModel(cp.model, { device });
}
