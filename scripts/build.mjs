#!/usr/bin/env node
// npm run build: compiles src/ to dist/ (tsconfig.build.json), copies the files the code loads by path beside
// itself (the CRIU .proto schemas, the hash worker), and last writes dist/.built, whose time bin/precog compares
// with the sources' to decide whether dist/ is current. Plain JavaScript: it runs before anything is built.
import { spawnSync } from 'node:child_process';
import { cpSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
// The build's start: a source saved while tsc runs is then newer than the build, and bin/precog does not trust it.
const started = new Date();

rmSync(dist, { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const r = spawnSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json')], {
  stdio: 'inherit',
});
if (r.status !== 0) process.exit(r.status ?? 1);
// Every file of src/ that is not TypeScript is loaded at run time from beside the module that names it.
cpSync(join(root, 'src'), dist, {
  recursive: true,
  filter: (from) => !from.endsWith('.ts'),
});
const stamp = join(dist, '.built');
writeFileSync(stamp, `${started.toISOString()}\n`);
utimesSync(stamp, started, started);
