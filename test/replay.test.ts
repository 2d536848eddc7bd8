/**
 * workloads/replay.py: replays a trace with known structure on this machine, records the replay with precog's
 * recorder and compares the two; checks that it refuses what loadTrace refuses.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { gzipSync } from 'node:zlib';
import { recordTrace } from '../src/cli/actions/trace.ts';
import { LiveProcessMemory } from '../src/memory/live.ts';
import { namedTraces } from '../src/runtime/container.ts';
import { loadTrace, serializeTrace, type Trace } from '../src/memory/trace.ts';

const REPLAY = new URL('../workloads/replay.py', import.meta.url).pathname;
// The interpreter itself, not a wrapper (a pyenv shim takes a third of a second to start, and its PID is not
// the replay's until it execs).
const probe = spawnSync('python3', ['-c', 'import ctypes, hashlib, zlib, sys; print(sys.executable)'], {
  encoding: 'utf8',
});
const PYTHON = probe.stdout?.trim();
const noPython =
  probe.status === 0 && PYTHON
    ? false
    : 'python3 (with ctypes, hashlib and zlib) is not available to run workloads/replay.py';
const notRoot =
  process.getuid?.() === 0 ? false : 'recording the replay reads /proc/PID/mem and pagemap, which needs root';

const dir = mkdtempSync(join(tmpdir(), 'precog-replay-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string, data: string | Buffer): string => {
  const p = join(dir, name);
  writeFileSync(p, data);
  return p;
};
const bit = (bm: Uint8Array, i: number): boolean => (bm[i >>> 3] & (1 << (i & 7))) !== 0;
const range = (from: number, to: number): number[] => Array.from({ length: to - from }, (_, i) => from + i);

/** A trace of `pages` pages: size(page, sample) is the change size of a write, or null for no write. */
function makeTrace(
  pages: number,
  samples: number,
  intervalMs: number,
  size: (page: number, sample: number) => number | null,
): Trace {
  const dirty: Uint8Array[] = [];
  const changes: Uint16Array[] = [];
  for (let s = 0; s < samples; s++) {
    const bm = new Uint8Array((pages + 7) >>> 3);
    const c: number[] = [];
    for (let p = 0; p < pages; p++) {
      const n = size(p, s);
      if (n === null) continue;
      bm[p >>> 3] |= 1 << (p & 7);
      c.push(n);
    }
    dirty.push(bm);
    changes.push(Uint16Array.from(c));
  }
  return {
    pageSize: 4096,
    intervalMs,
    regions: [{ start: '0x7f0000000000', pages, name: 'anon' }],
    pageCount: pages,
    samples,
    dirty,
    accessed: null,
    changes,
    source: 'test',
  };
}

/** A free UDP port (bound, read, released). */
async function freePort(): Promise<number> {
  const s = createSocket('udp4');
  await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve));
  const port = s.address().port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** Sends one datagram to the replay's probe port and resolves with the answer. */
async function ask(port: number): Promise<string> {
  const s = createSocket('udp4');
  try {
    return await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer on UDP ${port} within 2 s`)), 2000);
      s.once('message', (m) => {
        clearTimeout(timer);
        resolve(m.toString());
      });
      s.send('?', port, '127.0.0.1');
    });
  } finally {
    s.close();
  }
}

describe('workloads/replay.py replays a trace live', { skip: noPython || notRoot }, () => {
  // 2048 pages, 10 samples of 200 ms: a hot set written in every sample (whole pages: 0 and 4096), pages with small
  // changes every sample (16 bytes) and in every other sample (100 bytes), a sweep front of 160 pages a sample
  // (2048 bytes each), and two stretches never written.
  const PAGES = 2048;
  const SAMPLES = 10;
  const INTERVAL = 200;
  const size = (p: number, s: number): number | null => {
    if (p < 32) return 0;
    if (p < 64) return 4096;
    if (p < 128) return 16;
    if (p < 192) return s % 2 === 0 ? 100 : null;
    if (p >= 256 && p < 256 + 160 * SAMPLES) return Math.floor((p - 256) / 160) === s ? 2048 : null;
    return null;
  };
  const kind = (p: number): 'whole' | 'small16' | 'even100' | 'sweep' | 'never' =>
    p < 64 ? 'whole' : p < 128 ? 'small16' : p < 192 ? 'even100' : p >= 256 && p < 1856 ? 'sweep' : 'never';

  it("writes the trace's pages at its pace with its change sizes, as precog records it", async (t) => {
    const trace = makeTrace(PAGES, SAMPLES, INTERVAL, size);
    const path = file('known.trace', serializeTrace(trace));
    const port = await freePort();
    const child = spawn(PYTHON, [REPLAY, '--trace', path, '--probe-port', String(port)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    let mem: LiveProcessMemory | null = null;
    try {
      const first = await lines.next();
      assert.ok(!first.done, `replay.py exited: ${stderr}`);
      const m = /^ready ([0-9a-f]+) (\d+)$/.exec(first.value);
      assert.ok(m, `first line: ${first.value}`);
      const addr = parseInt(m[1], 16);
      assert.equal(Number(m[2]), PAGES);
      mem = new LiveProcessMemory(child.pid!, { onUnmapped: 'zero' });
      const base = mem.pageIndexOf(addr);
      assert.ok(base >= 0, 'the buffer is in the layout');
      assert.equal(mem.pageIndexOf(addr + (PAGES - 1) * 4096), base + PAGES - 1, 'the buffer is one mapping');
      const loops = 2;
      const rec = await recordTrace(mem, {
        intervalSeconds: INTERVAL / 1000,
        samples: loops * SAMPLES,
        accessed: false,
        changes: true,
      });
      const r = rec.trace;
      assert.equal(r.samples, loops * SAMPLES);
      // Per page of the buffer: in how many recorded samples it was dirty, and the recorded change sizes.
      const count = new Array<number>(PAGES).fill(0);
      const sizes: number[][] = Array.from({ length: PAGES }, () => []);
      for (let s = 0; s < r.samples; s++) {
        let k = 0;
        for (let p = 0; p < r.pageCount; p++) {
          if (!bit(r.dirty[s], p)) continue;
          const i = p - base;
          if (i >= 0 && i < PAGES) {
            count[i]++;
            sizes[i].push(r.changes![s][k]);
          }
          k++;
        }
      }
      t.diagnostic(
        `tracker ${mem.tracker.kind}; dirty in the buffer per recorded sample: ` +
          r.dirty.map((d) => range(base, base + PAGES).filter((p) => bit(d, p)).length).join(' '),
      );
      const union = range(0, PAGES).filter((p) => kind(p) !== 'never');
      assert.deepEqual(
        range(0, PAGES).filter((p) => count[p] > 0),
        union,
        "the pages dirtied over the recording are the trace's",
      );
      // Per-page dirty counts follow the trace's (dirty samples per loop).
      const expected = range(0, PAGES).map(
        (p) => range(0, SAMPLES).filter((s) => size(p, s) !== null).length,
      );
      const corr = pearson(expected, count);
      t.diagnostic(
        `correlation of per-page dirty counts with the trace's: ${corr.toFixed(3)} (load ${loadavg()[0]})`,
      );
      assert.ok(corr > 0.9, `correlation ${corr}`);
      // A page written every interval is dirty in (nearly) every recorded sample. Near the recorder's boundary
      // its writes fall on either side as scans and writes jitter: missed in one sample, two writes in the next.
      // A page written between a sample's scan and the reading of its change sizes is sized with that sample
      // (two writes: a larger change) and is dirty again in the next with a change of 1 byte (already sized).
      // Where a change has a known size, the writes seen (one per change of the size, two per larger one, none
      // for the 1-byte marks) add up to about one per recorded sample.
      const want = { whole: 4096, small16: 16, even100: 100, sweep: 2048 } as const;
      const writes = (p: number) =>
        sizes[p].reduce((a, n) => a + (n === 1 ? 0 : n === want.small16 ? 1 : 2), 0);
      const whole = union.filter((p) => kind(p) === 'whole');
      const mean = whole.reduce((a, p) => a + count[p], 0) / whole.length;
      t.diagnostic(
        `pages written every sample in whole: dirty in ${mean.toFixed(1)} of ${r.samples} samples on average`,
      );
      assert.ok(
        mean >= 0.8 * r.samples,
        `whole pages written every sample: dirty in ${mean} samples on average`,
      );
      for (let p = 0; p < PAGES; p++) {
        const c = count[p];
        const k = kind(p);
        if (k === 'whole')
          assert.ok(c >= r.samples / 2 - 2, `page ${p} (every sample): dirty in ${c} of ${r.samples}`);
        if (k === 'small16') {
          const w = writes(p);
          assert.ok(
            w >= 0.85 * r.samples && w <= r.samples + 3,
            `page ${p} (every sample): ${w} writes seen in ${r.samples} samples`,
          );
        }
        if (k === 'even100')
          assert.ok(c >= 0.3 * r.samples && c <= 0.7 * r.samples, `page ${p} (every other sample): ${c}`);
        if (k === 'sweep') assert.ok(c >= 1 && c <= loops + 1, `page ${p} (once a loop): ${c}`);
      }
      // Change sizes: one write changes exactly its recorded size, never less; two writes of a page in one
      // recorded sample change more (and, for whole pages, the same 4096); the 1-byte marks of writes already
      // sized are few.
      for (const k of ['whole', 'small16', 'even100', 'sweep'] as const) {
        const every = union.filter((p) => kind(p) === k).flatMap((p) => sizes[p]);
        const marks = every.filter((n) => n === 1).length;
        assert.ok(marks <= 0.25 * every.length, `${k}: ${marks} of ${every.length} changes are marks`);
        const all = every.filter((n) => n !== 1);
        const exact = all.filter((n) => n === want[k]).length / all.length;
        t.diagnostic(
          `${k}: ${all.length} recorded changes, ${(exact * 100).toFixed(1)}% of ${want[k]} bytes`,
        );
        assert.ok(exact >= 0.75, `${k}: ${exact} of the changes are ${want[k]} bytes`);
        for (const n of all) assert.ok(n >= want[k], `${k}: a change of ${n} bytes`);
      }
      // The probe answers "<pages written>\n". The writes are spread over each interval (about 1.6 a
      // millisecond here), not made at once when it starts: asked every 20 ms, the count grows nearly every time.
      const answers: string[] = [];
      for (let i = 0; i < 10; i++) {
        answers.push(await ask(port));
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      for (const a of answers) assert.match(a, /^\d+\n$/);
      const values = answers.map(Number);
      const grew = values.slice(1).filter((v, i) => v > values[i]).length;
      t.diagnostic(`probe answers: ${values.join(' ')}`);
      assert.ok(grew >= 6, `the count grew in ${grew} of 9 steps of 20 ms: ${values.join(' ')}`);
    } finally {
      mem?.close();
      child.kill('SIGTERM');
      await exited;
    }
  });

  it('plays --loops N times and exits, writing each dirty page once a sample', () => {
    const trace = makeTrace(256, 5, 20, (p, s) => (p % 5 === s ? 8 : p < 16 ? 0 : null));
    const path = file('loops.trace.gz', gzipSync(serializeTrace(trace)));
    const start = performance.now();
    const r = spawnSync(PYTHON, [REPLAY, '--trace', path, '--loops', '3', '--probe-port', '0'], {
      encoding: 'utf8',
      timeout: 10_000,
    });
    const ms = performance.now() - start;
    assert.equal(r.status, 0, r.stderr);
    const writes = 3 * trace.dirty.reduce((a, d) => a + range(0, 256).filter((p) => bit(d, p)).length, 0);
    assert.match(r.stdout, /^ready [0-9a-f]+ 256\n/);
    assert.match(r.stdout, new RegExp(`3 loops, ${writes} pages written`));
    assert.ok(ms >= 3 * 5 * 20, `3 loops of 5 samples of 20 ms took ${ms.toFixed(0)} ms`);
  });
});

describe('workloads/replay.py refuses what loadTrace refuses', { skip: noPython }, () => {
  const check = (path: string, ...extra: string[]) =>
    spawnSync(PYTHON, [REPLAY, '--check', '--trace', path, ...extra], { encoding: 'utf8' });
  const good = serializeTrace(makeTrace(20, 3, 100, (p, s) => (p % 3 === s ? 16 : null)));
  const text = good.toString('latin1');
  const nl = text.indexOf('\n', 15);
  const withHeader = (h: string): Buffer =>
    Buffer.concat([Buffer.from(`PRECOG-TRACE 1\n${h}\n`), good.subarray(nl + 1)]);
  const header = JSON.parse(text.slice(15, nl)) as Record<string, unknown>;
  const big = Buffer.from(good);
  // The first change size of sample 0 (after its 3-byte bitmap) becomes 4097.
  big.writeUInt16LE(4097, nl + 1 + 3);

  const cases: [string, Buffer | string, boolean][] = [
    ['a good trace', good, true],
    ['a good trace, gzipped', gzipSync(good), true],
    [
      'with accessed bitmaps',
      serializeTrace({
        ...makeTrace(9, 2, 50, () => 4096),
        accessed: [new Uint8Array(2), new Uint8Array(2)],
      }),
      true,
    ],
    [
      'without change sizes',
      serializeTrace({ ...makeTrace(9, 2, 50, (p) => (p ? 1 : null)), changes: null }),
      true,
    ],
    ['a truncated body', good.subarray(0, good.length - 1), false],
    ['a byte too many', Buffer.concat([good, Buffer.of(0)]), false],
    ['a change larger than a page', big, false],
    ['changes: null', withHeader(JSON.stringify({ ...header, changes: null })), false],
    ['no accessed field', withHeader(JSON.stringify({ ...header, accessed: undefined })), false],
    ['an interval under 1 ms', withHeader(JSON.stringify({ ...header, intervalMs: 0.5 })), false],
    [
      'NaN in the header',
      withHeader(JSON.stringify(header).replace('"intervalMs":100', '"intervalMs":NaN')),
      false,
    ],
    ['a header that is not JSON', withHeader('{pageSize: 4096'), false],
    ['no header line', 'PRECOG-TRACE 1\n{"pageSize":4096', false],
    ['a corrupt gzip file', gzipSync(good).subarray(0, 30), false],
    ['another format', 'hello\n', false],
  ];
  for (const [what, data, ok] of cases) {
    it(`${ok ? 'accepts' : 'refuses'} ${what}, as loadTrace does`, () => {
      const path = file(`case-${what.replace(/\W+/g, '-')}`, data);
      let loads = true;
      try {
        loadTrace(path);
      } catch {
        loads = false;
      }
      assert.equal(loads, ok, 'loadTrace');
      const r = check(path);
      assert.equal(r.status, ok ? 0 : 2, `${r.stdout}${r.stderr}`);
      if (!ok) assert.match(r.stderr, /^replay: error: .*trace/);
    });
  }

  it('refuses the public JSON format, naming the one it reads', () => {
    const r = check(file('public.json', '{"1000": {"isDirtyList": [1, 0]}}'));
    assert.equal(r.status, 2);
    assert.match(r.stderr, /PRECOG-TRACE 1.*public JSON format/);
  });

  it('refuses a trace of more memory than --max-mib', () => {
    const path = file(
      'large.trace',
      serializeTrace({
        ...makeTrace(8, 1, 100, () => null),
        regions: [{ start: '0x0', pages: 262144 }],
        pageCount: 262144,
        dirty: [new Uint8Array(32768)],
      }),
    );
    assert.equal(loadTrace(path).pageCount, 262144);
    const r = check(path, '--max-mib', '512');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /262144 pages \(1024\.0 MiB\), more than --max-mib 512/);
    assert.equal(check(path).status, 0, 'the default (4096 MiB) takes it');
  });

  it('exits 2 on usage errors', () => {
    const path = file('usage.trace', good);
    for (const args of [
      ['--check'],
      ['--trace', path, '--interval', 'fast'],
      ['--trace', path, '--interval', '0.5ms'],
      ['--trace', path, '--loops', '-1'],
      ['--trace', join(dir, 'missing.trace')],
    ]) {
      const r = spawnSync(PYTHON, [REPLAY, ...args], { encoding: 'utf8', timeout: 5000 });
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /error/);
    }
  });
});

function pearson(x: number[], y: number[]): number {
  const n = x.length;
  const mx = x.reduce((a, b) => a + b, 0) / n;
  const my = y.reduce((a, b) => a + b, 0) / n;
  let sxy = 0;
  let sxx = 0;
  let syy = 0;
  for (let i = 0; i < n; i++) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) ** 2;
    syy += (y[i] - my) ** 2;
  }
  return sxy / Math.sqrt(sxx * syy);
}

describe('a container gets the traces its command names, and only those', () => {
  it('copies a named trace of traces/, never a path outside it or one that does not exist', () => {
    const at = (rel: string) => `/opt/precog/traces/${rel}`;
    assert.deepEqual(namedTraces(['python3', 'replay.py', '--trace', at('live/python-100ms.trace.gz')]), [
      'live/python-100ms.trace.gz',
    ]);
    assert.deepEqual(namedTraces([`--trace=${at('live/gcc-500ms.trace.gz')}`]), ['live/gcc-500ms.trace.gz']);
    assert.deepEqual(namedTraces(['--trace', at('../package.json')]), [], 'outside traces/');
    assert.deepEqual(namedTraces(['--trace', at('live/nope.trace.gz')]), [], 'no such file');
    assert.deepEqual(namedTraces(['--trace', at('live')]), [], 'a directory');
    assert.deepEqual(namedTraces(['python3', '/opt/precog/workloads/memchange.py']), []);
  });
});
