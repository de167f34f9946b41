// A process group for data-parallel training: this process's rank among WORLD_SIZE, from the torchrun variables
// (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), and the collectives of an engine. On CPU tensors the
// engine is gloo, through the optional addon native/parallel/gloo_addon.cc, loaded only for groups of more than one
// rank: a machine without gloo trains on one process as before, and is told in one line what to install.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { hostname } from 'node:os';
import { join } from 'node:path';

import { MemgptError } from '../core/errors.js';
import { packageRoot } from '../native/backend.js';

/** The gloo addon's exports (native/parallel/gloo_addon.cc). */
interface GlooAddon {
  engine: string;
  init(rank: number, size: number, masterAddr: string, masterPort: number, timeoutMs: number, host: string): void;
  allreduce(buffer: Float32Array | Float64Array): void;
  allreduceAt(address: bigint, elements: number): void;
  reduceScatter(buffer: Float32Array, counts: number[]): void;
  allgatherv(input: Float32Array, output: Float32Array, counts: number[]): void;
  broadcast(buffer: Float32Array | Float64Array, root: number): void;
  barrier(): void;
  close(): void;
}

/** Where a rank stands, as torchrun describes it. */
export interface RankInfo {
  rank: number;
  worldSize: number;
  localRank: number;
  masterAddr: string;
  masterPort: number;
}

/** Default time a collective may wait for its peers before the run ends (as torch's gloo default, it covers evaluation and checkpoints). */
export const DEFAULT_TIMEOUT_SECONDS = 300;

function envInt(env: NodeJS.ProcessEnv, name: string, min: number): number | undefined {
  const text = env[name];
  if (text === undefined || text === '') return undefined;
  if (!/^\d+$/.test(text) || Number(text) < min) throw new MemgptError(`${name}=${text} is not a whole number ≥ ${min}`);
  return Number(text);
}

/**
 * The rank of this process from the torchrun variables, or null when WORLD_SIZE is unset (a single process).
 * Every variable is checked: a RANK outside [0, WORLD_SIZE) or a missing MASTER_ADDR is one clear error.
 */
export function rankFromEnv(env: NodeJS.ProcessEnv = process.env): RankInfo | null {
  const worldSize = envInt(env, 'WORLD_SIZE', 1);
  if (worldSize === undefined) return null;
  const rank = envInt(env, 'RANK', 0);
  if (rank === undefined) throw new MemgptError('WORLD_SIZE is set but RANK is not (set both, as torchrun does)');
  if (rank >= worldSize) throw new MemgptError(`RANK=${rank} is not below WORLD_SIZE=${worldSize}`);
  const localRank = envInt(env, 'LOCAL_RANK', 0) ?? rank;
  const masterPort = envInt(env, 'MASTER_PORT', 1) ?? 29500;
  if (masterPort > 65535) throw new MemgptError(`MASTER_PORT=${masterPort} is not a TCP port`);
  const masterAddr = env.MASTER_ADDR ?? (worldSize === 1 ? '127.0.0.1' : undefined);
  if (!masterAddr) throw new MemgptError('WORLD_SIZE > 1 needs MASTER_ADDR (the host of rank 0) and MASTER_PORT');
  return { rank, worldSize, localRank, masterAddr, masterPort };
}

let glooAddon: GlooAddon | undefined;

/**
 * The gloo addon's path: the prebuilt one (scripts/build-gloo.mjs puts a checkout's build there too), or
 * MEMGPT_GLOO_ADDON's.
 */
export function glooAddonPath(): string | undefined {
  const path = process.env.MEMGPT_GLOO_ADDON ?? join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}-gloo`, 'memgpt_gloo.node');
  return existsSync(path) ? path : undefined;
}

/** Whether data-parallel training on the CPU can run here: the engine's name, or why not (for `memgpt doctor`). */
export function cpuEngineStatus(): { available: boolean; detail: string } {
  try {
    return { available: true, detail: `${loadGloo().engine} (${glooAddonPath()})` };
  } catch (e) {
    return { available: false, detail: (e as Error).message };
  }
}

function loadGloo(): GlooAddon {
  if (glooAddon) return glooAddon;
  const path = glooAddonPath();
  if (!path) throw new MemgptError('data-parallel training on the CPU needs the gloo addon, which is not built here (apt-get install libgloo-dev, then npm run build:gloo)');
  try {
    glooAddon = createRequire(import.meta.url)(path) as GlooAddon;
  } catch (e) {
    const first = String((e as Error).message).split('\n')[0];
    throw new MemgptError(`data-parallel training on the CPU needs the gloo library (Debian/Ubuntu: apt-get install libgloo0), and it does not load here: ${first}`);
  }
  return glooAddon;
}

/** Turns an engine failure into one line naming the collective, the rank and the cause. */
function engineCall<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof MemgptError) throw e;
    throw new MemgptError((e as Error).message.replace(/\[[^\]]*\.cc:\d+\] /, ''));
  }
}

/**
 * The ranks of one training run and their collectives. A group of one rank needs no engine: its collectives are
 * the identity. Every collective blocks until all ranks have joined it, or fails with a MemgptError once a peer has
 * died (at once: its connection closes) or the timeout has passed (a peer that hangs).
 */
export class ProcessGroup {
  private closed = false;

  private constructor(readonly info: RankInfo, readonly engine: string, private readonly gloo: GlooAddon | null) {}

  get rank(): number {
    return this.info.rank;
  }

  get worldSize(): number {
    return this.info.worldSize;
  }

  /** One rank of one: the group of a single-process run. */
  static single(): ProcessGroup {
    return new ProcessGroup({ rank: 0, worldSize: 1, localRank: 0, masterAddr: '127.0.0.1', masterPort: 0 }, 'none', null);
  }

  /**
   * Joins the group of `info` (default: from the environment): rank 0 serves the rendezvous store at
   * MASTER_ADDR:MASTER_PORT, every rank connects to every other. Gives up after timeoutSeconds.
   * MEMGPT_DIST_HOST names the address peers reach this rank at (default: loopback when MASTER_ADDR is loopback,
   * else this host's name).
   */
  static join(info: RankInfo | null = rankFromEnv(), timeoutSeconds = DEFAULT_TIMEOUT_SECONDS): ProcessGroup {
    if (!info || info.worldSize === 1) return ProcessGroup.single();
    if (!(timeoutSeconds > 0)) throw new MemgptError(`the collective timeout must be a positive number of seconds, got ${timeoutSeconds}`);
    const gloo = loadGloo();
    const loopback = /^(127\.|localhost$|::1$)/.test(info.masterAddr);
    const host = process.env.MEMGPT_DIST_HOST ?? (loopback ? '127.0.0.1' : hostname());
    engineCall(() => gloo.init(info.rank, info.worldSize, info.masterAddr, info.masterPort, Math.round(timeoutSeconds * 1000), host));
    return new ProcessGroup(info, gloo.engine, gloo);
  }

  /** Runs a collective on the engine (a group of one has none: returns false); its failure is one MemgptError. */
  private run(collective: (gloo: GlooAddon) => void): boolean {
    if (this.closed) throw new MemgptError('the process group is closed');
    if (!this.gloo) return false;
    engineCall(() => collective(this.gloo!));
    return true;
  }

  /** The elementwise sum over ranks, in place. */
  allreduce(buffer: Float32Array | Float64Array): void {
    this.run((g) => g.allreduce(buffer));
  }

  /** The elementwise sum over ranks, in place, of `elements` float32 at a CPU storage's address (backend.address). */
  allreduceAt(address: bigint, elements: number): void {
    this.run((g) => g.allreduceAt(address, elements));
  }

  /**
   * The elementwise sum over ranks of `buffer` (the parts of the ranks in rank order, counts[r] elements each),
   * of which this rank gets its own part, at the start of `buffer`.
   */
  reduceScatter(buffer: Float32Array, counts: number[]): void {
    this.run((g) => g.reduceScatter(buffer, counts));
  }

  /** `output` (the sum of counts elements) gets every rank's `input`, in rank order. */
  allgatherv(input: Float32Array, output: Float32Array, counts: number[]): void {
    if (!this.run((g) => g.allgatherv(input, output, counts))) output.set(input);
  }

  /** Every rank's buffer becomes rank `root`'s. */
  broadcast(buffer: Float32Array | Float64Array, root = 0): void {
    this.run((g) => g.broadcast(buffer, root));
  }

  barrier(): void {
    this.run((g) => g.barrier());
  }

  /** Leaves the group (rank 0's rendezvous store stops). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.gloo?.close();
  }
}
