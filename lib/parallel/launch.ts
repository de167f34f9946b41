// `memgpt train --nproc-per-node N`: starts N ranks of the same command on this node with the torchrun variables
// set (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and watches them: when one rank
// fails, the others are stopped and one line names the rank and its cause, so that no rank is left waiting.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { join } from 'node:path';

import { MemgptError } from '../core/errors.js';
import { packageRoot } from '../native/backend.js';

export interface LaunchOptions {
  /** Ranks on this node. */
  nprocPerNode: number;
  /** Nodes of the run (default 1). */
  nnodes?: number;
  /** This node's index (default 0). */
  nodeRank?: number;
  /** Rank 0's host (default 127.0.0.1, for one node). */
  masterAddr?: string;
  /** Rank 0's rendezvous port (default: a free one, for one node; 29500 across nodes, as torchrun). */
  masterPort?: number;
}

/** A TCP port nobody listens on now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

/** How a rank ended, in words. */
function cause(code: number | null, signal: NodeJS.Signals | null): string {
  return signal ? `was killed by ${signal}` : `exited with code ${code}`;
}

/**
 * Runs `memgpt <args>` as this node's ranks and returns the exit code: 0 when every rank ended well. Local rank 0
 * of node 0 (the global rank 0) keeps the terminal; the others' output is dropped but for the last line of a rank
 * that fails. SIGINT and SIGTERM are passed on to every rank.
 */
export async function launchRanks(args: string[], options: LaunchOptions): Promise<number> {
  const { nprocPerNode } = options;
  const nnodes = options.nnodes ?? 1, nodeRank = options.nodeRank ?? 0;
  if (nodeRank >= nnodes) throw new MemgptError(`--node-rank ${nodeRank} is not below --nnodes ${nnodes}`);
  if (nnodes > 1 && !options.masterAddr) throw new MemgptError('--nnodes > 1 needs --master-addr (the host of node 0)');
  const masterAddr = options.masterAddr ?? '127.0.0.1';
  const masterPort = options.masterPort ?? (nnodes > 1 ? 29500 : await freePort());
  const worldSize = nprocPerNode * nnodes;
  const bin = join(packageRoot, 'bin', 'memgpt.js');
  const ranks: { rank: number; child: ChildProcess; lastLine: string }[] = [];
  for (let local = 0; local < nprocPerNode; local++) {
    const rank = nodeRank * nprocPerNode + local;
    const env = {
      ...process.env, RANK: String(rank), WORLD_SIZE: String(worldSize), LOCAL_RANK: String(local),
      LOCAL_WORLD_SIZE: String(nprocPerNode), MASTER_ADDR: masterAddr, MASTER_PORT: String(masterPort),
    };  // each rank takes its share of the node's cores from LOCAL_WORLD_SIZE (lib/cli/train.ts), as under torchrun
    const child = spawn(process.execPath, [bin, ...args], { env, stdio: rank === 0 ? 'inherit' : ['ignore', 'ignore', 'pipe'] });
    const entry = { rank, child, lastLine: '' };
    child.stderr?.setEncoding('utf8').on('data', (text: string) => {
      const lines = text.split('\n').map((l) => l.trim()).filter(Boolean);
      if (lines.length) entry.lastLine = lines[lines.length - 1];
    });
    ranks.push(entry);
  }
  let interrupted: NodeJS.Signals | null = null;
  const forward = (signal: NodeJS.Signals) => () => {
    interrupted = signal;
    for (const { child } of ranks) if (child.exitCode === null) child.kill(signal);
  };
  const onInt = forward('SIGINT'), onTerm = forward('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  try {
    return await new Promise<number>((resolve) => {
      let running = ranks.length, failed = false;
      for (const entry of ranks) {
        entry.child.once('exit', (code, signal) => {
          running--;
          if (interrupted && running === 0) {
            console.error(`memgpt: ${interrupted}: stopped all ${ranks.length} ranks of this node`);
            return resolve(interrupted === 'SIGINT' ? 130 : 143);
          }
          if ((code !== 0 || signal) && !failed && !interrupted) {
            failed = true;
            const last = entry.lastLine ? `: ${entry.lastLine.replace(/^memgpt: /, '')}` : '';
            console.error(`memgpt: rank ${entry.rank} of ${worldSize} ${cause(code, signal)}${last}; stopping the other ranks`);
            for (const other of ranks) if (other !== entry && other.child.exitCode === null) other.child.kill('SIGTERM');
            // A rank stuck in native code ignores SIGTERM: it is killed 5 s later.
            setTimeout(() => { for (const other of ranks) if (other.child.exitCode === null && other.child.signalCode === null) other.child.kill('SIGKILL'); }, 5000).unref();
          }
          if (running === 0 && !interrupted) resolve(failed ? 1 : 0);
        });
      }
    });
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
}
