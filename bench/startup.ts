/**
 * Start-up time of the command line: `precog --help`, `precog migrate --help` and `precog simulate --help` through
 * bin/precog, once from the compiled dist/ (built first, so that bin/precog takes it) and once from the TypeScript
 * sources through tsx (PRECOG_DEV=1, what a clone without a build runs), against `node -e ''` in the same run. Each
 * process is timed from spawn to exit (wall time); the cases take turns, so that a change of load falls on all of
 * them alike; medians, and the load average (as `uptime` shows it) before and after.
 *
 *   npm run bench:startup              # 10 runs of each
 *   npm run bench:startup -- 20        # 20 runs of each
 */
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import { median } from '../src/report/metrics.ts';

const runs = Number(process.argv[2] ?? 10);
if (!(Number.isInteger(runs) && runs > 0)) {
  console.error(`runs "${process.argv[2]}" must be a whole number > 0`);
  process.exit(2);
}
/** What `precog --help` from dist/ should take at most on a 2-core machine (issue 16). */
const GOAL_MS = 250;

const root = new URL('../', import.meta.url);
const bin = new URL('bin/precog', root).pathname;
const load = () =>
  os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(', ');

interface Case {
  name: string;
  args: string[];
  env: NodeJS.ProcessEnv;
  ms: number[];
}

const dist = { ...process.env, PRECOG_DEV: '' };
const tsx = { ...process.env, PRECOG_DEV: '1' };
const cases: Case[] = [
  { name: "node -e ''", args: ['-e', ''], env: process.env, ms: [] },
  ...(['--help', 'migrate --help', 'simulate --help'] as const).flatMap((cmd) => [
    { name: `precog ${cmd} (dist)`, args: [bin, ...cmd.split(' ')], env: dist, ms: [] },
    { name: `precog ${cmd} (tsx)`, args: [bin, ...cmd.split(' ')], env: tsx, ms: [] },
  ]),
];

function timed(c: Case): number {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, c.args, { env: c.env, stdio: ['ignore', 'pipe', 'pipe'] });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`${c.name} exited ${r.status}: ${r.stderr}`);
  return ms;
}

console.log(`load average before: ${load()} (${os.availableParallelism()} cores, node ${process.version})`);
const t0 = performance.now();
const build = spawnSync(process.execPath, [new URL('scripts/build.mjs', root).pathname], {
  stdio: 'inherit',
});
if (build.status !== 0) process.exit(build.status ?? 1);
console.log(`built dist/ in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

for (const c of cases) timed(c); // once unmeasured: file cache, tsx's compile cache
for (let i = 0; i < runs; i++) for (const c of cases) c.ms.push(timed(c));

const base = median(cases[0].ms);
console.log(`\nmedian of ${runs} runs, wall time from spawn to exit:\n`);
console.log(`| command | median ms | over node -e '' |`);
console.log(`| --- | ---: | ---: |`);
for (const c of cases) {
  const m = median(c.ms);
  console.log(`| ${c.name} | ${m.toFixed(0)} | ${c === cases[0] ? '' : `+${(m - base).toFixed(0)}`} |`);
}
const help = median(cases[1].ms);
console.log(
  `\nprecog --help from dist: ${help.toFixed(1)} ms, goal <= ${GOAL_MS} ms: ${help <= GOAL_MS ? 'met' : 'not met'}`,
);
console.log(`load average after: ${load()}`);
