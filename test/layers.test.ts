// The layers of src/, each a folder, may import only the folders below them (arrows point down only). The order is
// the one below; a new folder must be placed in it. Interfaces that lower layers implement (memory sources, links,
// clocks) live at the bottom, in src/util.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';

/** Top to bottom: a folder may import its own files and those of the folders after it. */
const LAYERS = [
  ['cli'],
  ['agent'],
  ['migrate', 'sim'],
  ['engine'],
  ['policy'],
  ['predict'],
  ['codec'],
  ['runtime'],
  ['memory'],
  ['transport'],
  ['criu'],
  ['report'],
  ['util'],
];

const SRC = new URL('../src/', import.meta.url).pathname;
const rank = new Map(LAYERS.flatMap((names, i) => names.map((n) => [n, i] as const)));

/** Every import of one src/ folder from another that goes up: [file, the folder it imports]. */
function upward(files: { path: string; text: string }[]): [string, string][] {
  const out: [string, string][] = [];
  for (const { path, text } of files) {
    const from = path.split('/')[0];
    for (const m of text.matchAll(/(?:from|import\()\s*'(\.\.?\/[^']+)'/g)) {
      const target = normalize(join(dirname(path), m[1]));
      const to = target.split('/')[0];
      if (target.startsWith('..') || to === from || !target.includes('/')) continue;
      if ((rank.get(to) ?? Infinity) < (rank.get(from) ?? -Infinity)) out.push([path, to]);
    }
  }
  return out;
}

function sources(dir: string): { path: string; text: string }[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && /\.(ts|mjs)$/.test(e.name))
    .map((e) => {
      const full = join(e.parentPath, e.name);
      return { path: relative(SRC, full), text: readFileSync(full, 'utf8') };
    });
}

test('every folder of src/ has its place in the layers, and no file imports a layer above its own', () => {
  const folders = readdirSync(SRC, { withFileTypes: true })
    .filter((e) => e.isDirectory())
    .map((e) => e.name);
  for (const f of folders) assert.ok(rank.has(f), `src/${f} is in no layer: place it in LAYERS`);
  assert.deepEqual(upward(sources(SRC)), []);
  // The check itself: an engine file that imports the CLI, or a memory source that imports the engine, is caught.
  assert.deepEqual(
    upward([
      { path: 'engine/x.ts', text: "import { y } from '../cli/main.ts';" },
      { path: 'memory/x.ts', text: "const m = await import('../engine/source.ts');" },
      { path: 'engine/z.ts', text: "import type { Layout } from '../util/interfaces.ts';" },
    ]),
    [
      ['engine/x.ts', 'cli'],
      ['memory/x.ts', 'engine'],
    ],
  );
});
