import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CommanderError } from 'commander';
import { traceCommand } from '../src/cli/trace.ts';
import {
  SoftDirtyTracker,
  probeAccessedBits,
  probeSoftDirty,
  type Span,
  type TrackerIO,
} from '../src/memory/dirty.ts';
import { LiveProcessMemory } from '../src/memory/live.ts';
import {
  LiveMemoryError,
  PM_PRESENT,
  PM_SOFT_DIRTY,
  isTrackedMapping,
  pagemapPfn,
  parseMaps,
  parseProcStat,
  parseSmaps,
  parseStat,
  parseVmstat,
  readStat,
  readSystemFeatures,
  threadsOf,
} from '../src/memory/procfs.ts';
import { loadTrace } from '../src/memory/trace.ts';
import { Bitmap } from '../src/util/bitmap.ts';
import { UsageError } from '../src/util/errors.ts';
import { defaultWriter, expectedPage, startWriter, writerProgram, type Writer } from './workloads/writer.ts';

const noWriter = defaultWriter()
  ? false
  : 'neither a C compiler (cc, gcc) nor python3 is available to run the writer';
const notRoot = process.getuid?.() === 0 ? false : 'reading /proc/kpageflags needs root';

/** Pages of the writer's buffer (0-based within the buffer) set in a bitmap of the layout. */
function inBuffer(b: Bitmap, base: number, pages: number): number[] {
  return [...b.toArray()].filter((p) => p >= base && p < base + pages).map((p) => p - base);
}

const every = (step: number, pages: number, from = 0) => {
  const out: number[] = [];
  for (let i = from; i < pages; i += step) out.push(i);
  return out;
};

describe('procfs parsing', () => {
  const MAPS = [
    '55d0c0a00000-55d0c0a01000 r--p 00000000 fe:00 1234                       /usr/bin/prog',
    '55d0c0a03000-55d0c0a04000 rw-p 00002000 fe:00 1234                       /usr/bin/prog',
    '55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0                          [heap]',
    '7f0000000000-7f0000100000 rw-p 00000000 00:00 0 ',
    '7f0000100000-7f0000200000 ---p 00000000 00:00 0 ',
    '7f0000200000-7f0000300000 rw-s 00000000 00:01 77                         /dev/shm/x (deleted)',
    '7f0000300000-7f0000301000 rw-p 00000000 00:00 0                          [anon:my name]',
    '7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]',
    '7ffd00100000-7ffd00104000 r--p 00000000 00:00 0                          [vvar]',
    '7ffd00104000-7ffd00106000 r-xp 00000000 00:00 0                          [vdso]',
    'ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]',
  ].join('\n');

  it('keeps private writable mappings and skips special, read-only and shared ones', () => {
    const maps = parseMaps(MAPS);
    assert.equal(maps.length, 11);
    assert.deepEqual(
      maps.filter(isTrackedMapping).map((e) => e.path),
      ['/usr/bin/prog', '[heap]', '', '[anon:my name]', '[stack]'],
    );
    assert.equal(maps[2].start, 0x55d0c1000000);
    assert.equal(maps[2].end - maps[2].start, 33 * 4096);
    assert.equal(maps[5].path, '/dev/shm/x (deleted)');
  });

  it('parses smaps fields in bytes', () => {
    const text = `${MAPS.split('\n')[2]}\nSize:                132 kB\nRss:                  8 kB\nVmFlags: rd wr mr\n`;
    const [e] = parseSmaps(text);
    assert.equal(e.path, '[heap]');
    assert.equal(e.fields.Rss, 8192);
    assert.equal(e.fields.Size, 132 * 1024);
  });

  it('parses /proc/PID/stat with spaces and parentheses in the name', () => {
    const s = parseStat('42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 3 0 7 9 0 0 20 0 2 0 100 1000 55 rest\n');
    assert.deepEqual(
      { pid: s.pid, comm: s.comm, state: s.state, ppid: s.ppid, minflt: s.minflt, majflt: s.majflt },
      { pid: 42, comm: 'a (b) c', state: 'S', ppid: 1, minflt: 100, majflt: 3 },
    );
    assert.equal(s.utime, 7);
    assert.equal(s.numThreads, 2);
    assert.equal(s.rss, 55);
    assert.equal(readStat(process.pid)?.pid, process.pid);
  });

  it('reads system features from /proc/vmstat and /proc/stat', () => {
    assert.equal(parseVmstat('pgfault 10\nnr_dirty 3\n').get('nr_dirty'), 3);
    assert.deepEqual(parseProcStat('cpu  1 2 3 4 5 6 7 8 9 10\nctxt 99\n'), {
      cpu: { user: 1, nice: 2, system: 3, idle: 4, iowait: 5, irq: 6, softirq: 7, steal: 8 },
      contextSwitches: 99,
    });
    const f = readSystemFeatures();
    assert.ok(f.pgfault > 0 && f.cpu.idle > 0 && f.contextSwitches > 0);
    assert.ok(f.nrDirty >= 0 && f.pgmajfault >= 0);
  });

  it('extracts page frame numbers only from present entries', () => {
    assert.equal(pagemapPfn(0x1234, PM_PRESENT | 0x5), 5 * 2 ** 32 + 0x1234);
    assert.equal(pagemapPfn(0x1234, 0x5), 0);
  });
});

describe('soft-dirty tracker (with a fake kernel)', () => {
  /** A process of 8 pages whose pagemap entries the test sets. */
  function fakeKernel() {
    const hi = new Uint32Array(8);
    const io: TrackerIO & { hi: Uint32Array; clears: string[] } = {
      pid: 1,
      hi,
      clears: [],
      readPagemap(addr: number, count: number) {
        const out = new Uint32Array(count * 2);
        const first = (addr - 0x10000) / 4096;
        for (let i = 0; i < count; i++) out[2 * i + 1] = hi[first + i];
        return out;
      },
      readMem() {
        throw new Error('the soft-dirty tracker never reads memory');
      },
      clearRefs(v: '1' | '4') {
        this.clears.push(v);
        for (let i = 0; i < hi.length; i++) hi[i] &= ~PM_SOFT_DIRTY;
      },
    };
    return io;
  }
  const spans: Span[] = [{ first: 0, count: 8, addr: 0x10000, anon: true }];

  it('reports soft-dirty pages and pages zapped since the last scan, then clears', () => {
    const k = fakeKernel();
    const t = new SoftDirtyTracker(k, 8);
    k.hi.set([PM_PRESENT, PM_PRESENT, 0, PM_PRESENT, 0, 0, 0, 0]);
    assert.deepEqual(
      [...t.collect(spans).toArray()],
      [0, 1, 3],
      'the first scan returns the pages holding data',
    );
    assert.deepEqual(k.clears, ['4']);
    k.hi[1] |= PM_SOFT_DIRTY;
    k.hi[4] = PM_PRESENT | PM_SOFT_DIRTY; // new page
    k.hi[3] = 0; // MADV_DONTNEED: gone without a soft-dirty bit
    assert.deepEqual([...t.collect(spans).toArray()], [1, 3, 4]);
    assert.deepEqual([...t.collect(spans).toArray()], [], 'nothing written since');
    assert.equal(t.needsStoppedProcess, true);
  });
});

describe('kernel probes', () => {
  it('decides whether soft-dirty tracking works by writing pages of its own', (t) => {
    const p = probeSoftDirty();
    t.diagnostic(`soft-dirty: ${p.ok} (${p.reason})`);
    assert.equal(typeof p.ok, 'boolean');
    assert.match(p.reason, /soft-dirty/);
  });

  it('tells whether accessed bits are readable and whether they follow accesses', (t) => {
    const p = probeAccessedBits();
    t.diagnostic(`accessed: readable ${p.readable}, follows accesses ${p.followsAccesses} (${p.reason})`);
    if (process.getuid?.() === 0) assert.equal(p.readable, true);
    else assert.equal(p.readable, false);
  });
});

for (const kind of ['c', 'python'] as const) {
  const prog = writerProgram(kind);
  const skip = prog ? false : `no ${kind === 'c' ? 'C compiler' : 'python3'} to run the writer`;

  describe(`hash tracking of a live ${kind === 'c' ? 'C' : 'Python'} writer`, { skip }, () => {
    let w: Writer;
    let mem: LiveProcessMemory;
    let base: number;

    before(async () => {
      w = await startWriter(16, prog!);
      mem = new LiveProcessMemory(w.pid, { tracker: 'hash' });
      base = mem.pageIndexOf(w.addr);
    });
    after(async () => {
      mem?.close();
      await w?.stop();
    });

    it('lays out the private writable mappings with the buffer inside one region', () => {
      assert.equal(mem.tracker.kind, 'hash');
      assert.ok(base >= 0, 'the buffer is in the layout');
      assert.equal(mem.pageIndexOf(w.addr + (w.pages - 1) * 4096), base + w.pages - 1);
      assert.equal(mem.addressOf(base), w.addr);
      const names = mem.layout.regions.map((r) => r.name);
      for (const special of ['[vdso]', '[vvar]', '[vsyscall]']) assert.ok(!names.includes(special));
      assert.ok(names.includes('[stack]'));
      assert.equal(
        mem.layout.pageCount,
        mem.layout.regions.reduce((a, r) => a + r.pages, 0),
      );
      for (const r of mem.layout.regions) assert.match(r.start, /^0x[0-9a-f]+$/);
    });

    it('starts with every page of the buffer and reads back what the writer wrote', async () => {
      const first = await mem.collectDirty();
      assert.equal(inBuffer(first, base, w.pages).length, w.pages);
      const ids = Array.from({ length: w.pages }, (_, i) => base + i);
      const out = Buffer.alloc(w.pages * 4096);
      mem.readPages(ids, out);
      for (let i = 0; i < w.pages; i++) {
        if (!out.subarray(i * 4096, (i + 1) * 4096).equals(expectedPage(i, 1)))
          assert.fail(`page ${i} differs`);
      }
    });

    it('finds exactly the pages written: every 7th page', async () => {
      assert.equal(await w.command('every 2 7'), `done ${Math.ceil(w.pages / 7)}`);
      const d = await mem.collectDirty();
      assert.deepEqual(inBuffer(d, base, w.pages), every(7, w.pages));
    });

    it('finds exactly the pages written: a given list, and nothing when nothing was written', async () => {
      const list = [0, 1, 2, 500, 1023, 1024, 2047, w.pages - 1];
      assert.equal(await w.command(`write 3 ${list.join(' ')}`), `done ${list.length}`);
      assert.deepEqual(inBuffer(await mem.collectDirty(), base, w.pages), list);
      assert.deepEqual(inBuffer(await mem.collectDirty(), base, w.pages), []);
      // Rewriting the same bytes is not a change: the destination's copy is still right.
      await w.command(`write 3 ${list.join(' ')}`);
      assert.deepEqual(inBuffer(await mem.collectDirty(), base, w.pages), []);
    });

    it('reports a page that changed back to its scanned content after it was sent', async () => {
      await mem.collectDirty(); // the scan sees page 10 with tag 1
      assert.equal(await w.command('write 5 10'), 'done 1');
      const out = Buffer.alloc(4096);
      mem.readPages([base + 10], out); // sent with tag 5
      assert.ok(out.equals(expectedPage(10, 5)));
      assert.equal(await w.command('write 1 10'), 'done 1'); // back to what the scan saw, not to what was sent
      assert.deepEqual(inBuffer(await mem.collectDirty(), base, w.pages), [10]);
      mem.readPages([base + 10], out); // sent again: now the destination has it
      assert.deepEqual(inBuffer(await mem.collectDirty(), base, w.pages), []);
    });

    it('reads scattered pages in the order asked, across regions', () => {
      const order = [base + 700, base + 3, base + 4, base + 5, base + w.pages - 1, base + 500, base + 1];
      const stack = mem.pageIndexOf(Number(mem.layout.regions.find((r) => r.name === '[stack]')!.start));
      const out = Buffer.alloc((order.length + 1) * 4096);
      mem.readPages([...order, stack], out);
      const tag = (i: number) => ([0, 1, 500, w.pages - 1].includes(i) ? 3 : i % 7 === 0 ? 2 : 1);
      order.forEach((p, k) => {
        const i = p - base;
        assert.ok(out.subarray(k * 4096, (k + 1) * 4096).equals(expectedPage(i, tag(i))), `page ${i}`);
      });
      assert.throws(() => mem.readPages([mem.layout.pageCount], out), RangeError);
    });

    it('sees nothing change while frozen and changes again after thaw', async () => {
      assert.equal(await w.command('spin 3'), 'spinning');
      await new Promise((r) => setTimeout(r, 50));
      await mem.freeze();
      for (const tid of threadsOf(w.pid)) assert.equal(readStat(w.pid, tid)?.state, 'T');
      await mem.collectDirty();
      const still = await mem.collectDirty();
      assert.equal(still.count(), 0, 'a stopped process changes no page at all');
      mem.thaw();
      await new Promise((r) => setTimeout(r, 100));
      assert.ok(inBuffer(await mem.collectDirty(), base, w.pages).length > 0, 'writes resume after thaw');
      assert.equal(await w.command('read 0'), 'done 1');
      // Spinning rewrote pages with tags we cannot predict: settle them.
      await w.command('every 4 1');
      await mem.collectDirty();
    });

    it('reports unmapped pages once, refuses to read them, and counts new mappings', async () => {
      const zeroing = new LiveProcessMemory(w.pid, { tracker: 'hash', onUnmapped: 'zero' });
      try {
        await zeroing.collectDirty();
        assert.equal(await w.command('unmap 100 10'), 'done 10');
        const addr = await w.command('map 50');
        assert.match(addr, /^done [0-9a-f]+$/);
        const d = await mem.collectDirty();
        assert.deepEqual(inBuffer(d, base, w.pages), every(1, 110, 100));
        assert.equal(mem.drift().gonePages, 10);
        assert.ok(mem.drift().newPages >= 50, `new pages ${mem.drift().newPages}`);
        assert.deepEqual(inBuffer(await mem.collectDirty(), base, w.pages), [], 'reported once');
        const out = Buffer.alloc(3 * 4096, 0xaa);
        assert.throws(
          () => mem.readPages([base + 99, base + 100, base + 101], out),
          (e: Error) =>
            e instanceof LiveMemoryError && /page \d+ at 0x[0-9a-f]+ .* unmapped it/.test(e.message),
        );
        await zeroing.collectDirty();
        zeroing.readPages([base + 99, base + 100, base + 101], out);
        assert.ok(out.subarray(0, 4096).equals(expectedPage(99, 4)));
        assert.ok(out.subarray(4096).equals(Buffer.alloc(2 * 4096)));
      } finally {
        zeroing.close();
      }
    });
  });
}

describe('accessed bits', { skip: noWriter || notRoot }, () => {
  it('reads REFERENCED from /proc/kpageflags at each page frame and clears it', async (t) => {
    const w = await startWriter(4);
    const mem = new LiveProcessMemory(w.pid, { tracker: 'hash', accessed: true });
    try {
      const base = mem.pageIndexOf(w.addr);
      mem.clearAccessed();
      await w.command('read 3 5 9');
      await w.command('write 5 11');
      // The kernel marks pages it reads through /proc/PID/mem as referenced: a check of the plumbing that
      // does not depend on whether the CPU's accessed bits reach kpageflags.
      mem.readPages([base + 20, base + 21], Buffer.alloc(2 * 4096));
      const acc = inBuffer(mem.readAccessed(), base, w.pages);
      const probe = probeAccessedBits();
      t.diagnostic(`accessed in the buffer: [${acc.join(', ')}]; ${probe.reason}`);
      const expected = probe.followsAccesses ? [3, 5, 9, 11, 20, 21] : [20, 21];
      assert.ok(
        acc.every((p) => [3, 5, 9, 11, 20, 21].includes(p)),
        'no page the test did not touch',
      );
      if (acc.length > 0) assert.deepEqual(acc, expected);
      mem.clearAccessed();
      assert.deepEqual(inBuffer(mem.readAccessed(), base, w.pages), []);
    } finally {
      mem.close();
      await w.stop();
    }
  });
});

describe('precog trace record', { skip: noWriter }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'precog-trace-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  // The command loads its action on first use; load it now so that the first recording starts on time.
  before(() => import('../src/cli/actions/trace.ts'));

  /** Runs `precog trace record ARGS`, returning stdout. */
  async function record(args: string[]): Promise<string> {
    let out = '';
    const write = process.stdout.write;
    process.stdout.write = ((chunk: string | Uint8Array) => {
      out += chunk.toString();
      return true;
    }) as typeof process.stdout.write;
    try {
      await traceCommand().parseAsync(['record', ...args], { from: 'user' });
    } finally {
      process.stdout.write = write;
    }
    return out;
  }

  it('records the pages a process writes into a trace that loadTrace accepts', async () => {
    const w = await startWriter(8);
    const file = join(dir, 'writer.trace');
    try {
      const recording = record([
        '--pid',
        String(w.pid),
        '--interval',
        '100ms',
        '--duration',
        '1s',
        '--out',
        file,
        '--accessed',
        'off',
        '--json',
      ]);
      await new Promise((r) => setTimeout(r, 350));
      const written = [1, 2, 3, 50, 100, w.pages - 1];
      assert.equal(await w.command(`write 7 ${written.join(' ')}`), `done ${written.length}`);
      const summary = JSON.parse(await recording) as { schema: string; samples: number; tracker: string };
      assert.equal(summary.schema, 'precog.trace-record/v1');
      const trace = loadTrace(file);
      assert.equal(trace.samples, 10);
      assert.equal(summary.samples, 10);
      assert.equal(trace.intervalMs, 100);
      let base = 0;
      for (const r of trace.regions) {
        const start = Number(r.start);
        if (w.addr >= start && w.addr < start + r.pages * 4096) {
          base += (w.addr - start) / 4096;
          break;
        }
        base += r.pages;
      }
      const seen = new Map<number, number>();
      trace.dirty.forEach((bits, s) => {
        for (let i = 0; i < w.pages; i++) {
          const p = base + i;
          if (bits[p >>> 3] & (1 << (p & 7))) {
            assert.ok(!seen.has(i), `page ${i} dirty in samples ${seen.get(i)} and ${s}`);
            seen.set(i, s);
          }
        }
      });
      assert.deepEqual(
        [...seen.keys()].sort((a, b) => a - b),
        written,
      );
      const samples = new Set(seen.values());
      assert.equal(samples.size, 1, 'written at once, seen in one sample');
      assert.ok([...samples][0] >= 2, `not before the write: ${JSON.stringify([...seen])}`);
      // Change sizes: tag 1 -> 7 changes byte 6 of each of the page's 512 words, nothing else.
      assert.ok(trace.changes, 'change sizes recorded by default');
      const s = [...samples][0];
      const bits = trace.dirty[s];
      for (const i of written) {
        const p = base + i;
        let index = 0;
        for (let q = 0; q < p; q++) if (bits[q >>> 3] & (1 << (q & 7))) index++;
        assert.equal(trace.changes[s][index], 512, `page ${i}: bytes changed`);
      }
    } finally {
      await w.stop();
    }
  });

  it('prints a text summary', async () => {
    const w = await startWriter(1);
    try {
      const text = await record([
        '-p',
        String(w.pid),
        '-i',
        '50ms',
        '-d',
        '200ms',
        '-o',
        join(dir, 't2'),
        '--tracker',
        'hash',
      ]);
      assert.match(text, /4 samples every 50ms/);
      assert.match(text, /tracker: hash/);
      assert.match(text, /wrote .*t2/);
      assert.equal(loadTrace(join(dir, 't2')).samples, 4);
    } finally {
      await w.stop();
    }
  });

  it('rejects bad flags with usage errors that name the flag', async () => {
    const cases: [string[], RegExp][] = [
      [['--interval', '100ms', '--out', 'x'], /--pid is required/],
      [['--pid', 'abc', '--out', 'x'], /--pid "abc"/],
      [['--pid', '1'], /--out is required/],
      [['--pid', '1', '--out', 'x', '--interval', '0ms'], /--interval "0ms" must be at least 1ms/],
      [['--pid', '1', '--out', 'x', '--interval', 'fast'], /--interval "fast"/],
      [
        ['--pid', '1', '--out', 'x', '--duration', '10ms'],
        /--duration "10ms" must be at least one --interval/,
      ],
    ];
    for (const [args, message] of cases) {
      await assert.rejects(
        record(args),
        (e: Error) => e instanceof UsageError && message.test(e.message),
        args.join(' '),
      );
    }
    const stderr = process.stderr.write;
    process.stderr.write = (() => true) as typeof process.stderr.write;
    try {
      await assert.rejects(
        record(['--pid', '1', '--out', 'x', '--tracker', 'magic']),
        (e: Error) => e instanceof CommanderError && e.code === 'commander.invalidArgument',
      );
    } finally {
      process.stderr.write = stderr;
    }
  });

  it('says clearly when the process does not exist', async () => {
    const pidMax = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
    await assert.rejects(
      record(['--pid', String(pidMax + 1), '--out', join(dir, 'none')]),
      (e: Error) => e instanceof UsageError && /process \d+ does not exist/.test(e.message),
    );
  });

  it('keeps the samples recorded before the process exits', async () => {
    const w = await startWriter(1);
    const file = join(dir, 't3');
    const recording = record(['-p', String(w.pid), '-i', '50ms', '-d', '2s', '-o', file, '--json']);
    await new Promise((r) => setTimeout(r, 300));
    await w.stop();
    const summary = JSON.parse(await recording) as { samples: number; warnings: string[] };
    assert.ok(summary.samples >= 2 && summary.samples < 40, `${summary.samples} samples`);
    assert.match(summary.warnings.join('\n'), /stopped after \d+ of 40 samples: process \d+ exited/);
    assert.equal(loadTrace(file).samples, summary.samples);
  });

  it('fails clearly when the process exits while tracked', async () => {
    const w = await startWriter(1);
    const mem = new LiveProcessMemory(w.pid, { tracker: 'hash' });
    try {
      await mem.collectDirty();
      await w.stop();
      await assert.rejects(
        mem.collectDirty(),
        (e: Error) => e instanceof LiveMemoryError && /exited/.test(e.message),
      );
    } finally {
      mem.close();
    }
  });
});
