// Device choice, in child processes (it happens once per process): CUDA only
// after a probe succeeds, one line saying why not, MEMGPT_DEVICE forcing it,
// and a clear error (never a crash) when the asked-for device is not there.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { availableDevices, chooseDevice, cudaAddonPath, cudaKernelsVerified, missingCudaKernels, packageRoot } from '../lib/native/backend.js';

const fixture = join(packageRoot, 'test', 'fixtures', 'device-choice.ts');

function run(env: Record<string, string | undefined>) {
  const child = spawnSync(process.execPath, ['--import', 'tsx', fixture], {
    cwd: packageRoot,
    encoding: 'utf8',
    env: { ...process.env, MEMGPT_DEVICE: undefined, MEMGPT_QUIET: undefined, MEMGPT_CUDA_ADDON: undefined, ...env },
    timeout: 120_000,
  });
  return { status: child.status, signal: child.signal, stdout: child.stdout, stderr: child.stderr.trim() };
}

const hasCuda = availableDevices().includes('cuda');
// A usable GPU is the default device only once the CUDA addon has every kernel the model calls, verified.
const cudaByDefault = hasCuda && missingCudaKernels().length === 0 && cudaKernelsVerified;

describe('device choice', () => {
  it('uses CUDA when it probes well, else the CPU, saying which in one line', () => {
    const r = run({});
    expect(r.signal).toBeNull();
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as { device: string; total: number };
    expect(out.total).toBe(3);
    expect(out.device).toBe(cudaByDefault ? 'cuda' : 'cpu');
    const lines = r.stderr.split('\n').filter((l) => l.startsWith('memgpt:'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(cudaByDefault ? /^memgpt: using cuda \(/ : /^memgpt: using cpu: CUDA .*not used because .+/);
  });

  it('a GPU whose addon lacks some of the model\'s kernels is not the default; the line names them', () => {
    const gpu = { available: true, reason: 'NVIDIA H100, compute capability 9.0' };
    expect(chooseDevice(gpu, [], true)).toEqual({ device: 'cuda', why: 'NVIDIA H100, compute capability 9.0' });
    expect(chooseDevice(gpu, [], false).device).toBe('cpu'); // complete but not yet verified on a GPU: opt-in only
    expect(chooseDevice(gpu, [], false).why).toMatch(/not used by default: .* MEMGPT_DEVICE=cuda or --device cuda opts in$/);
    const partial = chooseDevice(gpu, ['attentionForward', 'attentionBackward']);
    expect(partial.device).toBe('cpu');
    expect(partial.why).toBe("CUDA (NVIDIA H100, compute capability 9.0) not used because its addon lacks 2 of the model's kernels " +
      '(attentionForward, attentionBackward); MEMGPT_DEVICE=cuda forces it');
    expect(chooseDevice({ available: false, reason: 'no CUDA device found' }, []))
      .toEqual({ device: 'cpu', why: 'CUDA not used because no CUDA device found' });
  });

  it('MEMGPT_DEVICE=cpu forces the CPU', () => {
    const r = run({ MEMGPT_DEVICE: 'cpu' });
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout).device).toBe('cpu');
    expect(r.stderr).toContain('memgpt: using cpu (MEMGPT_DEVICE=cpu)');
  });

  it('MEMGPT_DEVICE with an unknown name is a clear error', () => {
    const r = run({ MEMGPT_DEVICE: 'tpu' });
    expect(r.status).toBe(2);
    expect(r.stderr).toBe("error: MEMGPT_DEVICE: unknown device 'tpu' (expected cpu or cuda)");
  });

  it.skipIf(hasCuda)('MEMGPT_DEVICE=cuda without a usable GPU is a clear error, not a crash', () => {
    const r = run({ MEMGPT_DEVICE: 'cuda' });
    expect(r.signal).toBeNull();
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/^error: device 'cuda' is not available: .+/);
    expect(r.stderr.split('\n')).toHaveLength(1);
  });

  it('a CUDA addon that cannot even load is probed in a child process and the CPU is used', () => {
    const dir = mkdtempSync(join(tmpdir(), 'memgpt-'));
    const broken = join(dir, 'memgpt_cuda.node');
    writeFileSync(broken, 'not a shared library');
    const r = run({ MEMGPT_CUDA_ADDON: broken });
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as { device: string; status: { available: boolean; reason: string } };
    expect(out.device).toBe('cpu');
    expect(out.status.reason).toMatch(/the CUDA probe failed \(exit code 1\)/);
  });

  // Loading the addon needs no GPU, so this runs wherever it is built (CI builds it): a CPU op added
  // without its CUDA version fails here, not on a user's GPU.
  it.skipIf(!cudaAddonPath())('the CUDA addon exports every kernel the model calls', () => {
    expect(missingCudaKernels()).toEqual([]);
  });

  const builtCuda = join(packageRoot, 'build-cuda', 'Release', 'memgpt_cuda.node');
  it.skipIf(hasCuda || !existsSync(builtCuda))('the real CUDA addon on a machine without a GPU falls back to the CPU and says why', () => {
    const r = run({ MEMGPT_CUDA_ADDON: builtCuda });
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as { device: string; status: { available: boolean; reason: string } };
    expect(out.device).toBe('cpu');
    expect(out.status.available).toBe(false);
    expect(out.status.reason).toMatch(/driver|device/i);
  });
});
