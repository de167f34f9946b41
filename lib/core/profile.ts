// MEMGPT_PROFILE=1: the time spent in native calls, per op, printed to stderr when the process exits (what the rest
// of a step's time is, is JavaScript: allocation, autograd, the ops' own checks). MEMGPT_PROFILE=shapes keys each op
// by its tensors' shapes too. Ops time their calls in callNative (ops/util.ts), kernel graphs their replays.
export const profileShapes = process.env.MEMGPT_PROFILE === 'shapes';
const profile = process.env.MEMGPT_PROFILE ? new Map<string, { calls: number; ms: number }>() : null;

/** Whether MEMGPT_PROFILE is on. */
export const profiling = profile !== null;

/** Adds one native call of `ms` milliseconds under `key`. */
export function recordNativeTime(key: string, ms: number): void {
  if (!profile) return;
  const entry = profile.get(key) ?? { calls: 0, ms: 0 };
  entry.calls++;
  entry.ms += ms;
  profile.set(key, entry);
}

if (profile) {
  process.on('exit', () => {
    const rows = [...profile].sort((a, b) => b[1].ms - a[1].ms);
    const total = rows.reduce((a, [, r]) => a + r.ms, 0);
    console.error(`native time by op (${total.toFixed(0)} ms in all):`);
    for (const [op, r] of rows) console.error(`  ${op.padEnd(profileShapes ? 60 : 28)} ${r.ms.toFixed(1).padStart(9)} ms ${String(r.calls).padStart(8)} calls ${((1000 * r.ms) / r.calls).toFixed(1).padStart(8)} µs/call`);
  });
}
