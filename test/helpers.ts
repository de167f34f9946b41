// Test helpers: run a body on every backend (CUDA cases skip only where no GPU
// can be used, and fail loudly when MEMGPT_DEVICE=cuda demands one), compare
// arrays with a tolerance, and assert that memory returns to where it started.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect } from 'vitest';

import { packageRoot } from '../lib/native/backend.js';

import { availableDevices, memory, Rng, type Device, type Tensor } from '../lib/index.js';

export const allDevices: readonly Device[] = ['cpu', 'cuda'];

export function forEachDevice(body: (device: Device) => void): void {
  for (const device of allDevices) {
    const demanded = process.env.MEMGPT_DEVICE === device;
    const runnable = demanded || availableDevices().includes(device);
    describe.skipIf(!runnable)(`on ${device}`, () => body(device));
  }
}

/** |actual − expected| ≤ atol + rtol·|expected| for every element, with the worst one reported. */
export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, atol = 1e-5, rtol = 1e-5): void {
  expect(actual.length).toBe(expected.length);
  let worst = -1, worstErr = 0;
  for (let i = 0; i < expected.length; i++) {
    const err = Math.abs(actual[i] - expected[i]) - (atol + rtol * Math.abs(expected[i]));
    if (!(err <= 0) && (worst < 0 || !(err <= worstErr))) {
      worst = i;
      worstErr = err;
    }
  }
  if (worst >= 0) {
    expect.fail(`element ${worst}: got ${actual[worst]}, expected ${expected[worst]} (atol ${atol}, rtol ${rtol})`);
  }
}

/** Runs fn and checks that live tensors, storages and allocator bytes are back where they were. */
export function expectNoLeaks(device: Device, fn: () => void): void {
  const before = memory(device);
  fn();
  const after = memory(device);
  expect({ tensors: after.liveTensors, storages: after.liveStorages, bytes: after.bytesInUse }).toEqual({
    tensors: before.liveTensors,
    storages: before.liveStorages,
    bytes: before.bytesInUse,
  });
}

export function randomArray(n: number, seed: number, low = -1, high = 1): Float32Array {
  return new Rng(seed).fillUniform(new Float32Array(n), low, high);
}

export function values(t: Tensor): number[] {
  return Array.from(t.toArray());
}

/** Runs the `memgpt` command as users do (the compiled dist/ through bin/memgpt.js) on the CPU, quietly. */
export function runMemgpt(args: string[], env: Record<string, string> = {}) {
  const child = spawnSync(process.execPath, [join(packageRoot, 'bin', 'memgpt.js'), ...args], {
    encoding: 'utf8', env: { ...process.env, MEMGPT_DEVICE: 'cpu', MEMGPT_QUIET: '1', ...env }, timeout: 120_000,
  });
  return { status: child.status, signal: child.signal, stdout: child.stdout, stderr: child.stderr.trim() };
}
