// The safetensors reader and writer: the byte layout of the format, round trips of every dtype,
// one clear error for each way a file can be broken, and writes that are all-or-nothing.
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { MemgptError } from '../lib/core/errors.js';
import {
  bfloat16Bytes, float32Bytes, readSafetensors, readSafetensorsHeader, storedToFloat32, writeSafetensors,
  type SafetensorsDType, type StoredTensor,
} from '../lib/io/safetensors.js';
import { floatToBf16Bits } from '../lib/core/dtype.js';

const dir = mkdtempSync(join(tmpdir(), 'memgpt-st-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let fileCount = 0;
const freshPath = (name = 'x') => join(dir, `${name}-${fileCount++}.safetensors`);

const bytesOf = (view: ArrayBufferView) => new Uint8Array(view.buffer, view.byteOffset, view.byteLength).slice();

/** A file with exactly the given header text and data bytes (header length written as given, or the true one). */
function craft(header: string | object, data: Uint8Array = new Uint8Array(0), headerLength?: bigint): string {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const out = Buffer.alloc(8 + json.length + data.length);
  out.writeBigUInt64LE(headerLength ?? BigInt(json.length), 0);
  json.copy(out, 8);
  out.set(data, 8 + json.length);
  const path = freshPath('crafted');
  writeFileSync(path, out);
  return path;
}

function expectInvalid(path: string, what: RegExp): void {
  let caught: unknown;
  try {
    readSafetensors(path);
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(MemgptError);
  const message = (caught as Error).message;
  expect(message.startsWith(`${path}: not a valid safetensors file (`)).toBe(true);
  expect(message).not.toContain('\n');
  expect(message).toMatch(what);
}

const someTensors = (): [string, StoredTensor][] => [
  ['f32', { dtype: 'F32', shape: [2, 3], data: bytesOf(Float32Array.of(1, -2, 3.5, 1e-30, -0, Infinity)) }],
  ['bf16', { dtype: 'BF16', shape: [3], data: bytesOf(Uint16Array.of(0x3f80, 0xc000, 0x7fc0)) }], // 1, -2, NaN
  ['i32', { dtype: 'I32', shape: [1, 2], data: bytesOf(Int32Array.of(-7, 2147483647)) }],
  ['f64', { dtype: 'F64', shape: [2], data: bytesOf(Float64Array.of(Math.PI, -1e300)) }],
  ['i64', { dtype: 'I64', shape: [], data: bytesOf(BigInt64Array.of(-(2n ** 60n))) }],
  ['u8', { dtype: 'U8', shape: [3], data: Uint8Array.of(0, 128, 255) }],
  ['i8', { dtype: 'I8', shape: [1], data: Uint8Array.of(0x80) }],
  ['bool', { dtype: 'BOOL', shape: [2], data: Uint8Array.of(1, 0) }],
  ['f16', { dtype: 'F16', shape: [2], data: bytesOf(Uint16Array.of(0x3c00, 0xc800)) }], // 1, -8
  ['empty', { dtype: 'F32', shape: [0, 4], data: new Uint8Array(0) }],
];

describe('safetensors layout and round trips', () => {
  it('writes the reference layout: u64 LE header length, space-padded JSON to a multiple of 8, packed data', () => {
    const path = freshPath();
    writeSafetensors(path, someTensors(), { note: 'hello', 'memgpt.x': '{"a":1}' });
    const file = readFileSync(path);
    const n = Number(file.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    const text = file.subarray(8, 8 + n).toString('utf8');
    expect(text).toMatch(/^\{.*\} *$/);
    const header = JSON.parse(text);
    expect(header.__metadata__).toEqual({ note: 'hello', 'memgpt.x': '{"a":1}' });
    let at = 0;
    for (const [name, t] of someTensors()) {
      expect(header[name]).toEqual({ dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.data.length] });
      expect(bytesOf(file.subarray(8 + n + at, 8 + n + at + t.data.length))).toEqual(t.data);
      at += t.data.length;
    }
    expect(file.length).toBe(8 + n + at);
  });

  it('reads back every dtype, shape and byte, and the metadata', () => {
    const path = freshPath();
    writeSafetensors(path, someTensors(), { note: 'hello' });
    const { tensors, metadata } = readSafetensors(path);
    expect(metadata).toEqual({ note: 'hello' });
    expect([...tensors.keys()]).toEqual(someTensors().map(([n]) => n));
    for (const [name, t] of someTensors()) {
      const got = tensors.get(name)!;
      expect({ dtype: got.dtype, shape: got.shape, data: bytesOf(got.data) }).toEqual(t);
    }
    const header = readSafetensorsHeader(path);
    expect(header.tensors.get('i32')).toMatchObject({ dtype: 'I32', shape: [1, 2] });
    expect(header.dataStart % 8).toBe(0);
  });

  it('tensors named like Object.prototype keys (__proto__, constructor, toString) round-trip', () => {
    const path = freshPath();
    const names = ['__proto__', 'constructor', 'toString'];
    writeSafetensors(path, names.map((n, i): [string, StoredTensor] => [n, { dtype: 'U8', shape: [1], data: Uint8Array.of(i + 1) }]));
    const { tensors } = readSafetensors(path);
    expect([...tensors.keys()]).toEqual(names);
    expect(names.map((n) => tensors.get(n)!.data[0])).toEqual([1, 2, 3]);
  });

  it('a file without tensors or metadata is valid', () => {
    const path = freshPath();
    writeSafetensors(path, []);
    expect(readFileSync(path).length).toBe(16); // "{}" padded to 8
    expect(readSafetensors(path)).toEqual({ tensors: new Map(), metadata: {} });
  });

  it('converts floating-point tensors to float32, whatever their alignment in the file', () => {
    const path = freshPath();
    const values = Float32Array.of(1.5, -2.25, 3.1415927, 65504, 1e-20);
    // The 3-byte U8 tensor first puts the F32 data at an odd offset.
    writeSafetensors(path, [
      ['odd', { dtype: 'U8', shape: [3], data: Uint8Array.of(1, 2, 3) }],
      ['x', { dtype: 'F32', shape: [5], data: float32Bytes(values) }],
      ['b', { dtype: 'BF16', shape: [5], data: bfloat16Bytes(values) }],
    ]);
    const { tensors } = readSafetensors(path);
    expect(storedToFloat32(tensors.get('x')!)).toEqual(values);
    const widened = storedToFloat32(tensors.get('b')!);
    const expected = Array.from(values, (v) => {
      const u = new Uint32Array(1);
      u[0] = floatToBf16Bits(v) << 16;
      return new Float32Array(u.buffer)[0];
    });
    expect(Array.from(widened)).toEqual(expected);
    for (let i = 0; i < values.length; i++) expect(Math.abs(widened[i] - values[i])).toBeLessThanOrEqual(Math.abs(values[i]) * 2 ** -8);
    expect(Array.from(storedToFloat32(someTensors()[8][1]))).toEqual([1, -8]);
    expect(Array.from(storedToFloat32(someTensors()[3][1]))).toEqual([Math.fround(Math.PI), -Infinity]);
  });
});

describe('safetensors: each broken file is one clear error', () => {
  const good = (): string => {
    const path = freshPath('good');
    writeSafetensors(path, someTensors(), { note: 'hello' });
    return path;
  };

  it('missing, empty, too short, a folder, a text file', () => {
    expectInvalid(join(dir, 'nope.safetensors'), /no such file/);
    const empty = freshPath();
    writeFileSync(empty, '');
    expectInvalid(empty, /the file is empty/);
    const short = freshPath();
    writeFileSync(short, Uint8Array.of(1, 2, 3, 4, 5));
    expectInvalid(short, /5 bytes, shorter than the 8-byte header length/);
    expectInvalid(dir, /it is a directory/);
    const text = freshPath();
    writeFileSync(text, 'This is a README, not a checkpoint.\nIt has a few lines of text.\n');
    expectInvalid(text, /header length \d+ is absurd/);
  });

  it('truncated at any point', () => {
    const whole = readFileSync(good());
    const n = Number(whole.readBigUInt64LE(0));
    for (const cut of [1, 7, 8, 9, 8 + Math.floor(n / 2), 8 + n - 1, 8 + n, 8 + n + 1, whole.length - 5, whole.length - 1]) {
      const path = freshPath('cut');
      writeFileSync(path, whole.subarray(0, cut));
      expectInvalid(path, /shorter than|runs past the end|outside the \d+ data bytes|cover \d+ bytes/);
    }
    // Extra bytes at the end are corruption too.
    const longer = freshPath('long');
    writeFileSync(longer, Buffer.concat([whole, Buffer.from([0, 0, 0, 0])]));
    expectInvalid(longer, /the tensors cover \d+ bytes but the file holds \d+ data bytes/);
  });

  it('header length absurd or past the end of the file', () => {
    expectInvalid(craft({}, new Uint8Array(0), 1n << 40n), /header length 1099511627776 is absurd/);
    expectInvalid(craft({}, new Uint8Array(0), 0xffffffffffffffffn), /is absurd/);
    expectInvalid(craft({}, new Uint8Array(0), 1000n), /header length 1000 runs past the end of the 10-byte file/);
  });

  it('corrupted header bytes', () => {
    const whole = readFileSync(good());
    for (const [at, byte] of [[8, 0x5b], [9, 0x00], [20, 0x7d], [8 + 30, 0xff]] as const) {
      const path = freshPath('corrupt');
      const copy = Buffer.from(whole);
      copy[at] = byte;
      writeFileSync(path, copy);
      expectInvalid(path, /not JSON|not UTF-8|not a JSON object|unknown|data_offsets|shape|cover/);
    }
  });

  it('header not JSON, not an object', () => {
    expectInvalid(craft('{"a": '), /the header is not JSON/);
    expectInvalid(craft('[1, 2]'), /the header is not a JSON object/);
    expectInvalid(craft('null'), /the header is not a JSON object/);
    expectInvalid(craft('"text"'), /the header is not a JSON object/);
  });

  it('bad entries: dtype, shape, offsets, sizes, metadata', () => {
    const four = new Uint8Array(4);
    const t = (entry: object) => craft({ x: { dtype: 'F32', shape: [1], data_offsets: [0, 4], ...entry } }, four);
    expectInvalid(t({ dtype: 'F8' }), /tensor "x" has an unknown dtype "F8"/);
    expectInvalid(t({ dtype: 7 }), /unknown dtype 7/);
    expectInvalid(t({ shape: [-1] }), /shape that is not a list of non-negative integers/);
    expectInvalid(t({ shape: [1.5] }), /shape that is not a list/);
    expectInvalid(t({ shape: '1' }), /shape that is not a list/);
    expectInvalid(t({ data_offsets: [0] }), /data_offsets that are not two non-negative integers/);
    expectInvalid(t({ data_offsets: [4, 0] }), /data_offsets \[4, 0\] outside the 4 data bytes/);
    expectInvalid(t({ data_offsets: [0, 8] }), /data_offsets \[0, 8\] outside/);
    expectInvalid(t({ shape: [2] }), /tensor "x" F32 \[2\] needs 8 bytes but data_offsets give 4/);
    expectInvalid(t({ extra: 1 }), /unknown field "extra"/);
    expectInvalid(craft({ x: 3 }), /tensor "x" is not an object/);
    expectInvalid(craft({ __metadata__: { a: 1 } }), /metadata value of "a" is not a string/);
    expectInvalid(craft({ __metadata__: ['a'] }), /__metadata__ is not an object/);
  });

  it('offsets that overlap, leave gaps, or do not cover the data', () => {
    const eight = new Uint8Array(8);
    const a = { dtype: 'F32', shape: [1] };
    expectInvalid(craft({ x: { ...a, data_offsets: [0, 4] }, y: { ...a, data_offsets: [0, 4] } }, eight), /overlaps/);
    expectInvalid(craft({ x: { ...a, data_offsets: [4, 8] } }, eight), /bytes 0\.\.4 of the data belong to no tensor/);
    expectInvalid(craft({ x: { ...a, data_offsets: [0, 4] } }, eight), /cover 4 bytes but the file holds 8/);
    // Out of order in the header but tiling the data: valid.
    const ok = craft({ y: { ...a, data_offsets: [4, 8] }, x: { ...a, data_offsets: [0, 4] } }, eight);
    expect([...readSafetensors(ok).tensors.keys()]).toEqual(['y', 'x']);
  });
});

describe('safetensors: writes are atomic', () => {
  const leftovers = (folder: string) => readdirSync(folder).filter((f) => f.includes('.tmp-'));

  it('rewriting a file keeps its permissions', () => {
    const path = freshPath('mode');
    writeSafetensors(path, someTensors());
    chmodSync(path, 0o600);
    writeSafetensors(path, someTensors(), { v: '2' });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(readSafetensors(path).metadata).toEqual({ v: '2' });
  });

  it('a tensor that fails mid-write leaves the previous file intact and no temp file', () => {
    const path = freshPath('atomic');
    writeSafetensors(path, someTensors(), { v: '1' });
    const before = readFileSync(path);
    const failing: StoredTensor = {
      dtype: 'F32', shape: [4],
      get data(): Uint8Array {
        throw new Error('device lost while copying');
      },
    };
    expect(() => writeSafetensors(path, [...someTensors(), ['bad', failing]], { v: '2' })).toThrow(
      new MemgptError(`${path}: cannot write safetensors (device lost while copying)`),
    );
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(leftovers(dir)).toEqual([]);
    // Bytes that do not match the shape are found while writing, too.
    expect(() => writeSafetensors(path, [...someTensors(), ['short', { dtype: 'F32', shape: [4], data: new Uint8Array(12) }]])).toThrow(
      /cannot write safetensors \(tensor "short" F32 \[4\] needs 16 bytes, got 12\)/,
    );
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(leftovers(dir)).toEqual([]);
  });

  it('a folder that is gone, or read-only, fails cleanly', () => {
    const gone = mkdtempSync(join(dir, 'gone-'));
    rmSync(gone, { recursive: true });
    const target = join(gone, 'm.safetensors');
    expect(() => writeSafetensors(target, someTensors())).toThrow(new RegExp(`^${target.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: cannot write safetensors \\(ENOENT`));
    expect(existsSync(gone)).toBe(false);

  });

  it('a rename that fails at the very end (the target is a folder) removes the finished temp file', () => {
    const target = mkdtempSync(join(dir, 'target-'));
    writeFileSync(join(target, 'keep'), 'x');
    expect(() => writeSafetensors(target, someTensors())).toThrow(/cannot write safetensors \((EISDIR|ENOTEMPTY|EEXIST)/);
    expect(readFileSync(join(target, 'keep'), 'utf8')).toBe('x');
    expect(leftovers(dir)).toEqual([]);
  });

  // root ignores folder permissions, so there the write would just succeed and prove nothing.
  it.skipIf(process.getuid?.() === 0)('a read-only folder fails cleanly (skipped when running as root)', () => {
    const readOnly = mkdtempSync(join(dir, 'ro-'));
    const path = join(readOnly, 'm.safetensors');
    writeSafetensors(path, someTensors());
    const before = readFileSync(path);
    chmodSync(readOnly, 0o555);
    try {
      expect(() => writeSafetensors(path, [])).toThrow(/cannot write safetensors \(EACCES/);
      expect(readFileSync(path).equals(before)).toBe(true);
      expect(leftovers(readOnly)).toEqual([]);
    } finally {
      chmodSync(readOnly, 0o755);
    }
  });

  it('bad arguments are refused before anything is written', () => {
    const path = freshPath('args');
    const one = someTensors()[0];
    expect(() => writeSafetensors(path, [one, one])).toThrow(/tensor "f32" is given twice/);
    expect(() => writeSafetensors(path, [['x', { ...one[1], dtype: 'F8' as SafetensorsDType }]])).toThrow(/tensor "x" has an unknown dtype "F8"/);
    expect(() => writeSafetensors(path, [['x', { ...one[1], shape: [-2] }]])).toThrow(/shape that is not a list of non-negative integers/);
    expect(() => writeSafetensors(path, [['__metadata__', one[1]]])).toThrow(/tensor name "__metadata__" is not allowed/);
    expect(() => writeSafetensors(path, [], { a: 1 as unknown as string })).toThrow(/metadata value of "a" is not a string/);
    function* throwing(): Generator<[string, StoredTensor]> {
      yield one;
      throw new Error('no more');
    }
    expect(() => writeSafetensors(path, throwing())).toThrow(new MemgptError(`${path}: cannot write safetensors (no more)`));
    expect(existsSync(path)).toBe(false);
    expect(leftovers(dir)).toEqual([]);
  });
});
