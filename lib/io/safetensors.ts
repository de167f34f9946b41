// The safetensors file format (https://github.com/huggingface/safetensors), read with every field
// checked and written atomically: an 8-byte little-endian header length N, N bytes of JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {string: string}}, then the
// tensors' bytes, packed in order with no gaps, offsets relative to the start of the data.
import { randomBytes } from 'node:crypto';
import {
  closeSync, constants as fsConstants, fchmodSync, fstatSync, fsyncSync, openSync, readSync, renameSync, statSync, unlinkSync, writeSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';

import { MemgptError, shapeStr } from '../core/errors.js';

export type SafetensorsDType = 'F32' | 'BF16' | 'F16' | 'F64' | 'I32' | 'I64' | 'U8' | 'I8' | 'BOOL';

/** Bytes per element of each dtype. */
export const safetensorsDTypeBytes: Record<SafetensorsDType, number> = {
  F32: 4, BF16: 2, F16: 2, F64: 8, I32: 4, I64: 8, U8: 1, I8: 1, BOOL: 1,
};

/** One tensor as stored: raw little-endian bytes, row-major. */
export interface StoredTensor {
  dtype: SafetensorsDType;
  shape: number[];
  data: Uint8Array;
}

/** What the header says about one tensor. */
export interface TensorInfo {
  dtype: SafetensorsDType;
  shape: number[];
  /** Byte range inside the data section. */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
  /** Byte offset of the data section in the file (8 + N). */
  dataStart: number;
}

/** Headers beyond this are surely corruption (the reference reader's limit is 100 MB too). */
const MAX_HEADER_BYTES = 100_000_000;

function invalid(path: string, what: string): MemgptError {
  return new MemgptError(`${path}: not a valid safetensors file (${what})`);
}

function openForReading(path: string): { fd: number; size: number } {
  let fd: number;
  try {
    // Non-blocking, so that a FIFO given as a checkpoint is refused at once instead of waiting for a writer.
    fd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw invalid(path, 'no such file');
    if (code === 'EACCES' || code === 'EPERM') throw new MemgptError(`${path}: cannot be read (permission denied)`);
    throw invalid(path, `cannot be opened: ${(err as Error).message}`);
  }
  const stat = fstatSync(fd);
  if (!stat.isFile()) {
    closeSync(fd);
    throw invalid(path, stat.isDirectory() ? 'it is a directory' : 'not a regular file');
  }
  return { fd, size: stat.size };
}

/** Reads exactly `length` bytes at `position` (readSync may return fewer). */
function readExactly(fd: number, buffer: Uint8Array, position: number): void {
  let done = 0;
  while (done < buffer.length) {
    const n = readSync(fd, buffer, done, Math.min(buffer.length - done, 1 << 30), position + done);
    if (n === 0) throw new Error('unexpected end of file');
    done += n;
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isIndex(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Parses and checks a header against the size of the file it came from. */
function parseHeader(path: string, headerBytes: Uint8Array, fileSize: number): SafetensorsHeader {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    throw invalid(path, 'the header is not UTF-8 text');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw invalid(path, `the header is not JSON: ${(err as Error).message}`);
  }
  if (!isPlainObject(json)) throw invalid(path, 'the header is not a JSON object');
  const dataStart = 8 + headerBytes.length;
  const dataBytes = fileSize - dataStart;
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  for (const [name, entry] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isPlainObject(entry)) throw invalid(path, '__metadata__ is not an object');
      for (const [key, value] of Object.entries(entry)) {
        if (typeof value !== 'string') throw invalid(path, `metadata value of "${key}" is not a string`);
        metadata[key] = value;
      }
      continue;
    }
    const what = `tensor "${name}"`;
    if (!isPlainObject(entry)) throw invalid(path, `${what} is not an object`);
    for (const key of Object.keys(entry)) {
      if (key !== 'dtype' && key !== 'shape' && key !== 'data_offsets') throw invalid(path, `${what} has an unknown field "${key}"`);
    }
    const { dtype, shape, data_offsets: offsets } = entry;
    if (typeof dtype !== 'string' || !Object.hasOwn(safetensorsDTypeBytes, dtype)) {
      throw invalid(path, `${what} has an unknown dtype ${JSON.stringify(dtype)}`);
    }
    if (!Array.isArray(shape) || !shape.every(isIndex)) throw invalid(path, `${what} has a shape that is not a list of non-negative integers`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isIndex)) {
      throw invalid(path, `${what} has data_offsets that are not two non-negative integers`);
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end || end > dataBytes) {
      throw invalid(path, `${what} has data_offsets [${begin}, ${end}] outside the ${dataBytes} data bytes`);
    }
    let numel = 1;
    for (const d of shape as number[]) numel *= d;
    const bytes = numel * safetensorsDTypeBytes[dtype as SafetensorsDType];
    if (!Number.isSafeInteger(bytes) || bytes !== end - begin) {
      throw invalid(path, `${what} ${dtype} ${shapeStr(shape as number[])} needs ${bytes} bytes but data_offsets give ${end - begin}`);
    }
    tensors.set(name, { dtype: dtype as SafetensorsDType, shape: [...(shape as number[])], begin, end });
  }
  // The tensors must tile the data section exactly: no gap, no overlap, nothing left over.
  const ranges = [...tensors].sort(([, a], [, b]) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (const [name, info] of ranges) {
    if (info.begin < at) throw invalid(path, `tensor "${name}" overlaps another tensor's bytes`);
    if (info.begin > at) throw invalid(path, `bytes ${at}..${info.begin} of the data belong to no tensor`);
    at = info.end;
  }
  if (at !== dataBytes) {
    throw invalid(path, `the tensors cover ${at} bytes but the file holds ${dataBytes} data bytes${dataBytes > at ? '' : ' (truncated?)'}`);
  }
  return { tensors, metadata, dataStart };
}

function readHeaderFrom(path: string, fd: number, size: number): SafetensorsHeader {
  if (size < 8) throw invalid(path, size === 0 ? 'the file is empty' : `the file is ${size} bytes, shorter than the 8-byte header length`);
  const lengthBytes = new Uint8Array(8);
  readExactly(fd, lengthBytes, 0);
  const n = Buffer.from(lengthBytes.buffer).readBigUInt64LE(0);
  if (n > BigInt(MAX_HEADER_BYTES)) throw invalid(path, `the header length ${n} is absurd (over ${MAX_HEADER_BYTES} bytes)`);
  if (Number(n) > size - 8) throw invalid(path, `the header length ${n} runs past the end of the ${size}-byte file`);
  const headerBytes = new Uint8Array(Number(n));
  readExactly(fd, headerBytes, 8);
  return parseHeader(path, headerBytes, size);
}

/** The header alone (names, dtypes, shapes, metadata), fully checked, without reading the tensors. */
export function readSafetensorsHeader(path: string): SafetensorsHeader {
  const { fd, size } = openForReading(path);
  try {
    return readHeaderFrom(path, fd, size);
  } catch (err) {
    throw err instanceof MemgptError ? err : invalid(path, (err as Error).message);
  } finally {
    closeSync(fd);
  }
}

/** Every tensor and the metadata of a safetensors file; throws one MemgptError naming the file and the fault. */
export function readSafetensors(path: string): { tensors: Map<string, StoredTensor>; metadata: Record<string, string> } {
  const { fd, size } = openForReading(path);
  try {
    const header = readHeaderFrom(path, fd, size);
    const data = new Uint8Array(size - header.dataStart);
    readExactly(fd, data, header.dataStart);
    const tensors = new Map<string, StoredTensor>();
    for (const [name, info] of header.tensors) {
      tensors.set(name, { dtype: info.dtype, shape: info.shape, data: data.subarray(info.begin, info.end) });
    }
    return { tensors, metadata: header.metadata };
  } catch (err) {
    throw err instanceof MemgptError ? err : invalid(path, (err as Error).message);
  } finally {
    closeSync(fd);
  }
}

/** The header JSON, space-padded so that the data starts at a multiple of 8 bytes (as the reference writer does). */
function encodeHeader(path: string, entries: [string, { dtype: SafetensorsDType; shape: number[] }][], metadata: Record<string, string>): Uint8Array {
  // No prototype: a tensor named "__proto__" (or "constructor") is an own key like any other.
  const header: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let at = 0;
  for (const [name, { dtype, shape }] of entries) {
    let bytes = safetensorsDTypeBytes[dtype];
    for (const d of shape) bytes *= d;
    header[name] = { dtype, shape, data_offsets: [at, at + bytes] };
    at += bytes;
  }
  if (!Number.isSafeInteger(at)) throw new MemgptError(`${path}: the tensors are too large to write`);
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20, 8);
  Buffer.from(out.buffer).writeBigUInt64LE(BigInt(padded), 0);
  out.set(json, 8);
  return out;
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) done += writeSync(fd, bytes, done, Math.min(bytes.length - done, 1 << 30));
}

/** The permission bits of an existing regular file at path, or null. */
function existingMode(path: string): number | null {
  try {
    const st = statSync(path);
    return st.isFile() ? st.mode & 0o7777 : null;
  } catch {
    return null;
  }
}

/**
 * Writes a safetensors file atomically: a temp file in the same folder, fsynced, renamed over `path`,
 * then the folder fsynced. On any failure the temp file is removed and an existing `path` is untouched.
 * Each tensor's `data` is read only while it is written, so a caller may produce it lazily (a getter).
 */
export function writeSafetensors(path: string, tensors: Iterable<[string, StoredTensor]>, metadata: Record<string, string> = {}): void {
  const bad = (what: string) => new MemgptError(`${path}: cannot write safetensors (${what})`);
  if (!isPlainObject(metadata)) throw bad('metadata must be an object of strings');
  for (const [key, value] of Object.entries(metadata)) if (typeof value !== 'string') throw bad(`metadata value of "${key}" is not a string`);
  let entries: [string, StoredTensor][];
  try {
    entries = [...tensors];
  } catch (err) {
    if (err instanceof MemgptError) throw err;
    throw new MemgptError(`${path}: cannot write safetensors (${(err as Error)?.message ?? String(err)})`, { cause: err });
  }
  const seen = new Set<string>();
  for (const [name, t] of entries) {
    if (typeof name !== 'string' || name === '__metadata__') throw bad(`tensor name ${JSON.stringify(name)} is not allowed`);
    if (seen.has(name)) throw bad(`tensor "${name}" is given twice`);
    seen.add(name);
    if (!Object.hasOwn(safetensorsDTypeBytes, t?.dtype)) throw bad(`tensor "${name}" has an unknown dtype ${JSON.stringify(t?.dtype)}`);
    if (!Array.isArray(t.shape) || !t.shape.every(isIndex)) throw bad(`tensor "${name}" has a shape that is not a list of non-negative integers`);
  }
  const header = encodeHeader(path, entries, metadata);

  const folder = dirname(path);
  const temp = join(folder, `${basename(path)}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
  let fd: number | null = null;
  try {
    fd = openSync(temp, 'wx', 0o644);
    // Rewriting a file keeps its permissions (the temp file would otherwise bring 0644 under the umask).
    const mode = existingMode(path);
    if (mode !== null) fchmodSync(fd, mode);
    writeAll(fd, header);
    for (const [name, t] of entries) {
      const data = t.data;
      let expected = safetensorsDTypeBytes[t.dtype];
      for (const d of t.shape) expected *= d;
      if (!(data instanceof Uint8Array) || data.byteLength !== expected) {
        throw bad(`tensor "${name}" ${t.dtype} ${shapeStr(t.shape)} needs ${expected} bytes, got ${data instanceof Uint8Array ? data.byteLength : 'no byte array'}`);
      }
      writeAll(fd, data);
    }
    fsyncSync(fd);
    closeSync(fd);
    fd = null;
    renameSync(temp, path);
  } catch (err) {
    if (fd !== null) {
      try {
        closeSync(fd);
      } catch {
        // already failing; the original error is the one to report
      }
    }
    try {
      unlinkSync(temp);
    } catch {
      // never created, or its folder is gone
    }
    if (err instanceof MemgptError) throw err;
    throw new MemgptError(`${path}: cannot write safetensors (${(err as Error)?.message ?? String(err)})`, { cause: err });
  }
  // Makes the rename itself durable. Some filesystems cannot fsync a folder; the file is in place either way.
  try {
    const dirFd = openSync(folder, 'r');
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
  } catch {
    // see above
  }
}

// ---------------------------------------------------------------- conversions (the host is little-endian, as the format)

/** The values of a floating-point tensor as float32 (BF16 and F16 widened exactly, F64 rounded); F32 may share t.data's memory. */
export function storedToFloat32(t: StoredTensor): Float32Array {
  const n = t.data.byteLength / safetensorsDTypeBytes[t.dtype];
  if (t.dtype === 'F32' && t.data.byteOffset % 4 === 0) return new Float32Array(t.data.buffer, t.data.byteOffset, n);
  // Otherwise copy into a fresh, aligned buffer: a tensor may start at any byte of the file.
  const bytes = t.data.slice();
  switch (t.dtype) {
    case 'F32':
      return new Float32Array(bytes.buffer, 0, n);
    case 'F64':
      return Float32Array.from(new Float64Array(bytes.buffer, 0, n));
    case 'BF16': {
      const halves = new Uint16Array(bytes.buffer, 0, n);
      const out = new Uint32Array(n);
      for (let i = 0; i < n; i++) out[i] = halves[i] << 16;
      return new Float32Array(out.buffer);
    }
    case 'F16': {
      const halves = new Uint16Array(bytes.buffer, 0, n);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = halfToFloat(halves[i]);
      return out;
    }
    default:
      throw new MemgptError(`safetensors: a ${t.dtype} tensor is not floating point`);
  }
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** float32 values as F32 bytes. */
export function float32Bytes(values: Float32Array): Uint8Array {
  return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
}

/** float32 values rounded to bfloat16 (nearest even, NaN kept quiet) as BF16 bytes. */
export function bfloat16Bytes(values: Float32Array): Uint8Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const u = bits[i];
    out[i] = (u & 0x7fffffff) > 0x7f800000 ? (u >>> 16) | 0x40 : (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
  }
  return new Uint8Array(out.buffer);
}
