/**
 * Records dirty-page traces of real programs on this machine with `precog trace record` (root: it reads
 * /proc/PID/mem), for training and evaluating the predictors on something else than the emulator:
 *   python   a Python list of 150,000 small records, 2,000 updates every 20 ms, 70 % of them to a hot tenth
 *   sqlite   sqlite3 on an in-memory database of 200,000 rows under a stream of UPDATE/INSERT/DELETE statements
 *   node     a Node.js Map of 100,000 objects with a hot subset, and typed-array writes (the V8 heap, with its GC)
 *   gcc      cc1 compiling a generated C file of 3,000 functions at -O2 (the compiler's own heap)
 * Each program is started, given a second to set up, recorded for --seconds at --interval, then killed. Traces go,
 * gzipped, to traces/live/NAME.trace.gz (a few hundred KB each).
 *
 *   sudo npx tsx scripts/record-live-traces.ts [--only python,sqlite] [--seconds 8] [--interval 200ms]
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const seconds = Number(flag('--seconds', '8'));
const interval = flag('--interval', '200ms');
const only = flag('--only', '')
  .split(',')
  .filter((s) => s);
if (!(seconds > 0)) {
  console.error('--seconds needs a number > 0');
  process.exit(2);
}
if (process.getuid?.() !== 0) {
  console.error('record-live-traces needs root (precog trace record reads /proc/PID/mem of other processes)');
  process.exit(2);
}

const ROOT = new URL('..', import.meta.url).pathname;
const OUT = join(ROOT, 'traces/live');
const work = mkdtempSync(join(tmpdir(), 'precog-live-traces-'));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const PYTHON = `
import random, time
r = random.Random(1)
n = 150000
recs = [[i, 'x' * 40, 0.0, [0] * 4] for i in range(n)]
hot = n // 10
rounds = 0
while True:
    for _ in range(2000):
        k = r.randrange(hot) if r.random() < 0.7 else r.randrange(n)
        rec = recs[k]
        rec[2] += 1.0
        rec[3][r.randrange(4)] = rounds
    if rounds % 50 == 0:
        tail = [r.random() for _ in range(5000)]
    rounds += 1
    time.sleep(0.02)
`;

const NODE = `
const n = 100000;
const m = new Map();
for (let i = 0; i < n; i++) m.set(i, { id: i, name: 'item' + i, hits: 0, tags: [i % 7, i % 13] });
const buf = new Float64Array(1 << 20);
let x = 1;
const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) / 4294967296);
setInterval(() => {
  for (let k = 0; k < 20000; k++) {
    const id = rnd() < 0.7 ? Math.floor(rnd() * n / 10) : Math.floor(rnd() * n);
    const o = m.get(id);
    o.hits++;
    if (rnd() < 0.05) o.tags = [o.hits, id];
    buf[Math.floor(rnd() * buf.length)] = o.hits;
  }
}, 5);
`;

function sqliteScript(): string {
  const lines = [
    'PRAGMA cache_size = -131072;',
    'CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, v TEXT);',
    'CREATE INDEX tk ON t (k);',
    'WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 200000) INSERT INTO t SELECT i, abs(random()) % 100000, hex(randomblob(40)) FROM c;',
  ];
  for (let s = 0; s < 4000; s++) {
    lines.push(
      `UPDATE t SET v = hex(randomblob(40)), k = abs(random()) % 100000 WHERE id % 997 = ${s % 997};`,
    );
    lines.push(
      `UPDATE t SET v = hex(randomblob(40)) WHERE id BETWEEN ${(s * 37) % 20000} AND ${((s * 37) % 20000) + 200};`,
    );
    lines.push(
      `INSERT INTO t (k, v) SELECT abs(random()) % 100000, hex(randomblob(40)) FROM t WHERE id % 1000 = ${s % 1000};`,
    );
    lines.push(`DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT 150);`);
  }
  return lines.join('\n') + '\n';
}

function cSource(): string {
  const parts = ['#include <stddef.h>'];
  for (let f = 0; f < 3000; f++) {
    parts.push(
      `double f${f}(const double *a, size_t n, double s) { double acc = ${f}.0; for (size_t i = 0; i < n; i++) { acc += a[i] * s + (double)(i % ${(f % 13) + 2}); if (acc > ${f * 3 + 7}.0) acc = acc / ${(f % 5) + 2}.0 - s; } return acc; }`,
    );
  }
  return parts.join('\n') + '\n';
}

interface Program {
  name: string;
  start(): ChildProcess;
  /** The process to record (the child itself unless a sub-process does the work). */
  target(child: ChildProcess): Promise<number>;
}

const own = async (c: ChildProcess): Promise<number> => {
  await sleep(1500);
  return c.pid!;
};

const PROGRAMS: Program[] = [
  {
    name: 'python',
    start: () => spawn('python3', ['-c', PYTHON], { stdio: 'ignore' }),
    target: own,
  },
  {
    name: 'sqlite',
    start: () => {
      const sql = join(work, 'load.sql');
      writeFileSync(sql, sqliteScript());
      return spawn('sh', ['-c', `exec sqlite3 :memory: < ${sql}`], { stdio: 'ignore' });
    },
    target: async (c) => {
      await sleep(2500);
      return c.pid!;
    },
  },
  {
    name: 'node',
    start: () => spawn(process.execPath, ['-e', NODE], { stdio: 'ignore' }),
    target: own,
  },
  {
    name: 'gcc',
    start: () => {
      const src = join(work, 'big.c');
      writeFileSync(src, cSource());
      return spawn('gcc', ['-O2', '-c', src, '-o', join(work, 'big.o')], { stdio: 'ignore' });
    },
    target: async (c) => {
      // gcc runs cc1, which does the compiling: record that one.
      for (let i = 0; i < 50; i++) {
        await sleep(100);
        const r = spawnSync('pgrep', ['-P', String(c.pid), 'cc1'], { encoding: 'utf8' });
        const pid = Number(r.stdout.trim().split('\n')[0]);
        if (pid > 0) {
          await sleep(1000);
          return pid;
        }
      }
      throw new Error('gcc started no cc1 within 5 s');
    },
  },
];

mkdirSync(OUT, { recursive: true });
try {
  for (const p of PROGRAMS.filter((q) => only.length === 0 || only.includes(q.name))) {
    const child = p.start();
    let pid = 0;
    try {
      pid = await p.target(child);
      const raw = join(work, `${p.name}.trace`);
      const r = spawnSync(
        process.execPath,
        [
          join(ROOT, 'bin/precog'),
          'trace',
          'record',
          '--pid',
          String(pid),
          '--interval',
          interval,
          '--duration',
          `${seconds}s`,
          '--out',
          raw,
        ],
        { encoding: 'utf8' },
      );
      if (r.status !== 0) throw new Error(`trace record of ${p.name} (pid ${pid}) failed: ${r.stderr}`);
      const file = join(OUT, `${p.name}.trace.gz`);
      const data = gzipSync(readFileSync(raw), { level: 9 });
      writeFileSync(file, data);
      console.log(
        `${p.name} (pid ${pid}):\n${r.stdout.trim()}\n  -> ${file} (${data.length} bytes gzipped)\n`,
      );
    } finally {
      child.kill('SIGKILL');
      // A worker the child started (gcc's cc1) would outlive it.
      if (pid > 0 && pid !== child.pid) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
