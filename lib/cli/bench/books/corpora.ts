// The long-document corpora of `memgpt bench books`: real books and manuals that nobody here wrote,
// fetched from Debian's archive (apt-get download, dpkg-deb -x: no root, no other network), unpacked
// into whole documents, and split into training and held-out *documents* (never chunks of one).
// Each corpus is cached as plain text files under <cache>/<name>/{train,held-out}/, with a
// manifest.json written last, so that an interrupted setup is redone and a finished one is reused.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, relative } from 'node:path';
import { gunzipSync, inflateSync } from 'node:zlib';

import { MemgptError } from '../../../core/errors.js';

export type BookCorpusName = 'kjv' | 'linux-doc' | 'austen';
export const bookCorpusNames: readonly BookCorpusName[] = ['kjv', 'linux-doc', 'austen'];

export interface BookDocument {
  name: string;
  path: string;
  bytes: number;
}

export interface BookCorpus {
  name: BookCorpusName;
  description: string;
  /** The Debian packages the text comes from, with the versions that were unpacked. */
  packages: { name: string; version: string }[];
  dir: string;
  train: BookDocument[];
  heldOut: BookDocument[];
}

interface Manifest {
  format: 1;
  name: BookCorpusName;
  description: string;
  packages: { name: string; version: string }[];
  train: { name: string; bytes: number }[];
  heldOut: { name: string; bytes: number }[];
}

interface Source {
  description: string;
  packages: string[];
  /** Turns the unpacked packages (a root folder) into named documents, and says which are held out. */
  extract(root: string): { name: string; text: string; heldOut: boolean }[];
}

/** Where the corpora live: $MEMGPT_CACHE/books, else $XDG_CACHE_HOME/memgpt/books, else ~/.cache/memgpt/books. */
export function defaultBooksCache(): string {
  if (process.env.MEMGPT_CACHE) return join(process.env.MEMGPT_CACHE, 'books');
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'memgpt', 'books');
}

// ---------------------------------------------------------------- King James Bible

// The 66 books in canonical order, as the `bible` program of Debian's bible-kjv accepts them.
const kjvBooks = [
  'Genesis', 'Exodus', 'Leviticus', 'Numbers', 'Deuteronomy', 'Joshua', 'Judges', 'Ruth', '1Samuel', '2Samuel', '1Kings',
  '2Kings', '1Chronicles', '2Chronicles', 'Ezra', 'Nehemiah', 'Esther', 'Job', 'Psalms', 'Proverbs', 'Ecclesiastes', 'Song',
  'Isaiah', 'Jeremiah', 'Lamentations', 'Ezekiel', 'Daniel', 'Hosea', 'Joel', 'Amos', 'Obadiah', 'Jonah', 'Micah', 'Nahum',
  'Habakkuk', 'Zephaniah', 'Haggai', 'Zechariah', 'Malachi', 'Matthew', 'Mark', 'Luke', 'John', 'Acts', 'Romans',
  '1Corinthians', '2Corinthians', 'Galatians', 'Ephesians', 'Philippians', 'Colossians', '1Thessalonians', '2Thessalonians',
  '1Timothy', '2Timothy', 'Titus', 'Philemon', 'Hebrews', 'James', '1Peter', '2Peter', '1John', '2John', '3John', 'Jude',
  'Revelation',
];

const kjv: Source = {
  description: 'The King James Bible (Debian bible-kjv): 66 books, one document each, as "chapter:verse text" lines under the book\'s name; 7 books held out (Judges, Nehemiah, Lamentations, Nahum, John, 1 Thessalonians, 2 Peter)',
  packages: ['bible-kjv', 'bible-kjv-text'],
  extract(root) {
    const program = join(root, 'usr/bin/bible');
    return kjvBooks.map((book, i) => {
      // -f: one verse a line, each after its reference ("Ge1:1 In the beginning ..."); the book's abbreviation is cut.
      const r = spawnSync(program, ['-f', '-p', join(root, 'usr/lib'), `${book}1:1-${book}999:999`], { encoding: 'utf8', maxBuffer: 1 << 26 });
      if (r.status !== 0 || !r.stdout) throw new MemgptError(`books: ${program} failed on ${book} (${r.error?.message ?? r.stderr.trim()})`);
      const verses = r.stdout.split('\n').filter((l) => l.trim() !== '').map((l) => l.replace(/^\d?[A-Za-z]+(?=\d+:\d+ )/, ''));
      return { name: `${String(i + 1).padStart(2, '0')}-${book}`, text: `${book.replace(/^(\d)/, '$1 ')}\n\n${verses.join('\n')}\n`, heldOut: i % 9 === 6 };
    });
  },
};

// ---------------------------------------------------------------- Linux kernel documentation

const linuxDoc: Source = {
  description: 'The Linux 6.1 kernel documentation (Debian linux-doc-6.1): the English reStructuredText sources of 16 KB or more, one document each; every 30th in path order held out',
  packages: ['linux-doc-6.1'],
  extract(root) {
    const docs = join(root, 'usr/share/doc/linux-doc-6.1/Documentation');
    if (!existsSync(docs)) throw new MemgptError(`books: ${docs} is missing from linux-doc-6.1`);
    // The translations are left out: the corpus is the English documentation.
    const files = walk(docs).filter((f) => f.endsWith('.rst.gz') && !relative(docs, f).startsWith('translations/')).sort();
    const out: { name: string; text: string; heldOut: boolean }[] = [];
    for (const f of files) {
      const text = gunzipSync(readFileSync(f)).toString('utf8');
      if (Buffer.byteLength(text) < 16384) continue;
      out.push({ name: relative(docs, f).replace(/\.rst\.gz$/, '').replaceAll('/', '__'), text, heldOut: false });
    }
    out.forEach((d, i) => (d.heldOut = i % 30 === 15));
    return out;
  },
};

// ---------------------------------------------------------------- Jane Austen's novels

const austen: Source = {
  description: "Jane Austen's six novels (Debian r-cran-janeaustenr, read from its R data file): one document each; Persuasion held out",
  packages: ['r-cran-janeaustenr'],
  extract(root) {
    const dir = join(root, 'usr/lib/R/site-library/janeaustenr/data');
    const index = readR(gunzipSync(readFileSync(join(dir, 'Rdata.rdx'))));
    const db = readFileSync(join(dir, 'Rdata.rdb'));
    const variables = index.list?.[0];
    const names = variables?.attributes?.names;
    if (!variables?.list || !names) throw new MemgptError('books: janeaustenr: unexpected Rdata.rdx layout');
    const titles: Record<string, string> = {
      emma: 'Emma', mansfieldpark: 'Mansfield Park', northangerabbey: 'Northanger Abbey', persuasion: 'Persuasion',
      prideprejudice: 'Pride and Prejudice', sensesensibility: 'Sense and Sensibility',
    };
    return variables.list.map((entry, i) => {
      const key = names[i] ?? '';
      const [offset, length] = entry.ints ?? [];
      // Each lazy-load record: the uncompressed length (4 bytes), then a zlib stream of the serialized object.
      const lines = readR(inflateSync(db.subarray(offset + 4, offset + length))).strings;
      if (!lines) throw new MemgptError(`books: janeaustenr: ${key} is not a character vector`);
      const text = lines.map((l) => l ?? '').join('\n').trim() + '\n';
      return { name: titles[key] ?? key, text, heldOut: key === 'persuasion' };
    });
  },
};

export interface RValue {
  strings?: (string | null)[];
  ints?: number[];
  list?: RValue[];
  attributes?: Record<string, (string | null)[]>;
}

/**
 * Reads R's binary (XDR) serialization format, just as far as these files need: character, integer and
 * logical vectors, lists, and the "names" attribute (R Internals, "Serialization formats").
 */
export function readR(buf: Buffer): RValue {
  let o = 0;
  const int = () => {
    const v = buf.readInt32BE(o);
    o += 4;
    return v;
  };
  if (buf.subarray(0, 2).toString('latin1') !== 'X\n') throw new MemgptError('books: not an R XDR serialization');
  o = 2;
  const version = int();
  int(); int();
  if (version === 3) {
    const n = int(); // the native encoding's name: its length, then its bytes
    o += n;
  }
  const symbols: string[] = [];
  const item = (): RValue & { symbol?: string; pairs?: [string | undefined, RValue][] } => {
    const flags = int();
    const type = flags & 0xff, hasAttr = (flags & (1 << 9)) !== 0;
    if (type === 254) return {}; // NULL
    if (type === 255) return { symbol: symbols[(flags >>> 8) - 1] }; // a reference to an earlier symbol
    if (type === 1) { // a symbol: its name
      const name = item().strings?.[0] ?? '';
      symbols.push(name);
      return { symbol: name };
    }
    if (type === 9) { // one string
      const n = int();
      if (n === -1) return { strings: [null] };
      const s = buf.subarray(o, o + n).toString('utf8');
      o += n;
      return { strings: [s] };
    }
    if (type === 2) { // a pairlist, as [tag, value] pairs
      const pairs: [string | undefined, RValue][] = [];
      for (let f = flags; ; f = int()) {
        if ((f & 0xff) === 254) break;
        if ((f & 0xff) !== 2) throw new MemgptError('books: unexpected R pairlist');
        if (f & (1 << 9)) item();
        const tag = f & (1 << 10) ? item().symbol : undefined;
        pairs.push([tag, item()]);
      }
      return { pairs };
    }
    const value: RValue = {};
    const n = int();
    if (type === 16) value.strings = Array.from({ length: n }, () => item().strings?.[0] ?? null);
    else if (type === 19) value.list = Array.from({ length: n }, () => item());
    else if (type === 13 || type === 10) value.ints = Array.from({ length: n }, () => int());
    else throw new MemgptError(`books: unsupported R type ${type} in the data file`);
    if (hasAttr) {
      value.attributes = {};
      for (const [tag, v] of item().pairs ?? []) if (tag && v.strings) value.attributes[tag] = v.strings;
    }
    return value;
  };
  return item();
}

const sources: Record<BookCorpusName, Source> = { kjv, 'linux-doc': linuxDoc, austen };

/** What a corpus is, as its manifest records it (a cached corpus with another description is set up again). */
export function bookCorpusDescription(name: BookCorpusName): string {
  return sources[name].description;
}

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

function run(command: string, args: string[], cwd: string, what: string): string {
  const r = spawnSync(command, args, { cwd, encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.error) throw new MemgptError(`books: ${what}: cannot run ${command} (${r.error.message}); the books benchmark needs Debian's apt-get and dpkg-deb`);
  if (r.status !== 0) throw new MemgptError(`books: ${what} failed: ${(r.stderr || r.stdout).trim().split('\n').pop()}`);
  return r.stdout;
}

function documentsOf(dir: string, list: { name: string; bytes: number }[], part: string): BookDocument[] {
  return list.map((d) => ({ name: d.name, bytes: d.bytes, path: join(dir, part, `${d.name}.txt`) }));
}

/**
 * The corpus, set up on first use: downloads its Debian packages into <cache>/debs, unpacks them, writes the
 * documents, then the manifest. A cached corpus is checked (every file present with its size) before use.
 */
export function ensureBookCorpus(name: BookCorpusName, cache = defaultBooksCache(), log: (line: string) => void = () => {}): BookCorpus {
  const source = sources[name];
  if (!source) throw new MemgptError(`books: unknown corpus '${name}' (${bookCorpusNames.join(', ')})`);
  const dir = join(cache, name);
  const manifestPath = join(dir, 'manifest.json');
  if (existsSync(manifestPath)) {
    const m = JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;
    const corpus: BookCorpus = {
      name, description: m.description, packages: m.packages, dir,
      train: documentsOf(dir, m.train, 'train'), heldOut: documentsOf(dir, m.heldOut, 'held-out'),
    };
    const intact = [...corpus.train, ...corpus.heldOut].every((d) => existsSync(d.path) && statSync(d.path).size === d.bytes);
    if (intact && m.description === source.description) return corpus;
    log(`books: the cached ${name} corpus in ${dir} is incomplete or out of date; setting it up again`);
  }
  const debs = join(cache, 'debs');
  mkdirSync(debs, { recursive: true });
  const packages: { name: string; version: string }[] = [];
  const staging = join(cache, `.${name}.staging-${process.pid}`);
  rmSync(staging, { recursive: true, force: true });
  mkdirSync(join(staging, 'root'), { recursive: true });
  try {
    for (const pkg of source.packages) {
      let deb = readdirSync(debs).find((f) => f.startsWith(`${pkg}_`) && f.endsWith('.deb'));
      if (!deb) {
        log(`books: apt-get download ${pkg}`);
        run('apt-get', ['download', pkg], debs, `apt-get download ${pkg}`);
        deb = readdirSync(debs).find((f) => f.startsWith(`${pkg}_`) && f.endsWith('.deb'));
        if (!deb) throw new MemgptError(`books: apt-get download ${pkg} left no .deb in ${debs}`);
      }
      run('dpkg-deb', ['-x', join(debs, deb), join(staging, 'root')], debs, `dpkg-deb -x ${deb}`);
      packages.push({ name: pkg, version: run('dpkg-deb', ['-f', join(debs, deb), 'Version'], debs, `dpkg-deb -f ${deb}`).trim() });
    }
    const docs = source.extract(join(staging, 'root'));
    if (!docs.some((d) => d.heldOut) || docs.every((d) => d.heldOut)) throw new MemgptError(`books: ${name}: the split left no training or no held-out document`);
    const manifest: Manifest = { format: 1, name, description: source.description, packages, train: [], heldOut: [] };
    for (const part of ['train', 'held-out']) mkdirSync(join(staging, 'out', part), { recursive: true });
    for (const d of docs) {
      const bytes = Buffer.from(d.text, 'utf8');
      writeFileSync(join(staging, 'out', d.heldOut ? 'held-out' : 'train', `${d.name}.txt`), bytes);
      (d.heldOut ? manifest.heldOut : manifest.train).push({ name: d.name, bytes: bytes.length });
    }
    writeFileSync(join(staging, 'out', 'manifest.json'), JSON.stringify(manifest, null, 1) + '\n');
    rmSync(dir, { recursive: true, force: true });
    renameSync(join(staging, 'out'), dir);
    const total = (l: { bytes: number }[]) => l.reduce((a, d) => a + d.bytes, 0);
    log(`books: ${name}: ${manifest.train.length} training documents (${(total(manifest.train) / 1e6).toFixed(2)} MB), ${manifest.heldOut.length} held out (${(total(manifest.heldOut) / 1e6).toFixed(2)} MB) in ${dir}`);
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
  return ensureBookCorpus(name, cache, log);
}
