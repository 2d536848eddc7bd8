// The lazy dump route (src/criu/lazydump.ts): the pages CRIU leaves in the stopped tasks are read by precog,
// compared with what the destination holds, and come out as the present runs of a full dump.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import type { Socket } from 'node:net';
import { xxh64 } from '@node-rs/xxhash';
import { HashPool } from '../src/criu/hashpool.ts';
import { FrozenMemoryReader, LazyDumpEnd, probeLazyDump } from '../src/criu/lazydump.ts';
import { ContainerMemory } from '../src/migrate/memory.ts';
import { ProcessTreeMemory } from '../src/memory/tree.ts';
import { defaultWriter, expectedPage, startWriter } from './workloads/writer.ts';
import { CriuRunner } from '../src/criu/runner.ts';
import { lazyRuns, pageWise, presentRuns, receiveFromImages, type RunHashes } from '../src/criu/localdump.ts';
import { PAGE_SIZE, PE_LAZY, PE_PRESENT, writePagemap } from '../src/criu/pages.ts';
import { PS_IOV_CLOSE } from '../src/criu/pageserver.ts';
import { dumpRoute, restoreModeFor } from '../src/migrate/live.ts';
import { parseStrategy } from '../src/policy/index.ts';
import { InputError, UsageError } from '../src/util/errors.ts';

/** RunHashes' test on a run, from a test on one page's hash. */
const hashWise =
  (test: (id: number, vaddr: bigint, hash: bigint) => boolean): RunHashes['have'] =>
  (id, vaddr, hashes) =>
    Uint8Array.from(hashes, (h, i) => (test(id, vaddr + BigInt(i * PAGE_SIZE), h) ? 1 : 0));

const page = (seed: number): Buffer => {
  const b = Buffer.alloc(PAGE_SIZE);
  for (let i = 0; i < PAGE_SIZE; i += 8) b.writeUInt32LE((seed * 2654435761 + i) >>> 0, i);
  return b;
};

/**
 * An image directory of task 7 as a lazy dump leaves it: a lazy run of 4 pages at 0x10000 (in the task), then a
 * present run of 2 pages at 0x20000 (in pages-1.img). The task's memory: page(n) at 0x10000 + n pages.
 */
function lazyImages(): { dir: string; memory: (vaddr: bigint) => Buffer; present: Buffer } {
  const dir = mkdtempSync(join(tmpdir(), 'precog-lazydump-'));
  const present = Buffer.concat([page(100), page(101)]);
  writePagemap(
    dir,
    7,
    [
      { vaddr: 0x10000n, nrPages: 4, flags: PE_LAZY },
      { vaddr: 0x20000n, data: present, flags: PE_PRESENT },
    ],
    { pagesId: 1 },
  );
  return { dir, memory: (vaddr) => page(Number((vaddr - 0x10000n) / BigInt(PAGE_SIZE))), present };
}

test('lazy runs are read from the task and compared; present runs still come from the pages file', () => {
  const { dir, memory, present } = lazyImages();
  try {
    assert.deepEqual(lazyRuns(dir), [{ id: 7, vaddr: 0x10000n, nrPages: 4 }]);
    const reads: bigint[] = [];
    // The destination holds pages 0 and 2 of the lazy run as they are, page 1 with other bytes, page 3 not at all.
    const held = new Map([
      [0x10000n, xxh64(page(0))],
      [0x11000n, xxh64(page(55))],
      [0x12000n, xxh64(page(2))],
    ]);
    const got = receiveFromImages(dir, (_id, vaddr, bytes) => held.get(vaddr) === xxh64(bytes), {
      keep: true,
      readLazy: (id, vaddr, out, len) => {
        assert.equal(id, 7);
        reads.push(vaddr);
        for (let at = 0; at < len; at += PAGE_SIZE) memory(vaddr + BigInt(at)).copy(out, at);
      },
    });
    const m = got.tasks.get(7)!;
    assert.deepEqual(
      m.changed.map((p) => p.vaddr),
      [0x11000n, 0x13000n, 0x20000n, 0x21000n],
    );
    assert.ok(m.changed[0].bytes.equals(page(1)));
    assert.ok(m.changed[1].bytes.equals(page(3)));
    // Had the lazy run moved the pages file's offset, these would be the wrong bytes.
    assert.ok(Buffer.concat([m.changed[2].bytes, m.changed[3].bytes]).equals(present));
    assert.equal(m.counts.unchanged, 2);
    assert.equal(
      m.runs[0].flags,
      PE_LAZY | PE_PRESENT,
      'a lazy run becomes present and lazy, as in a full dump',
    );
    assert.deepEqual(reads, [0x10000n]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('with the hashes given, only the pages whose hash differs are read from the task, consecutive ones at once', () => {
  const { dir, memory } = lazyImages();
  try {
    const hashes = BigUint64Array.from([0, 1, 2, 3].map((n) => xxh64(page(n))));
    const reads: bigint[] = [];
    const got = receiveFromImages(dir, () => false, {
      keep: true,
      readLazy: (_id, vaddr, out, len) => {
        reads.push(vaddr);
        assert.equal(len, 2 * PAGE_SIZE);
        for (let at = 0; at < len; at += PAGE_SIZE) memory(vaddr + BigInt(at)).copy(out, at);
      },
      lazyHashes: {
        of: (id, vaddr) => (id === 7 && vaddr === 0x10000n ? hashes : undefined),
        have: hashWise((_id, vaddr, hash) => vaddr < 0x12000n && hash === xxh64(memory(vaddr))),
      },
    });
    assert.deepEqual(reads, [0x12000n], 'pages 2 and 3 in one read');
    const m = got.tasks.get(7)!;
    assert.equal(m.counts.unchanged, 2);
    assert.ok(m.changed[0].bytes.equals(page(2)));
    assert.ok(m.changed[1].bytes.equals(page(3)));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('post-copy: the pages the destination never had are not read at the stop; the rest is read and compared', () => {
  const { dir, memory } = lazyImages();
  try {
    const reads: [bigint, number][] = [];
    // Pages 1 and 2 were never sent (deferred); page 0 is held as it is, page 3 differs.
    const got = receiveFromImages(dir, (_id, vaddr, bytes) => vaddr === 0x10000n && bytes.equals(page(0)), {
      keep: true,
      readLazy: (_id, vaddr, out, len) => {
        reads.push([vaddr, len / PAGE_SIZE]);
        for (let at = 0; at < len; at += PAGE_SIZE) memory(vaddr + BigInt(at)).copy(out, at);
      },
      deferLazy: pageWise((_id, vaddr) => vaddr === 0x11000n || vaddr === 0x12000n),
    });
    assert.deepEqual(reads, [
      [0x10000n, 1],
      [0x13000n, 1],
    ]);
    const m = got.tasks.get(7)!;
    assert.deepEqual(
      m.changed.map((p) => p.vaddr),
      [0x13000n, 0x20000n, 0x21000n],
    );
    assert.ok(m.changed[0].bytes.equals(page(3)));
    assert.equal(m.counts.unchanged, 1);
    assert.equal(m.runs[0].flags, PE_LAZY | PE_PRESENT, 'the run stays whole in the pagemap');
    assert.equal(m.runs[0].nrPages, 4);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('lazy runs without a way to read them are refused by name', () => {
  const { dir } = lazyImages();
  try {
    assert.throws(
      () => receiveFromImages(dir, () => false, { keep: true }),
      (e: Error) => e instanceof InputError && /PE_LAZY/.test(e.message),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('HashPool hashes another process\u2019s memory page by page, and names the PID it cannot read', async (t) => {
  // A child holding 300 known pages (page(n) for n < 300) prints their address and waits.
  const child = spawn(
    'python3',
    [
      '-c',
      [
        'import ctypes, struct, sys',
        'n = 300; b = bytearray(n * 4096)',
        'for p in range(n):',
        '    for i in range(0, 4096, 8): struct.pack_into("<I", b, p * 4096 + i, (p * 2654435761 + i) & 0xffffffff)',
        'a = ctypes.addressof((ctypes.c_char * len(b)).from_buffer(b))',
        'print(a, flush=True); sys.stdin.read()',
      ].join('\n'),
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  t.after(() => child.kill('SIGKILL'));
  const addr = await new Promise<number>((resolve, reject) => {
    child.stdout!.once('data', (d: Buffer) => resolve(Number(String(d).trim())));
    child.once('exit', () => reject(new Error('python3 ended')));
  });
  const pool = new HashPool(2);
  try {
    // The buffer need not be page-aligned: hash the whole pages inside it, against the same bytes of the pattern.
    const first = Math.ceil(addr / PAGE_SIZE) * PAGE_SIZE;
    const whole = Buffer.concat(Array.from({ length: 300 }, (_, n) => page(n)));
    const off = first - addr;
    const expect = Array.from({ length: 299 }, (_, p) =>
      xxh64(whole.subarray(off + p * PAGE_SIZE, off + (p + 1) * PAGE_SIZE)),
    );
    const [hashes] = await pool.hash([{ pid: child.pid!, vaddr: first, pages: 299 }]);
    assert.deepEqual([...hashes], expect);
    await assert.rejects(pool.hash([{ pid: 0x3fffffff, vaddr: first, pages: 1 }]), /PID 1073741823/);
  } finally {
    await pool.close();
  }
});

test('HashPool hashes ranges of a file (a dump\u2019s pages image) across jobs and workers, and names the file it cannot read', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'precog-hashfile-'));
  const pool = new HashPool(2);
  try {
    // 5000 pages: more than one job of 2048, so both workers take part and the results are put back in order.
    const pages = Array.from({ length: 5000 }, (_, n) => page(n));
    const file = join(dir, 'pages-1.img');
    writeFileSync(file, Buffer.concat(pages));
    const [a, b] = await pool.hash([
      { file, offset: 0, pages: 3000 },
      { file, offset: 3000 * PAGE_SIZE, pages: 2000 },
    ]);
    assert.deepEqual(
      [...a, ...b],
      pages.map((p) => xxh64(p)),
    );
    await assert.rejects(pool.hash([{ file: join(dir, 'nope.img'), offset: 0, pages: 1 }]), /nope\.img/);
  } finally {
    await pool.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * A stand-in for CRIU: records the task it was asked to dump (and whether it lived), reads what precog writes on
 * its page-server socket (fd 3), and exits 0, or 1 with an error line in its log when REFUSE is set.
 */
function fakeCriu(dir: string, refuse?: string): string {
  const bin = join(dir, 'criu');
  writeFileSync(
    bin,
    `#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in -o) log="$2"; shift;; -t) pid="$2"; shift;; esac; shift; done
echo "$pid" > ${dir}/pid
kill -0 "$pid" 2>/dev/null && echo alive > ${dir}/alive
head -c 32 <&3 | od -An -tx1 | tr -d ' \\n' > ${dir}/close
${refuse ? `echo "(00.001000) Error (criu/mem.c:1): ${refuse}" > "$log"; exit 1` : 'exit 0'}
`,
    { mode: 0o755 },
  );
  return bin;
}

test('the lazy dump probe: a throwaway process dumped lazily, CLOSE sent, the process ended; a refusal named', async (t) => {
  for (const refuse of [undefined, 'lazy pages are not for this kernel']) {
    const dir = mkdtempSync(join(tmpdir(), 'precog-lazyprobe-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const runner = new CriuRunner({ dir: join(dir, 'work'), criu: fakeCriu(dir, refuse) });
    const answer = await probeLazyDump(runner);
    if (refuse) assert.match(answer ?? '', /lazy pages are not for this kernel/);
    else assert.equal(answer, null);
    assert.equal(readFileSync(join(dir, 'alive'), 'utf8'), 'alive\n', 'CRIU was given a live process');
    const close = Buffer.alloc(32);
    close.writeUInt32LE(PS_IOV_CLOSE, 0);
    assert.equal(readFileSync(join(dir, 'close'), 'utf8'), close.toString('hex'), 'CLOSE on the socket');
    const pid = Number(readFileSync(join(dir, 'pid'), 'utf8'));
    for (let i = 0; i < 100 && existsSync(`/proc/${pid}`) && !/^State:\s+Z/m.test(status(pid)); i++)
      await new Promise((r) => setTimeout(r, 20));
    assert.ok(
      !existsSync(`/proc/${pid}`) || /^State:\s+Z/m.test(status(pid)),
      `the throwaway process ${pid} is ended`,
    );
  }
});

function status(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return '';
  }
}

test('LazyDumpEnd ends CRIU\u2019s lazy page server with CLOSE, once', () => {
  const wire = new PassThrough();
  const written: Buffer[] = [];
  wire.on('data', (d: Buffer) => written.push(d));
  const end = new LazyDumpEnd();
  end.attach(wire as unknown as Socket);
  end.close();
  end.close();
  // Closed before CRIU was spawned: CLOSE goes out once it is.
  const early = new LazyDumpEnd();
  early.close();
  const wire2 = new PassThrough();
  const written2: Buffer[] = [];
  wire2.on('data', (d: Buffer) => written2.push(d));
  early.attach(wire2 as unknown as Socket);
  assert.equal(Buffer.concat(written2).readUInt32LE(0), PS_IOV_CLOSE);
  const all = Buffer.concat(written);
  assert.equal(all.length, 32);
  assert.equal(all.readUInt32LE(0), PS_IOV_CLOSE);
  assert.ok(all.subarray(4).equals(Buffer.alloc(28)));
});

test("a runtime's kept dump: pages the destination never had are listed with their place in the pages file, not read", () => {
  const dir = mkdtempSync(join(tmpdir(), 'precog-localdump-'));
  try {
    // A full dump (runc's, Podman's): 2 runs in pages-1.img, 3 pages then 2.
    const data = [page(10), page(11), page(12), page(20), page(21)];
    writePagemap(
      dir,
      7,
      [
        { vaddr: 0x10000n, data: Buffer.concat(data.slice(0, 3)), flags: PE_PRESENT },
        { vaddr: 0x40000n, data: Buffer.concat(data.slice(3)), flags: PE_PRESENT },
      ],
      { pagesId: 1 },
    );
    // Sent before: 0x11000 (held as it is) and 0x41000 (held with other bytes); never sent: the other three.
    const sent = new Set([0x11000n, 0x41000n]);
    const got = receiveFromImages(dir, (_id, vaddr, bytes) => vaddr === 0x11000n && bytes.equals(page(11)), {
      keep: true,
      deferPresent: pageWise((_id, vaddr) => !sent.has(vaddr)),
    });
    const m = got.tasks.get(7)!;
    assert.deepEqual(
      m.changed.map((p) => p.vaddr),
      [0x41000n],
    );
    assert.ok(m.changed[0].bytes.equals(page(21)));
    assert.equal(m.counts.unchanged, 1);
    assert.equal(m.counts.changed, 4, 'the deferred pages count as changed: the destination lacks them');
    assert.deepEqual(m.runs[0].deferred, [0x10000n, 0x12000n]);
    assert.deepEqual(m.runs[1].deferred, [0x40000n]);
    // Where each deferred page is: read there, it is the page.
    const fd = openSync(m.runs[0].source!.file, 'r');
    try {
      for (const [run, vaddr, want] of [
        [m.runs[0], 0x12000n, page(12)],
        [m.runs[1], 0x40000n, page(20)],
      ] as const) {
        const b = Buffer.alloc(PAGE_SIZE);
        readSync(fd, b, 0, PAGE_SIZE, run.source!.offset + Number(vaddr - run.vaddr));
        assert.ok(b.equals(want), vaddr.toString(16));
      }
    } finally {
      closeSync(fd);
    }
    // The hashes of the present runs (as HashPool computes them from the file at presentRuns' offsets): a page whose
    // hash the destination holds is not read, one whose hash differs is read without comparing its bytes again.
    const runs = presentRuns(dir);
    assert.deepEqual(
      runs.map((r) => [r.vaddr, r.nrPages, r.offset]),
      [
        [0x10000n, 3, 0],
        [0x40000n, 2, 3 * PAGE_SIZE],
      ],
    );
    const hashOf = new Map(
      runs.map((r, i) => [
        r.vaddr,
        BigUint64Array.from(data.slice(i === 0 ? 0 : 3, i === 0 ? 3 : 5).map((p) => xxh64(p))),
      ]),
    );
    const held = new Set([xxh64(page(10)), xxh64(page(12)), xxh64(page(20))]);
    const hashed = receiveFromImages(
      dir,
      () => assert.fail('a page with a known hash is not compared again'),
      {
        keep: true,
        deferPresent: pageWise((_id, vaddr) => vaddr === 0x11000n),
        presentHashes: {
          of: (_id, vaddr) => hashOf.get(vaddr),
          have: hashWise((_id, _vaddr, h) => held.has(h)),
        },
      },
    ).tasks.get(7)!;
    assert.deepEqual(
      hashed.changed.map((p) => p.vaddr),
      [0x41000n],
    );
    assert.ok(hashed.changed[0].bytes.equals(page(21)));
    assert.equal(hashed.counts.unchanged, 3);
    assert.deepEqual(hashed.runs[0].deferred, [0x11000n]);
    // Without keep the file would go: nothing is deferred then.
    const all = receiveFromImages(dir, () => false, { deferPresent: pageWise(() => true) });
    assert.equal(all.tasks.get(7)!.changed.length, 5);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the dump route: lazy where the runtime can (post-copy too), images for other runtimes, refusals named', () => {
  const precog = { kind: 'precog', lazyDump: true };
  const podman = { kind: 'podman', lazyDump: false };
  assert.equal(dumpRoute(undefined, precog, parseStrategy('precopy')), 'lazy');
  assert.equal(dumpRoute('auto', podman, parseStrategy('precopy')), 'images');
  // Post-copy too: its stop then reads no memory (the pages follow from the frozen tasks).
  assert.equal(dumpRoute('auto', precog, parseStrategy('postcopy')), 'lazy');
  assert.equal(dumpRoute('auto', podman, parseStrategy('postcopy')), 'images');
  assert.equal(dumpRoute('images', precog, parseStrategy('precopy')), 'images');
  assert.throws(() => dumpRoute('lazy', podman, parseStrategy('precopy')), UsageError);
  assert.equal(dumpRoute('lazy', precog, parseStrategy('hybrid')), 'lazy');
  assert.throws(
    () => dumpRoute('page-server', precog, parseStrategy('hybrid')),
    /frozen source or a local dump/,
  );
});

test('the restore mode: post-copy lazy; as asked; lazy for a runtime that prefers it even for cold; else the strategy', () => {
  const precog = { kind: 'precog', lazyRestore: true };
  const podman = { kind: 'podman', lazyRestore: true, prefersLazyRestore: true };
  const crun = { kind: 'crun', lazyRestore: false };
  const cold = parseStrategy('cold');
  assert.equal(restoreModeFor(undefined, precog, cold), 'full');
  assert.equal(restoreModeFor(undefined, podman, cold), 'lazy');
  assert.equal(restoreModeFor('full', podman, cold), 'full');
  assert.equal(restoreModeFor(undefined, precog, parseStrategy('precopy')), 'lazy');
  assert.equal(restoreModeFor(undefined, crun, parseStrategy('precopy')), 'full');
  assert.equal(restoreModeFor(undefined, podman, parseStrategy('postcopy')), 'lazy');
  assert.throws(() => restoreModeFor(undefined, crun, parseStrategy('postcopy')), /crun runtime cannot do/);
  assert.throws(() => restoreModeFor('lazy', crun, cold), /restores in full only/);
});

test(
  'a page written after the last live round, just before the freeze, is what the stop sends',
  {
    skip:
      process.getuid?.() !== 0
        ? 'needs root (the writer runs in a PID namespace of its own, as a container does)'
        : !defaultWriter()
          ? 'neither a C compiler nor python3 for the writer'
          : false,
  },
  async () => {
    // The lazy route without CRIU: the same images a lazy dump leaves (the writer's buffer left in the task), read
    // from the stopped task and compared by hash with what the live round sent.
    const w = await startWriter(1, defaultWriter(), ['unshare', '--pid', '--fork']);
    const dir = mkdtempSync(join(tmpdir(), 'precog-lastwrite-'));
    let stopped = 0;
    try {
      const tree = new ProcessTreeMemory(w.pid, { onUnmapped: 'zero' });
      const mem: ContainerMemory = new ContainerMemory(
        tree,
        async () => {
          stopped = mem.machinePid(1)!;
          process.kill(stopped, 'SIGSTOP');
          await new Promise((r) => setTimeout(r, 50));
          const addr = BigInt(w.addr);
          writePagemap(dir, 1, [{ vaddr: addr, nrPages: w.pages, flags: PE_LAZY }], { pagesId: 1 });
          const reader = new FrozenMemoryReader((id) => mem.machinePid(id));
          try {
            const all = Buffer.alloc(w.pages * PAGE_SIZE);
            reader.read(1, addr, all, all.length);
            const hashes = BigUint64Array.from({ length: w.pages }, (_, i) =>
              xxh64(all.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE)),
            );
            return receiveFromImages(dir, (...a) => mem.holds(...a), {
              keep: true,
              readLazy: (...a) => reader.read(...a),
              lazyHashes: {
                of: (id, vaddr) => (id === 1 && vaddr === addr ? hashes : undefined),
                have: mem.holdsRun,
              },
            });
          } finally {
            reader.close();
          }
        },
        async () => {},
      );
      assert.equal(await w.command(`write 1 ${[...Array(w.pages).keys()].join(' ')}`), `done ${w.pages}`);
      // The live round: every page of the layout read and sent.
      await mem.collectDirty();
      const ids = Uint32Array.from({ length: mem.layout.pageCount }, (_, i) => i);
      await mem.readPages(ids, Buffer.alloc(ids.length * PAGE_SIZE));
      // After it, before the freeze: page 5 of the buffer is written again.
      assert.equal(await w.command('write 9 5'), 'done 1');
      await mem.freeze();
      const g = (p: number) => mem.pageOf(1, BigInt(w.addr + p * PAGE_SIZE));
      assert.ok(g(5) >= 0, 'the buffer is in the live layout');
      const dirty = mem.finalDirty();
      assert.ok(dirty.get(g(5)), 'the page written after the round is sent at the stop');
      assert.ok(!dirty.get(g(4)) && !dirty.get(g(6)), 'its unchanged neighbours are not');
      const got = Buffer.alloc(PAGE_SIZE);
      await mem.readPages([g(5)], got);
      assert.ok(got.equals(expectedPage(5, 9)), 'with the bytes written last');
      mem.close();
    } finally {
      if (stopped) process.kill(stopped, 'SIGCONT');
      await w.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
