/**
 * Records dirty-page traces of real programs on this machine with `precog trace record` (root: it reads
 * /proc/PID/mem), for training and evaluating the predictors on something else than the emulator. Each program
 * runs under its own load:
 *   python    a Python list of 150,000 small records, 2,000 updates every 20 ms, 70 % of them to a hot tenth
 *   sqlite    sqlite3 on an in-memory database of 200,000 rows under a stream of UPDATE/INSERT/DELETE statements
 *   node      a Node.js Map of 100,000 objects with a hot subset, and typed-array writes (the V8 heap, with its GC)
 *   gcc       cc1 compiling a generated C file of 6,000 functions at -O2 (the compiler's own heap)
 *   xz        xz -6 compressing a stream of base64 text (its dictionary and match finder)
 *   postgres  a PostgreSQL backend serving pgbench: TPC-B-like transactions and, one in ten, a report that sorts
 *             200,000 rows in its own memory (its private memory; shared buffers are a shared mapping, which
 *             precog's tracker does not follow)
 *   java      a JVM (OpenJDK, G1, 64 MiB heap) running a key-value service loop: a HashMap of 100,000 entries,
 *             updates with a hot subset, fresh values (garbage) and periodic bulk replacement
 *   numpy     a scientific kernel: Jacobi iterations of a 1,000 x 1,000 grid and a conjugate-gradient solve
 *   ffmpeg    ffmpeg encoding a generated 640x360 test video to H.264 (libx264, one thread)
 *   redis     Debian's redis-server (from the test hosts' root filesystem, run chrooted on the loopback) under
 *             redis-benchmark's SET/GET/INCR/LPUSH/HSET mix over 100,000 keys
 * Each program is started, given time to set up, recorded for --seconds at each of --intervals (a fresh start per
 * interval), then killed. Traces, with change sizes, go gzipped to traces/live/NAME-INTERVAL.trace.gz.
 * Programs whose tools are missing are skipped with the Debian package to install.
 *
 *   sudo npm run traces:live [-- --only python,sqlite] [--intervals 100ms,500ms] [--seconds 8,24]
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { rootfsDir } from '../src/runtime/rootfs.ts';

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const intervals = flag('--intervals', '100ms,500ms').split(',');
const seconds = flag('--seconds', '8,24').split(',').map(Number);
const only = flag('--only', '')
  .split(',')
  .filter((s) => s);
if (seconds.length !== intervals.length || !seconds.every((x) => x > 0)) {
  console.error(
    '--seconds needs one number > 0 per interval of --intervals (e.g. --intervals 100ms,500ms --seconds 8,24)',
  );
  process.exit(2);
}
if (process.getuid?.() !== 0) {
  console.error('record-live-traces needs root (precog trace record reads /proc/PID/mem of other processes)');
  process.exit(2);
}

const ROOT = new URL('..', import.meta.url).pathname;
const OUT = join(ROOT, 'traces/live');
const work = mkdtempSync(join(tmpdir(), 'precog-live-traces-'));
chmodSync(work, 0o755); // postgres's cluster lives in it and runs as the postgres user
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

const JAVA = `
import java.util.*;
public class Service {
  public static void main(String[] a) throws Exception {
    int n = 100000;
    HashMap<Integer, long[]> m = new HashMap<>();
    Random r = new Random(1);
    for (int i = 0; i < n; i++) m.put(i, new long[8]);
    long round = 0;
    while (true) {
      for (int k = 0; k < 20000; k++) {
        int id = r.nextDouble() < 0.7 ? r.nextInt(n / 10) : r.nextInt(n);
        long[] v = m.get(id);
        v[r.nextInt(8)] = round;
        if (r.nextDouble() < 0.1) m.put(id, new long[8]);
      }
      if (round % 200 == 0) for (int i = 0; i < n / 20; i++) m.put(r.nextInt(n), new long[16]);
      StringBuilder sb = new StringBuilder();
      for (int k = 0; k < 500; k++) sb.append(k).append(',');
      if (sb.length() == 0) System.out.println();
      round++;
      Thread.sleep(5);
    }
  }
}
`;

const NUMPY = `
import numpy as np, time
n = 1000
u = np.zeros((n, n)); u[0, :] = 1.0
f = np.random.default_rng(1).random((n, n)) * 1e-3
k = 0
while True:
    for _ in range(5):
        u[1:-1, 1:-1] = 0.25 * (u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:] - f[1:-1, 1:-1])
    if k % 20 == 0:
        m = 400
        A = np.random.default_rng(k).random((m, m)); A = A @ A.T + m * np.eye(m)
        b = np.ones(m); x = np.zeros(m); r = b - A @ x; p = r.copy(); rs = r @ r
        for _ in range(50):
            Ap = A @ p; al = rs / (p @ Ap); x += al * p; r -= al * Ap
            rn = r @ r; p = r + (rn / rs) * p; rs = rn
    k += 1
    time.sleep(0.01)
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
  for (let f = 0; f < 6000; f++) {
    parts.push(
      `double f${f}(const double *a, size_t n, double s) { double acc = ${f}.0; for (size_t i = 0; i < n; i++) { acc += a[i] * s + (double)(i % ${(f % 13) + 2}); if (acc > ${f * 3 + 7}.0) acc = acc / ${(f % 5) + 2}.0 - s; } return acc; }`,
    );
  }
  return parts.join('\n') + '\n';
}

interface Program {
  name: string;
  /** Tools it needs on the PATH, as "tool:Debian package". */
  needs?: string[];
  /** What else it lacks here, as "what (how to get it)", or null. */
  lacks?(): string | null;
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
  {
    name: 'xz',
    needs: ['xz:xz-utils', 'base64:coreutils'],
    start: () =>
      spawn('sh', ['-c', 'head -c 2000M /dev/urandom | base64 | exec xz -6 -T1 > /dev/null'], {
        stdio: 'ignore',
      }),
    target: (c) => childNamed(c, 'xz', 2000),
  },
  {
    name: 'postgres',
    needs: ['pgbench:postgresql-client'],
    lacks: () => (pgBin() ? null : 'initdb (install postgresql)'),
    start: startPostgres,
    target: async () => {
      // pgbench -c 1: one backend serves it; it is the postmaster's child that says "[local]".
      for (let i = 0; i < 100; i++) {
        await sleep(200);
        const r = spawnSync('ps', ['-o', 'pid=,args=', '--ppid', String(postmaster)], { encoding: 'utf8' });
        const line = r.stdout.split('\n').find((l) => l.includes('[local]') && !l.includes('idle'));
        if (line) {
          await sleep(5000); // a few reports have grown its heap
          return Number(line.trim().split(/\s+/)[0]);
        }
      }
      throw new Error('no postgres backend served pgbench within 20 s');
    },
  },
  {
    name: 'java',
    needs: ['java:openjdk-17-jdk-headless'],
    start: () => {
      const src = join(work, 'Service.java');
      writeFileSync(src, JAVA);
      return spawn(
        'java',
        ['-Xms64m', '-Xmx64m', '-XX:+UseG1GC', '-XX:ReservedCodeCacheSize=32m', '-Xss512k', src],
        { stdio: 'ignore' },
      );
    },
    target: async (c) => {
      await sleep(4000);
      return c.pid!;
    },
  },
  {
    name: 'numpy',
    needs: ['python3:python3-numpy'],
    lacks: () =>
      spawnSync('python3', ['-c', 'import numpy']).status === 0
        ? null
        : 'numpy for python3 (install python3-numpy)',
    start: () => spawn('python3', ['-c', NUMPY], { stdio: 'ignore' }),
    target: async (c) => {
      await sleep(2500);
      return c.pid!;
    },
  },
  {
    name: 'ffmpeg',
    needs: ['ffmpeg:ffmpeg'],
    start: () =>
      spawn(
        'ffmpeg',
        [
          '-nostdin',
          '-loglevel',
          'error',
          '-f',
          'lavfi',
          '-i',
          'testsrc2=size=640x360:rate=30',
          '-t',
          '600',
          '-c:v',
          'libx264',
          '-preset',
          'medium',
          '-threads',
          '1',
          '-f',
          'null',
          '-',
        ],
        { stdio: 'ignore' },
      ),
    target: async (c) => {
      await sleep(2500);
      return c.pid!;
    },
  },
  {
    name: 'redis',
    lacks: () =>
      existsSync(join(rootfsDir(), 'usr/bin/redis-server'))
        ? null
        : `redis-server in ${rootfsDir()} (run precog testbed up once to build the test hosts' root filesystem)`,
    start: startRedis,
    target: async (c) => {
      await sleep(1000);
      return c.pid!;
    },
  },
];

/** The first child of c's process named `name` (a shell pipeline's worker), waited for up to 5 s. */
async function childNamed(c: ChildProcess, name: string, settleMs: number): Promise<number> {
  for (let i = 0; i < 50; i++) {
    await sleep(100);
    const r = spawnSync('pgrep', ['-P', String(c.pid), '-x', name], { encoding: 'utf8' });
    const pid = Number(r.stdout.trim().split('\n')[0]);
    if (pid > 0) {
      await sleep(settleMs);
      return pid;
    }
  }
  throw new Error(`${name} did not start within 5 s`);
}

let postmaster = 0;
let pgData = '';

/** A throwaway cluster in the work directory (as the postgres user, on a Unix socket only), then pgbench -c 1. */
function startPostgres(): ChildProcess {
  pgData = mkdtempSync(join(work, 'pg-'));
  chmodSync(pgData, 0o755);
  spawnSync('chown', ['postgres:postgres', pgData]);
  const asPg = (cmd: string): void => {
    const r = spawnSync('su', ['postgres', '-s', '/bin/sh', '-c', cmd], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`);
  };
  const bin = pgBin();
  asPg(`${bin}/initdb -D ${pgData}/data -A trust >/dev/null`);
  // glibc keeps the backends' sort memory in the heap once grown (no mmap/munmap per report), so that the layout
  // the recording takes at its start holds it.
  asPg(
    `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296 ${bin}/pg_ctl -D ${pgData}/data -w -l ${pgData}/log -o "-k ${pgData} -c listen_addresses='' -p 54329 -c shared_buffers=64MB" start >/dev/null`,
  );
  postmaster = Number(readFileSync(join(pgData, 'data/postmaster.pid'), 'utf8').split('\n')[0]);
  asPg(`pgbench -h ${pgData} -p 54329 -i -s 10 postgres >/dev/null 2>&1`);
  // TPC-B-like transactions, and one in ten a report that sorts in the backend's own memory (work_mem).
  const report = join(pgData, 'report.sql');
  writeFileSync(
    report,
    "SET work_mem = '32MB';\nSELECT bid, sum(abalance), count(*) FROM (SELECT * FROM pgbench_accounts ORDER BY abalance DESC, aid LIMIT 200000) a GROUP BY bid;\n",
  );
  spawnSync('chown', ['postgres:postgres', report]);
  return spawn(
    'su',
    [
      'postgres',
      '-s',
      '/bin/sh',
      '-c',
      `exec pgbench -h ${pgData} -p 54329 -c 1 -T 600 -b tpcb-like@9 -f ${report}@1 postgres`,
    ],
    {
      stdio: 'ignore',
    },
  );
}

function stopPostgres(): void {
  if (!pgData) return;
  spawnSync(
    'su',
    ['postgres', '-s', '/bin/sh', '-c', `${pgBin()}/pg_ctl -D ${pgData}/data -m immediate stop`],
    {
      stdio: 'ignore',
    },
  );
  pgData = '';
}

function pgBin(): string {
  const r = spawnSync('sh', ['-c', 'ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1'], {
    encoding: 'utf8',
  });
  return r.stdout.trim();
}

let redisBench: ChildProcess | null = null;

/**
 * Debian's redis-server from the test hosts' root filesystem (built by `precog testbed up`), chrooted, on the
 * loopback only, with no persistence; redis-benchmark from the same tree drives it until killed.
 */
function startRedis(): ChildProcess {
  const root = rootfsDir();
  const server = spawn(
    'chroot',
    [
      root,
      'redis-server',
      '--bind',
      '127.0.0.1',
      '--port',
      '6391',
      '--save',
      '',
      '--appendonly',
      'no',
      '--logfile',
      '',
    ],
    { stdio: 'ignore' },
  );
  for (let i = 0; i < 50; i++) {
    const r = spawnSync('chroot', [root, 'redis-cli', '-p', '6391', 'ping'], { encoding: 'utf8' });
    if (r.stdout.includes('PONG')) break;
    spawnSync('sleep', ['0.1']);
  }
  redisBench = spawn(
    'chroot',
    [
      root,
      'sh',
      '-c',
      'while :; do redis-benchmark -p 6391 -q -n 200000 -r 100000 -d 64 -t set,get,incr,lpush,hset >/dev/null; done',
    ],
    { stdio: 'ignore' },
  );
  return server;
}

/** The first of a program's needed tools that is missing, as "tool (install PACKAGE)", or null. */
function missing(p: Program): string | null {
  for (const need of p.needs ?? []) {
    const [tool, pkg] = need.split(':');
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return `${tool} (install ${pkg})`;
  }
  return p.lacks?.() ?? null;
}

mkdirSync(OUT, { recursive: true });
const skipped: string[] = [];
try {
  for (const p of PROGRAMS.filter((q) => only.length === 0 || only.includes(q.name))) {
    const lack = missing(p);
    if (lack) {
      skipped.push(`${p.name}: needs ${lack}`);
      console.log(`${p.name}: skipped, needs ${lack}\n`);
      continue;
    }
    for (let k = 0; k < intervals.length; k++) await recordOne(p, intervals[k], seconds[k]);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
if (skipped.length > 0) console.log(`skipped: ${skipped.join('; ')}`);

async function recordOne(p: Program, interval: string, secs: number): Promise<void> {
  const child = p.start();
  let pid = 0;
  try {
    pid = await p.target(child);
    const raw = join(work, `${p.name}-${interval}.trace`);
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
        `${secs}s`,
        '--out',
        raw,
      ],
      { encoding: 'utf8' },
    );
    if (r.status !== 0) throw new Error(`trace record of ${p.name} (pid ${pid}) failed: ${r.stderr}`);
    const file = join(OUT, `${p.name}-${interval}.trace.gz`);
    const data = gzipSync(readFileSync(raw), { level: 9 });
    writeFileSync(file, data);
    rmSync(raw);
    console.log(
      `${p.name} at ${interval} (pid ${pid}, load ${loadavg()[0].toFixed(2)}):\n${r.stdout.trim()}\n  -> ${file} (${data.length} bytes gzipped)\n`,
    );
  } finally {
    child.kill('SIGKILL');
    redisBench?.kill('SIGKILL');
    redisBench = null;
    if (p.name === 'postgres') stopPostgres();
    // A worker the child started (gcc's cc1, xz under sh) would outlive it.
    if (pid > 0 && pid !== child.pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await sleep(300);
  }
}
