// Training text on disk -> one token stream (SPEC §4): a text file, a folder of text files,
// or prompt/completion records (.jsonl) whose loss mask keeps only the completions.
import { isUtf8 } from 'node:buffer';
import {
  closeSync, constants as fsConstants, fstatSync, openSync, readdirSync, readFileSync, readSync, realpathSync, statSync, type Stats,
} from 'node:fs';
import { join, relative, sep as pathSep } from 'node:path';

import { MemgptError } from '../core/errors.js';
import type { Tokenizer } from './tokenizer.js';

/** A token stream. lossMask[i] = 1 when token i counts as a target; null means every token counts. */
export interface Corpus {
  tokens: Int32Array;
  lossMask: Uint8Array | null;
  /** UTF-8 bytes of the text the tokens stand for (for bits per byte). */
  bytes: number;
  /** Files, or records of a .jsonl file. */
  documents: number;
  /** The token index where each document starts, ascending (stream training resets the memory there); absent: one document. */
  documentStarts?: Int32Array;
  source: string;
}

/** Put between documents and after every prompt/completion record. */
export const DOCUMENT_SEPARATOR = '\n\n';

const utf8 = new TextEncoder();
const BOM = [0xef, 0xbb, 0xbf];

/** Growable token + mask arrays, so that a corpus is built without arrays of JS numbers. */
class StreamBuilder {
  tokens = new Int32Array(1024);
  mask = new Uint8Array(1024);
  length = 0;
  bytes = 0;
  documents = 0;
  starts: number[] = [];
  masked = false; // true once any token had mask 0

  /** Marks the next token pushed as the start of a document. */
  startDocument(): void {
    this.starts.push(this.length);
    this.documents++;
  }

  push(ids: Int32Array, counts: boolean, bytes: number): void {
    const need = this.length + ids.length;
    if (need > this.tokens.length) {
      const cap = Math.max(need, this.tokens.length * 2);
      const t = new Int32Array(cap);
      t.set(this.tokens.subarray(0, this.length));
      const m = new Uint8Array(cap);
      m.set(this.mask.subarray(0, this.length));
      this.tokens = t;
      this.mask = m;
    }
    this.tokens.set(ids, this.length);
    this.mask.fill(counts ? 1 : 0, this.length, need);
    if (!counts && ids.length > 0) this.masked = true;
    this.length = need;
    this.bytes += bytes;
  }

  finish(source: string): Corpus {
    return {
      tokens: this.tokens.slice(0, this.length),
      lossMask: this.masked ? this.mask.slice(0, this.length) : null,
      bytes: this.bytes,
      documents: this.documents,
      documentStarts: Int32Array.from(this.starts),
      source,
    };
  }
}

function statOrThrow(path: string): Stats {
  try {
    return statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new MemgptError(`${path}: no such file or folder`);
    throw new MemgptError(`${path}: cannot read (${code ?? String(e)})`, { cause: e });
  }
}

/** How much of a file is looked at for NUL bytes before the whole of it is read. */
const SNIFF_BYTES = 1 << 16;

/**
 * The file's bytes, checked to be UTF-8 text (a leading byte-order mark is dropped). Only a regular file is read
 * (a FIFO would block, a device never end), and a binary file is refused from its first 64 KiB, before the rest.
 */
function readText(path: string): Uint8Array {
  let bytes: Uint8Array;
  let fd: number | undefined;
  try {
    fd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw new MemgptError(`${path}: not a regular file; expected UTF-8 text`);
    const head = new Uint8Array(Math.min(SNIFF_BYTES, stat.size));
    readSync(fd, head, 0, head.length, 0);
    if (head.includes(0)) throw new MemgptError(`${path}: looks binary (it has NUL bytes); expected UTF-8 text`);
    bytes = readFileSync(fd);
  } catch (e) {
    if (e instanceof MemgptError) throw e;
    throw new MemgptError(`${path}: cannot read (${(e as NodeJS.ErrnoException).code ?? String(e)})`, { cause: e });
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  if (bytes.includes(0)) throw new MemgptError(`${path}: looks binary (it has NUL bytes); expected UTF-8 text`);
  if (!isUtf8(bytes)) throw new MemgptError(`${path}: looks binary (not valid UTF-8); expected UTF-8 text`);
  if (bytes.length >= 3 && BOM.every((b, i) => bytes[i] === b)) bytes = bytes.subarray(3);
  return bytes;
}

/** Every regular, non-hidden file below dir, in sorted order of the path relative to dir ('/'-separated). */
function listFiles(dir: string): string[] {
  const found: { rel: string; path: string }[] = [];
  const visited = new Set<string>(); // real paths of folders, so that a symlink loop ends
  const walk = (d: string): void => {
    const real = realpathSync(d);
    if (visited.has(real)) return;
    visited.add(real);
    for (const entry of readdirSync(d, { withFileTypes: true })) {
      if (entry.name.startsWith('.')) continue;
      const path = join(d, entry.name);
      const st = entry.isSymbolicLink() ? statOrThrow(path) : entry;
      if (st.isDirectory()) walk(path);
      else if (st.isFile()) found.push({ rel: relative(dir, path).split(pathSep).join('/'), path });
    }
  };
  walk(dir);
  // Code-unit order, not locale order, so that every machine reads the files in the same order.
  found.sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0));
  return found.map((f) => f.path);
}

function isJsonl(path: string): boolean {
  return path.toLowerCase().endsWith('.jsonl');
}

/** Appends the records of a .jsonl file: prompt (mask 0), completion and separator (mask 1). */
function appendJsonl(out: StreamBuilder, path: string, tokenizer: Tokenizer, separator: Int32Array): number {
  const text = new TextDecoder('utf-8').decode(readText(path));
  const lines = text.split('\n');
  let records = 0;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '') continue;
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch {
      record = undefined;
    }
    const r = record as { prompt?: unknown; completion?: unknown } | null | undefined;
    if (typeof r !== 'object' || r === null || typeof r.prompt !== 'string' || typeof r.completion !== 'string') {
      throw new MemgptError(`${path}:${i + 1}: expected {"prompt", "completion"} strings`);
    }
    out.startDocument();
    out.push(tokenizer.encode(r.prompt), false, utf8.encode(r.prompt).length);
    out.push(tokenizer.encode(r.completion), true, utf8.encode(r.completion).length);
    out.push(separator, true, DOCUMENT_SEPARATOR.length);
    records++;
  }
  return records;
}

/**
 * Reads a text file, a .jsonl file of {"prompt", "completion"} records, or a folder of such files
 * (recursively, sorted by path, hidden files skipped, empty files skipped) into one token stream.
 */
export function loadCorpus(path: string, tokenizer: Tokenizer): Corpus {
  const st = statOrThrow(path);
  let files: string[];
  if (st.isDirectory()) {
    files = listFiles(path);
    if (files.length === 0) throw new MemgptError(`${path}: folder has no files`);
  } else if (st.isFile()) {
    files = [path];
  } else {
    throw new MemgptError(`${path}: not a file or folder`);
  }

  const separator = tokenizer.encode(DOCUMENT_SEPARATOR);
  const out = new StreamBuilder();
  let endsWithSeparator = true; // nothing to separate from yet
  for (const file of files) {
    if (isJsonl(file)) {
      if (!endsWithSeparator) out.push(separator, true, DOCUMENT_SEPARATOR.length);
      const records = appendJsonl(out, file, tokenizer, separator);
      if (records === 0 && files.length === 1) throw new MemgptError(`${file}: no records (the file is empty)`);
      endsWithSeparator = true;
    } else {
      const bytes = readText(file);
      if (bytes.length === 0) {
        if (files.length === 1) throw new MemgptError(`${file}: empty file`);
        continue;
      }
      if (!endsWithSeparator) out.push(separator, true, DOCUMENT_SEPARATOR.length);
      out.startDocument();
      out.push(tokenizer.encode(bytes), true, bytes.length);
      endsWithSeparator = false;
    }
  }
  if (out.length === 0) throw new MemgptError(`${path}: empty corpus (no text in any file)`);
  return out.finish(path);
}

/**
 * Holds out the last heldOutFraction of the token stream. Each part must keep at least minTokens
 * tokens (pass N + 1 so that each holds one sample). The parts share the corpus's buffers;
 * `bytes` and `documents` are shared out in proportion to the tokens (exact for the byte tokenizer's bytes).
 */
export function splitCorpus(corpus: Corpus, heldOutFraction: number, minTokens = 2): { train: Corpus; heldOut: Corpus } {
  if (!(heldOutFraction > 0 && heldOutFraction < 1)) {
    throw new MemgptError(`held-out fraction must be in (0, 1), got ${heldOutFraction}`);
  }
  const n = corpus.tokens.length;
  const held = Math.round(n * heldOutFraction);
  const cut = n - held;
  if (held < minTokens || cut < minTokens) {
    throw new MemgptError(
      `${corpus.source}: holding out ${heldOutFraction} of ${n} tokens leaves ${cut} for training and ${held} held out; ` +
        `each part needs at least ${minTokens} tokens`,
    );
  }
  const part = (from: number, to: number, name: string): Corpus => ({
    tokens: corpus.tokens.subarray(from, to),
    lossMask: corpus.lossMask ? corpus.lossMask.subarray(from, to) : null,
    bytes: Math.round((corpus.bytes * (to - from)) / n),
    documents: Math.max(1, Math.round((corpus.documents * (to - from)) / n)),
    documentStarts: corpus.documentStarts && partStarts(corpus.documentStarts, from, to),
    source: `${corpus.source} (${name})`,
  });
  return { train: part(0, cut, 'train'), heldOut: part(cut, n, 'held out') };
}

/** The document starts inside [from, to), relative to from; a part that begins inside a document starts one at 0. */
function partStarts(starts: Int32Array, from: number, to: number): Int32Array {
  const inside = Array.from(starts).filter((t) => t >= from && t < to).map((t) => t - from);
  if (inside[0] !== 0) inside.unshift(0);
  return Int32Array.from(inside);
}
