// Flag parsing for every `memgpt` command, in one place: the parser (unknown flags are errors) and the typed readers,
// each refusing a bad value with one line naming the flag.
import { parseArgs, type ParseArgsConfig } from 'node:util';

import { MemgptError } from '../core/errors.js';
import { defaultDevice, parseDevice, setDefaultDevice } from '../native/backend.js';

/** Parsed flags: a string, a boolean, or the values of a repeatable flag. */
export type Flags = Record<string, string | boolean | string[] | undefined>;
/** Parses argv against spec ('strings': a flag that may be repeated, its values a list). Unknown flags are errors. */
export function parse(argv: string[], spec: Record<string, 'string' | 'boolean' | 'strings'>): Flags {
  const options = Object.fromEntries(Object.entries(spec).map(([k, type]) => [k, type === 'strings' ? { type: 'string', multiple: true } : { type }]));
  return parseArgs({ args: argv, options: options as ParseArgsConfig['options'], strict: true, allowPositionals: false }).values as Flags;
}

export function int(flags: Flags, name: string, fallback: number, min = 1): number {
  const v = flags[name];
  if (v === undefined) return fallback;
  // Decimal digits only: Number() would also take '0x2', '1e0' and ' 2'.
  const n = typeof v === 'string' && /^[0-9]+$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < min) throw new MemgptError(`--${name} must be a decimal integer ≥ ${min} (got '${String(v)}')`);
  return n;
}

export function num(flags: Flags, name: string, fallback: number, ok: (n: number) => boolean = (n) => n >= 0, what = 'a non-negative number'): number {
  const v = flags[name];
  if (v === undefined) return fallback;
  const n = Number(v);
  if (typeof v !== 'string' || v.trim() === '' || !Number.isFinite(n) || !ok(n)) throw new MemgptError(`--${name} must be ${what} (got '${String(v)}')`);
  return n;
}

export function choice<T extends string>(flags: Flags, name: string, allowed: readonly T[], fallback: T): T {
  const v = flags[name];
  if (v === undefined) return fallback;
  if (!allowed.includes(v as T)) throw new MemgptError(`--${name} must be ${allowed.join(' or ')} (got '${String(v)}')`);
  return v as T;
}

export function required(flags: Flags, name: string, command: string): string {
  const v = flags[name];
  if (typeof v !== 'string' || v === '') throw new MemgptError(`${command}: --${name} is required`);
  return v;
}

export function useDevice(flags: Flags): void {
  if (typeof flags.device === 'string') setDefaultDevice(parseDevice(flags.device, '--device'));
  defaultDevice();
}
