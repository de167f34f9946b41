// The rules of lib/'s layout that a reader relies on: no file over 400 lines, no import circle (type-only imports
// included: a circle of types still ties the files together), and no `as unknown as` casts to reach around types.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const libDir = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'lib');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []);
}

const files = sourceFiles(libDir);
const text = new Map(files.map((f) => [f, readFileSync(f, 'utf8')]));

/** The lib/ files that `file` imports or re-exports, by relative specifier ('./x.js' is x.ts). */
function importsOf(file: string): string[] {
  const found: string[] = [];
  for (const m of text.get(file)!.matchAll(/^\s*(?:import|export)\b[^'"]*?\bfrom\s+['"](\.{1,2}\/[^'"]+)['"]/gm)) {
    const target = resolve(dirname(file), m[1].replace(/\.js$/, '.ts'));
    if (text.has(target)) found.push(target);
  }
  return found;
}

/** Every import circle, each as the list of files around it (depth-first search, one report per circle found). */
function importCircles(): string[][] {
  const graph = new Map(files.map((f) => [f, importsOf(f)]));
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const circles: string[][] = [];
  const visit = (f: string): void => {
    state.set(f, 'open');
    stack.push(f);
    for (const g of graph.get(f)!) {
      if (state.get(g) === 'open') circles.push(stack.slice(stack.indexOf(g)).map((x) => relative(libDir, x)));
      else if (!state.has(g)) visit(g);
    }
    stack.pop();
    state.set(f, 'done');
  };
  for (const f of files) if (!state.has(f)) visit(f);
  return circles;
}

describe('lib/ layout', () => {
  it('finds the sources and their imports', () => {
    // Guards the checks below against passing on nothing: the model imports the ops.
    expect(files.length).toBeGreaterThan(40);
    expect(importsOf(join(libDir, 'nn', 'model.ts')).map((f) => relative(libDir, f))).toContain(join('ops', 'attention.ts'));
  });

  it('has no file over 400 lines', () => {
    const long = files.map((f) => [relative(libDir, f), text.get(f)!.split('\n').length - 1] as const).filter(([, n]) => n > 400);
    expect(long).toEqual([]);
  });

  it('has no import circle', () => {
    expect(importCircles()).toEqual([]);
  });

  it('has no `as unknown as` cast', () => {
    expect(files.filter((f) => text.get(f)!.includes('as unknown as')).map((f) => relative(libDir, f))).toEqual([]);
  });
});
