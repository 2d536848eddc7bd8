/**
 * Writes the training and evaluation traces of the attention model (docs/u2c.md) under traces/u2c/:
 *
 *   npm run traces:u2c -- emulated    emulator workloads replayed on the workload clock (deterministic, seconds)
 *   npm run traces:u2c -- live        real programs on this machine (python, sqlite3, gcc's cc1, xz), each recorded
 *                                     with `precog trace record --pid P` (root: accessed bits); needs about 2 min
 *
 * A live trace comes with NAME.system.json: the system features (src/predict/features.ts) sampled from /proc every
 * interval while it was recorded, aligned on the recording's end (within one interval). Emulated traces have none:
 * training emulates them from the dirty counts.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { ContentPool } from '../src/memory/content.ts';
import { serializeTrace, type Trace } from '../src/memory/trace.ts';
import { parseWorkload } from '../src/memory/workloads.ts';
import { SYSTEM_FEATURES, SystemSampler } from '../src/predict/features.ts';

export const U2C_TRACES = new URL('../traces/u2c/', import.meta.url).pathname;
const PRECOG = new URL('../bin/precog', import.meta.url).pathname;

/** Sidecar of a live trace: SYSTEM_FEATURES per sample (dirty-share and dirty-rate left 0: the trace has them). */
export interface SystemSidecar {
  features: string[];
  intervalMs: number;
  samples: number[][];
}

export function sidecarPath(tracePath: string): string {
  return tracePath.replace(/\.trace(\.gz)?$/, '.system.json');
}

/** Emulated workloads: memory, workload spec, sample interval and samples. */
const EMULATED: { name: string; spec: string; memory: number; intervalMs: number; samples: number }[] = [
  { name: 'emu-memchange-high-seq', spec: 'memchange:high', memory: 64 << 20, intervalMs: 500, samples: 60 },
  {
    name: 'emu-memchange-low-seq',
    spec: 'memchange:low:buffer=8MiB',
    memory: 64 << 20,
    intervalMs: 500,
    samples: 60,
  },
  {
    name: 'emu-memchange-high-random',
    spec: 'memchange:high:pattern=random',
    memory: 64 << 20,
    intervalMs: 500,
    samples: 60,
  },
  {
    name: 'emu-memchange-hotspot',
    spec: 'memchange:rate=6MB/s:pattern=hotspot',
    memory: 64 << 20,
    intervalMs: 500,
    samples: 60,
  },
  { name: 'emu-hotcold-1', spec: 'hotcold:skew=1', memory: 64 << 20, intervalMs: 500, samples: 60 },
  {
    name: 'emu-hotcold-1.5',
    spec: 'hotcold:rate=8MB/s:skew=1.5',
    memory: 64 << 20,
    intervalMs: 500,
    samples: 60,
  },
];

function emulatedTrace(
  spec: string,
  memory: number,
  intervalMs: number,
  samples: number,
  seed: number,
): Trace {
  const plan = parseWorkload(spec, memory);
  const { pageSize, pageCount, regions } = plan.layout;
  const w = plan.create(new ContentPool(seed, pageSize), seed);
  const mem = Buffer.alloc(pageCount * pageSize);
  const bytes = (pageCount + 7) >>> 3;
  const dirty: Uint8Array[] = [];
  const accessed: Uint8Array[] = [];
  for (let s = 0; s < samples; s++) {
    const d = new Uint8Array(bytes);
    const a = new Uint8Array(bytes);
    const end = ((s + 1) * intervalMs) / 1000;
    while (w.time < end) {
      const p = w.page;
      a[p >>> 3] |= 1 << (p & 7);
      if (w.write) d[p >>> 3] |= 1 << (p & 7);
      w.apply(mem);
    }
    dirty.push(d);
    accessed.push(a);
  }
  return { pageSize, intervalMs, regions, pageCount, samples, dirty, accessed, source: spec };
}

function writeEmulated(): void {
  mkdirSync(U2C_TRACES, { recursive: true });
  EMULATED.forEach((e, i) => {
    const t = emulatedTrace(e.spec, e.memory, e.intervalMs, e.samples, 1000 + i);
    const out = join(U2C_TRACES, `${e.name}.trace.gz`);
    writeFileSync(out, gzipSync(serializeTrace(t), { level: 9 }));
    const per = t.dirty.map((d) => d.reduce((n, b) => n + popcount8(b), 0));
    console.log(
      `${out}: ${e.spec}, ${t.pageCount} pages x ${t.samples} samples, dirty/sample median ${median(per)}`,
    );
  });
}

function popcount8(b: number): number {
  let n = 0;
  for (; b; b &= b - 1) n++;
  return n;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? 0;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Live programs: how to start one in dir, and which process to record (the child doing the work). */
interface LiveProgram {
  name: string;
  setup?: (dir: string) => void;
  start: (dir: string) => ChildProcess;
  /** The pid to record, given the started child (gcc's work happens in its cc1 child). */
  target?: (child: ChildProcess) => number;
  warmupMs: number;
}

const PYTHON_CHURN = `
import random, time
random.seed(7)
rows = [{"id": i, "v": 0, "s": "x" * 64} for i in range(150000)]
hot = list(range(0, 150000, 37))
log = []
t0 = time.time()
while time.time() - t0 < 60:
    for _ in range(20000):
        r = rows[random.choice(hot)]
        r["v"] += 1
    k = random.randrange(150000)
    for i in range(k, min(k + 3000, 150000)):
        rows[i]["s"] = "y" * (64 + (rows[i]["v"] & 7))
    log.append([random.random() for _ in range(200)])
    if len(log) > 400:
        del log[:200]
    time.sleep(0.01)
`;

function sqliteScript(): string {
  const lines = [
    'PRAGMA cache_size = -65536;',
    'CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER, b BLOB);',
    'WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 200000) INSERT INTO t SELECT i, 0, randomblob(180) FROM c;',
    'CREATE INDEX tv ON t(v);',
  ];
  for (let i = 0; i < 4000; i++) {
    lines.push(
      `UPDATE t SET v = v + 1, b = randomblob(180) WHERE id IN (SELECT abs(random()) % 200000 FROM t LIMIT ${i % 5 === 0 ? 4000 : 500});`,
    );
    if (i % 10 === 0) lines.push(`SELECT count(*), sum(v) FROM t WHERE v > ${i % 7};`);
  }
  return lines.join('\n') + '\n';
}

function bigC(): string {
  const parts = ['#include <string.h>'];
  for (let i = 0; i < 2500; i++) {
    parts.push(`static int tab${i}[64];
int f${i}(int x, const char *s) {
  int acc = 0;
  for (int j = 0; j < 64; j++) { tab${i}[j] = (x * ${i + 3} + j) ^ (int)strlen(s); acc += tab${i}[j] % ${(i % 13) + 2}; }
  switch (x & 7) { case 0: acc += ${i}; break; case 1: acc -= ${i}; break; case 2: acc *= 3; break; default: acc ^= x; }
  return acc + (x > ${i} ? f${i > 0 ? i - 1 : 0}(x - 1, s) : 0);
}`);
  }
  return parts.join('\n') + '\n';
}

const LIVE: LiveProgram[] = [
  {
    name: 'live-python',
    setup: (dir) => writeFileSync(join(dir, 'churn.py'), PYTHON_CHURN),
    start: (dir) => spawn('python3', [join(dir, 'churn.py')], { stdio: 'ignore' }),
    warmupMs: 3000,
  },
  {
    name: 'live-sqlite',
    setup: (dir) => writeFileSync(join(dir, 'load.sql'), sqliteScript()),
    start: (dir) =>
      spawn('sh', ['-c', `exec sqlite3 :memory: < ${join(dir, 'load.sql')} > /dev/null`], {
        stdio: 'ignore',
      }),
    warmupMs: 2500,
  },
  {
    name: 'live-gcc',
    setup: (dir) => writeFileSync(join(dir, 'big.c'), bigC()),
    start: (dir) =>
      spawn('gcc', ['-O2', '-c', join(dir, 'big.c'), '-o', join(dir, 'big.o')], { stdio: 'ignore' }),
    target: (child) => {
      const r = spawnSync('pgrep', ['-P', String(child.pid), 'cc1']);
      const pid = Number(r.stdout.toString().trim().split('\n')[0]);
      if (!(pid > 0)) throw new Error('gcc has no cc1 child (did the compile end already?)');
      return pid;
    },
    warmupMs: 1500,
  },
  {
    name: 'live-xz',
    setup: (dir) => {
      // Semi-compressible input: random words from a small vocabulary.
      const words = Array.from({ length: 5000 }, (_, i) => `w${(i * 2654435761) % 100003}`);
      const chunks: string[] = [];
      let x = 1;
      for (let i = 0; i < 6_000_000; i++) {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        chunks.push(words[x % words.length]);
      }
      writeFileSync(join(dir, 'words.txt'), chunks.join(' '));
    },
    start: (dir) =>
      spawn('sh', ['-c', `exec xz -6 -T1 -c ${join(dir, 'words.txt')} > /dev/null`], { stdio: 'ignore' }),
    warmupMs: 1500,
  },
];

async function recordLive(seconds: number, intervalMs: number, only: string[]): Promise<void> {
  mkdirSync(U2C_TRACES, { recursive: true });
  for (const prog of LIVE.filter((p) => only.length === 0 || only.includes(p.name))) {
    const dir = mkdtempSync(join(tmpdir(), 'precog-u2c-'));
    let child: ChildProcess | null = null;
    try {
      prog.setup?.(dir);
      child = prog.start(dir);
      await sleep(prog.warmupMs);
      if (child.exitCode !== null) throw new Error(`${prog.name} exited during warm-up (${child.exitCode})`);
      const pid = prog.target ? prog.target(child) : child.pid!;
      const raw = join(dir, 'trace');
      const sampler = new SystemSampler();
      const system: number[][] = [];
      const tick = setInterval(() => system.push(Array.from(sampler.sample())), intervalMs);
      const rec = spawnAsync(PRECOG, [
        'trace',
        'record',
        '--pid',
        String(pid),
        '--interval',
        `${intervalMs}ms`,
        '--duration',
        `${seconds}s`,
        '--out',
        raw,
        '--json',
      ]);
      const summary = await rec;
      clearInterval(tick);
      const info = JSON.parse(summary) as { samples?: number; accessed?: unknown };
      const trace = readFileSync(raw);
      const out = join(U2C_TRACES, `${prog.name}.trace.gz`);
      writeFileSync(out, gzipSync(trace, { level: 9 }));
      const header = JSON.parse(trace.subarray(15, trace.indexOf(10, 15)).toString()) as { samples: number };
      const sidecar: SystemSidecar = {
        features: [...SYSTEM_FEATURES],
        intervalMs,
        samples: system.slice(-header.samples).map((v) => v.map((x) => Math.round(x * 1e4) / 1e4)),
      };
      writeFileSync(sidecarPath(out), JSON.stringify(sidecar) + '\n');
      console.log(
        `${out}: ${prog.name} pid ${pid}, ${header.samples} samples, ${summary.length > 300 ? JSON.stringify(info).slice(0, 300) : summary.trim()}`,
      );
    } finally {
      if (child && child.exitCode === null) child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  }
}

function spawnAsync(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (b: Buffer) => (out += b.toString()));
    c.stderr.on('data', (b: Buffer) => (err += b.toString()));
    c.on('close', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')}: exit ${code}: ${err.trim()}`)),
    );
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [what = '', ...rest] = process.argv.slice(2);
  if (what === 'emulated') writeEmulated();
  else if (what === 'live') {
    if (process.getuid?.() !== 0)
      console.error('note: not root, so no accessed bits and maybe no /proc/PID/mem of others');
    await recordLive(12, 200, rest);
  } else {
    console.error('usage: npm run traces:u2c -- emulated | live [live-python live-sqlite live-gcc live-xz]');
    process.exit(2);
  }
}
