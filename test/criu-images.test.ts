// CRIU images: precog's reader and writer (src/criu) against CRIU 4.2 and crit on a real dump.
//
// Everywhere: round trips of synthetic images (unknown fields kept, negative and 64-bit integers, pagemap + pages)
// and malformed images (wrong magic, truncated entries, short pages file) giving InputErrors.
// As root, with the testbed: a Python process holding 16 MiB of known data is dumped in host a; every image is
// decoded by precog and compared with `crit decode` (as values and as the exact text crit prints) and re-encoded
// byte for byte (and so are those of a second dump: a process tree in its own UTS and IPC namespaces); then the
// pagemap + pages are rewritten by precog (other runs, zero pages dropped, another pages id), the directory goes to
// host b, `criu restore` runs there and the process continues with its data intact.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { hasUnknownFields, UNKNOWN_FIELDS, type Message } from '../src/criu/codec.ts';
import { critImage, critJson, type CritValue } from '../src/criu/crit.ts';
import { encodeImage, readImage, writeImage } from '../src/criu/images.ts';
import { IMG_COMMON_MAGIC, isRawImageName, MAGIC } from '../src/criu/magic.ts';
import {
  encodePagemap,
  PAGE_SIZE,
  pageRuns,
  PE_LAZY,
  PE_PARENT,
  PE_PRESENT,
  readPagemap,
  readPages,
  readVmas,
  writePagemap,
} from '../src/criu/pages.ts';
import { readState, type TestbedState } from '../src/runtime/testbed.ts';
import { waitForCounter } from './support/counter.ts';
import { testbedSkip } from './support/testbed.ts';
import { InputError } from '../src/util/errors.ts';

const BIN = new URL('../bin/precog', import.meta.url).pathname;
const skip = testbedSkip('the dump and restore run in the test hosts (namespaces, mounts)');

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'precog-criu-'));
}

/** Expects an InputError (exit code 2) whose message matches every pattern. */
function throwsInput(fn: () => unknown, ...patterns: RegExp[]): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof InputError, `expected an InputError, got ${String(err)}`);
    assert.equal(err.exitCode, 2);
    for (const p of patterns) assert.match(err.message, p);
    return true;
  });
}

describe('CRIU images without CRIU', () => {
  test('modelled messages round-trip, with negative, 64-bit and unknown fields', () => {
    const core: Message = {
      mtype: 1,
      tc: {
        task_state: 1,
        exit_code: 0,
        personality: 0,
        flags: 0x400100,
        blk_sigset: 0xffff_ffff_ffff_fffen,
        comm: 'python3',
        oom_score_adj: -1000,
      },
      thread_core: { futex_rla: 0n, futex_rla_len: 24, sched_nice: -5, comm: 'python3' },
    };
    const bytes = writeImage('CORE', [core]);
    assert.equal(bytes.readUInt32LE(0), IMG_COMMON_MAGIC);
    assert.equal(bytes.readUInt32LE(4), MAGIC.CORE);
    // oom_score_adj -1000 is an int32: protobuf-c writes negatives as 10-byte varints.
    assert.ok(
      bytes.includes(Buffer.from([0x70, 0x98, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])),
    );
    const back = readImage(bytes);
    assert.equal(back.magic, 'CORE');
    assert.deepEqual(back.entries, [core]);
    // A field precog does not model (core_entry 13 = the riscv64 registers): kept, written back in field order.
    const payload = bytes.subarray(12);
    const extra = Buffer.from([0x6a, 0x02, 0x08, 0x01]); // field 13, length 2, { 1: 1 }
    const withExtra = Buffer.concat([payload, extra]);
    const size = Buffer.alloc(4);
    size.writeUInt32LE(withExtra.length);
    const image = Buffer.concat([bytes.subarray(0, 8), size, withExtra]);
    const decoded = readImage(image);
    assert.ok(hasUnknownFields(decoded.entries[0]));
    assert.deepEqual(
      decoded.entries[0][UNKNOWN_FIELDS]?.map((u) => u.id),
      [13],
    );
    assert.ok(encodeImage(decoded).equals(image));
    assert.throws(() => critImage(decoded, true), /does not model \(13\)/);
  });

  test('pagemap and pages: written from runs in any order, read back in address order', () => {
    const dir = tmp();
    try {
      const page = (b: number) => Buffer.alloc(PAGE_SIZE, b);
      const runs = [
        { vaddr: 0x7f0000003000n, data: Buffer.concat([page(3), page(4)]) },
        { vaddr: 0x400000n, data: page(1) },
        { vaddr: 0x7f0000000000n, nrPages: 2, flags: PE_PARENT },
        { vaddr: 0x7f0000002000n, data: page(2), flags: PE_PRESENT | PE_LAZY },
      ];
      const w = writePagemap(dir, 42, runs, { pagesId: 5 });
      assert.deepEqual(
        { entries: w.entries, pages: w.pages, bytes: w.pagesBytes },
        { entries: 4, pages: 6, bytes: 4 * PAGE_SIZE },
      );
      assert.equal(readFileSync(join(dir, 'pages-5.img')).length, 4 * PAGE_SIZE);
      const map = readPagemap(dir, 42);
      assert.equal(map.pagesId, 5);
      assert.deepEqual(
        map.entries.map((e) => [e.vaddr, e.nr_pages, e.flags]),
        [
          [0x400000n, 1, PE_PRESENT],
          [0x7f0000000000n, 2, PE_PARENT],
          [0x7f0000002000n, 1, PE_PRESENT | PE_LAZY],
          [0x7f0000003000n, 2, PE_PRESENT],
        ],
      );
      const got = [...readPages(dir, 42)];
      assert.deepEqual(
        got.map((r) => [r.vaddr, r.nrPages, r.data ? [...new Set(r.data)] : null]),
        [
          [0x400000n, 1, [1]],
          [0x7f0000000000n, 2, null],
          [0x7f0000002000n, 1, [2]],
          [0x7f0000003000n, 2, [3, 4]],
        ],
      );
      // The in-memory encoder gives the same bytes.
      const mem = encodePagemap(runs, 5);
      assert.ok(mem.pagemap.equals(readFileSync(join(dir, 'pagemap-42.img'))));
      assert.ok(mem.pages.equals(readFileSync(join(dir, 'pages-5.img'))));
      assert.deepEqual(
        mem.entries.map((e) => [e.vaddr, e.nr_pages, e.flags]),
        map.entries.map((e) => [e.vaddr, e.nr_pages, e.flags]),
      );
      // The two places of the page count. By default in compat_nr_pages (field 2: CRIU <= 4.1's nr_pages, which
      // CRIU 4.2 reads when nr_pages is absent); as CRIU >= 4.2 writes it: compat_nr_pages 0, nr_pages (field 5).
      assert.equal(map.format, 'compat');
      assert.deepEqual(readImage(mem.pagemap).entries[4], {
        vaddr: 0x7f0000003000n,
        compat_nr_pages: 2,
        flags: PE_PRESENT,
      });
      // CRIU 4.1 bytes: field 1 vaddr 0x400000, field 2 = 1, field 4 = PE_PRESENT.
      assert.ok(mem.pagemap.includes(Buffer.from([0x08, 0x80, 0x80, 0x80, 0x02, 0x10, 0x01, 0x20, 0x04])));
      const w42 = writePagemap(dir, 43, runs, { pagesId: 6, format: 'nr_pages64' });
      assert.equal(w42.pages, 6);
      const raw42 = readFileSync(join(dir, 'pagemap-43.img'));
      assert.deepEqual(readImage(raw42).entries[4], {
        vaddr: 0x7f0000003000n,
        compat_nr_pages: 0,
        flags: PE_PRESENT,
        nr_pages: 2n,
      });
      // CRIU 4.2 bytes: ... field 2 = 0, field 4 = PE_PRESENT, field 5 = 1.
      assert.ok(
        raw42.includes(Buffer.from([0x08, 0x80, 0x80, 0x80, 0x02, 0x10, 0x00, 0x20, 0x04, 0x28, 0x01])),
      );
      assert.ok(encodePagemap(runs, 6, { format: 'nr_pages64' }).pagemap.equals(raw42));
      const map42 = readPagemap(dir, 43);
      assert.equal(map42.format, 'nr_pages64');
      assert.deepEqual(map42.entries, map.entries, 'the same entries whichever field holds the count');
      assert.deepEqual(
        [...readPages(dir, 43)].map((r) => [r.vaddr, r.nrPages, r.data ? [...new Set(r.data)] : null]),
        got.map((r) => [r.vaddr, r.nrPages, r.data ? [...new Set(r.data)] : null]),
      );
      // Printed as crit 4.2 prints it: both fields.
      assert.deepEqual(critImage(readImage(raw42), true).entries[1], {
        vaddr: '0x400000',
        compat_nr_pages: 0,
        flags: 'PE_PRESENT',
        nr_pages: 1n,
      });
      assert.throws(
        () =>
          encodePagemap(
            [
              { vaddr: 0x1000n, data: page(1) },
              { vaddr: 0x1000n, data: page(2) },
            ],
            1,
          ),
        /overlap/,
      );
      assert.throws(() => encodePagemap([{ vaddr: 0x1001n, data: page(1) }], 1), /page-aligned/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('pageRuns splits at VMA ends and drops zero pages only in private anonymous VMAs', () => {
    const anon = {
      start: 0x1000n,
      end: 0x5000n,
      pgoff: 0n,
      shmid: 0n,
      prot: 3,
      flags: 0x22,
      status: 0x201,
      fd: -1n,
    };
    const file = {
      start: 0x5000n,
      end: 0x7000n,
      pgoff: 0n,
      shmid: 1n,
      prot: 3,
      flags: 0x2,
      status: 0x41,
      fd: -1n,
    };
    const pages = [0x1000n, 0x2000n, 0x3000n, 0x4000n, 0x5000n, 0x6000n].map((vaddr, i) => ({
      vaddr,
      data: Buffer.alloc(PAGE_SIZE, i === 1 || i >= 4 ? 0 : i + 1),
    }));
    const { runs, droppedZeroPages } = pageRuns(pages, {
      vmas: [anon, file],
      dropZeroPages: true,
      maxPages: 8,
    });
    assert.equal(droppedZeroPages, 1);
    assert.deepEqual(
      runs.map((r) => [r.vaddr, (r.data?.length ?? 0) / PAGE_SIZE]),
      [
        [0x1000n, 1],
        [0x3000n, 2],
        [0x5000n, 2],
      ],
    );
    assert.deepEqual(
      pageRuns(pages, { maxPages: 4 }).runs.map((r) => r.vaddr),
      [0x1000n, 0x5000n],
    );
  });

  test('malformed images give InputErrors naming the file, the offset and what was expected', () => {
    const pstree = writeImage('PSTREE', [{ pid: 30000, ppid: 0, pgid: 30000, sid: 30000, threads: [30000] }]);
    throwsInput(
      () => readImage(Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]), { label: 'x.img' }),
      /^x\.img: at offset 0: unknown magic 0x04030201/,
      /expected IMG_COMMON/,
    );
    throwsInput(
      () => readImage(Buffer.from([1, 2]), { label: 'y.img' }),
      /y\.img: at offset 0: expected a 4-byte image magic/,
    );
    // Truncated entry: the size says more than the file holds.
    throwsInput(
      () => readImage(pstree.subarray(0, pstree.length - 3), { label: 'pstree.img' }),
      /pstree\.img: at offset 8: entry 0: size \d+ exceeds the \d+ bytes left in the file \(truncated image\?\)/,
    );
    // Truncated size field.
    throwsInput(
      () => readImage(Buffer.concat([pstree, Buffer.from([1, 0])]), { label: 'p.img' }),
      /offset \d+: entry 1: expected a 4-byte entry size, only 2 bytes left/,
    );
    // The type magic of another image without its IMG_COMMON head.
    throwsInput(
      () => readImage(pstree.subarray(4), { label: 'q.img' }),
      /a PSTREE image must start with head magic IMG_COMMON/,
    );
    // A protobuf body that ends inside a varint, and one without a required field.
    const broken = Buffer.from(pstree);
    broken.writeUInt32LE(3, 8);
    throwsInput(
      () => readImage(broken.subarray(0, 15), { label: 'r.img' }),
      /r\.img: entry 0 \(pstree_entry\) at offset 1[0-4]: pstree_entry/,
    );
    const noSid = writeImage('PSTREE', [Buffer.from([0x08, 0x01, 0x10, 0x00, 0x18, 0x01])]);
    throwsInput(
      () => readImage(noSid, { label: 's.img' }),
      /s\.img: entry 0 \(pstree_entry\) at offset 18: .*required field sid \(4\) is missing/,
    );
    // A pages file shorter than its pagemap.
    const dir = tmp();
    try {
      writePagemap(dir, 7, [{ vaddr: 0x1000n, data: Buffer.alloc(2 * PAGE_SIZE, 9) }], { pagesId: 1 });
      const pages = join(dir, 'pages-1.img');
      spawnSync('truncate', ['-s', String(PAGE_SIZE), pages]);
      throwsInput(
        () => readImage(pages),
        /pages-1\.img: at offset 0: a raw image .*\(read pages-N\.img with readPages\)/,
      );
      throwsInput(
        () => [...readPages(dir, 7)],
        /pages-1\.img: at offset 0: expected 8192 bytes for pagemap entry 1/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Against CRIU and crit in the test hosts

function precog(...args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 180_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}
function inHost(host: string, script: string, ...args: string[]) {
  return precog('testbed', 'exec', host, '--', 'sh', '-c', script, ...args);
}
function mustInHost(host: string, script: string, ...args: string[]): string {
  const r = inHost(host, script, ...args);
  assert.equal(r.code, 0, `in host ${host}: ${script}\n${r.err}${r.out}`);
  return r.out;
}
function tail(file: string, lines = 25): string {
  return existsSync(file)
    ? readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join('\n')
    : '(no log)';
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The 16 MiB the workload holds: SHA-256 of each 4-byte little-endian counter, concatenated. */
const DATA_MIB = 16;
function expectedData(): Buffer {
  const n = (DATA_MIB << 20) / 32;
  const out = Buffer.allocUnsafe(DATA_MIB << 20);
  const idx = Buffer.alloc(4);
  for (let i = 0; i < n; i++) {
    idx.writeUInt32LE(i);
    createHash('sha256')
      .update(idx)
      .digest()
      .copy(out, i * 32);
  }
  return out;
}
const ZERO_MIB = 2;
/**
 * The workload: 16 MiB of known data in a bytearray, plus 2 MiB of a private anonymous mmap written with 0xff and
 * then zeroed (present but all-zero pages, which the rewrite drops). Every 100 ms it writes its counter; every 5th
 * tick it checks the SHA-256 of its data + zero area against the one taken at start and writes "tick ok|BAD digest".
 */
const WORKLOAD = `
import hashlib, mmap, os, sys, time
D = sys.argv[1]
data = bytearray(b''.join(hashlib.sha256(i.to_bytes(4, 'little')).digest() for i in range((${DATA_MIB} << 20) // 32)))
z = mmap.mmap(-1, ${ZERO_MIB} << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
z.write(b'\\xff' * (${ZERO_MIB} << 20)); z.seek(0); z.write(bytes(${ZERO_MIB} << 20))
def digest():
    h = hashlib.sha256(); h.update(data); h.update(z); return h.hexdigest()
def put(name, text):
    with open(D + '/' + name + '.tmp', 'w') as f: f.write(text)
    os.rename(D + '/' + name + '.tmp', D + '/' + name)
want = digest()
put('want', want)
i = 0
while True:
    i += 1
    put('counter', str(i))
    if i % 5 == 1:
        got = digest()
        put('check', '%d %s %s' % (i, 'ok' if got == want else 'BAD', got))
    time.sleep(0.1)
`;

/** JSON.parse that keeps every integer exact (as a bigint): crit prints 64-bit values as plain JSON numbers. */
function parseJsonExact(text: string): CritValue {
  let i = 0;
  const ws = () => {
    while (/\s/.test(text[i] ?? '')) i++;
  };
  const value = (): CritValue => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const out: Record<string, CritValue> = {};
      ws();
      if (text[i] === '}') return (i++, out);
      for (;;) {
        ws();
        const key = value() as string;
        ws();
        assert.equal(text[i++], ':');
        out[key] = value();
        ws();
        if (text[i++] === '}') return out;
      }
    }
    if (c === '[') {
      i++;
      const out: CritValue[] = [];
      ws();
      if (text[i] === ']') return (i++, out);
      for (;;) {
        out.push(value());
        ws();
        if (text[i++] === ']') return out;
      }
    }
    if (c === '"') {
      const m = /^"(?:[^"\\]|\\.)*"/.exec(text.slice(i));
      assert.ok(m, `bad JSON string at ${i}`);
      i += m[0].length;
      return JSON.parse(m[0]) as string;
    }
    const m = /^(true|false|null|-?\d+(\.\d+)?([eE][-+]?\d+)?)/.exec(text.slice(i));
    assert.ok(m, `bad JSON at ${i}: ${text.slice(i, i + 20)}`);
    i += m[0].length;
    if (m[0] === 'true' || m[0] === 'false') return m[0] === 'true';
    assert.notEqual(m[0], 'null');
    return m[2] || m[3] ? Number(m[0]) : BigInt(m[0]);
  };
  return value();
}

/** Integers compared by value whatever their JS type (number or bigint). */
function normalise(v: CritValue): unknown {
  if (typeof v === 'number' || typeof v === 'bigint') return `int:${BigInt(v)}`;
  if (Array.isArray(v)) return v.map(normalise);
  if (typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, normalise(x)]));
  return v;
}

describe('CRIU images of a real dump, against crit and criu restore', { skip }, () => {
  let state: TestbedState;
  const rootOf = (host: 'a' | 'b') => `/proc/${state.hosts.find((h) => h.name === host)?.init?.pid}/root`;
  const WORK = '/var/lib/precog/criu-test';
  let pid = 0;
  let dumpDir = '';
  let dumpedCounter = 0;
  let want = '';

  let broughtUp = false;

  before(() => {
    const up = precog('testbed', 'up');
    assert.equal(up.code, 0, up.err);
    broughtUp = true;
    const s = readState();
    assert.ok(s?.complete, 'testbed state after up');
    state = s;
  });
  after(() => {
    // Only a testbed this test brought up is taken down (one started by someone else meanwhile stays).
    if (broughtUp) precog('testbed', 'down');
  });

  test('criu dump of a Python process with 16 MiB of known data in host a', async (t) => {
    mustInHost('a', `rm -rf ${WORK} && mkdir -p ${WORK}/run ${WORK}/dump ${WORK}/crit`);
    // A PID far from those host b uses, so that the restore there finds it free.
    const start = mustInHost(
      'a',
      `echo 29999 >/proc/sys/kernel/ns_last_pid; setsid python3 -c "$0" ${WORK}/run </dev/null >/dev/null 2>&1 & echo $!`,
      WORKLOAD,
    );
    pid = Number(start.trim());
    assert.ok(pid > 0, start);
    const run = join(rootOf('a'), WORK, 'run');
    for (let i = 0; i < 100 && !existsSync(join(run, 'check')); i++) await sleep(100);
    assert.match(readFileSync(join(run, 'check'), 'utf8'), /^\d+ ok [0-9a-f]{64}$/);
    want = readFileSync(join(run, 'want'), 'utf8');
    const expected = createHash('sha256')
      .update(expectedData())
      .update(Buffer.alloc(ZERO_MIB << 20))
      .digest('hex');
    assert.equal(want, expected, 'the workload holds the data this test expects');
    await sleep(500);
    const dump = inHost('a', `criu dump -t ${pid} -D ${WORK}/dump -o dump.log -v4`);
    dumpDir = join(rootOf('a'), WORK, 'dump');
    assert.equal(dump.code, 0, `criu dump failed:\n${dump.err}\n${tail(join(dumpDir, 'dump.log'))}`);
    dumpedCounter = Number(readFileSync(join(run, 'counter'), 'utf8'));
    const files = readdirSync(dumpDir).sort();
    t.diagnostic(`dumped pid ${pid} at counter ${dumpedCounter}: ${files.join(' ')}`);
    for (const f of ['inventory.img', 'pstree.img', `core-${pid}.img`, `mm-${pid}.img`, `pagemap-${pid}.img`])
      assert.ok(files.includes(f), `${f} in the dump`);
  });

  /**
   * Runs crit on every non-raw image of a dump directory in host a (WORK/<name>), and checks precog's decoding of
   * each against crit's output (values and exact text, --pretty and plain) and its re-encoding against the file.
   * Returns one line per image.
   */
  function compareWithCrit(name: string): string[] {
    const dir = join(rootOf('a'), WORK, name);
    const images = readdirSync(dir)
      .filter((f) => (f.endsWith('.img') || f.startsWith('stats-')) && !isRawImageName(f))
      .sort();
    mustInHost(
      'a',
      `mkdir -p ${WORK}/crit-${name} && cd ${WORK}/${name} && for f in "$@"; do ` +
        `crit decode -i "$f" --pretty >../crit-${name}/"$f".pretty && crit decode -i "$f" >../crit-${name}/"$f".plain || exit 1; done`,
      'crit-all', // $0 of the script
      ...images,
    );
    const critDir = join(rootOf('a'), WORK, `crit-${name}`);
    const seen: string[] = [];
    for (const f of images) {
      const bytes = readFileSync(join(dir, f));
      const image = readImage(join(dir, f));
      assert.ok(image.modelled, `${f}: precog models ${image.magic} images`);
      assert.ok(!image.entries.some(hasUnknownFields), `${f}: no field precog does not model`);
      for (const pretty of [true, false]) {
        const text = readFileSync(join(critDir, `${f}.${pretty ? 'pretty' : 'plain'}`), 'utf8');
        const mine = critImage(image, pretty);
        const form = pretty ? '--pretty' : 'plain';
        assert.deepEqual(normalise(mine), normalise(parseJsonExact(text)), `${f}: values (${form})`);
        assert.equal(critJson(mine, pretty) + '\n', text, `${f}: the same text as crit (${form})`);
      }
      assert.ok(encodeImage(image).equals(bytes), `${f}: re-encoded byte for byte`);
      seen.push(`${f} (${image.magic}, ${image.entries.length} entries, ${bytes.length} B)`);
    }
    return seen;
  }

  test('every image decodes to what crit decode prints, and re-encodes byte for byte', (t) => {
    assert.ok(dumpDir, 'the dump test ran');
    const seen = compareWithCrit('dump');
    t.diagnostic(`identical to crit and byte for byte: ${seen.join(', ')}`);
    for (const type of ['INVENTORY', 'PSTREE', 'PAGEMAP', 'MM', 'CORE'])
      assert.ok(
        seen.some((s) => s.includes(`(${type},`)),
        `${type} checked`,
      );
  });

  test('a process tree in its own UTS and IPC namespaces: its images match crit too', (t) => {
    // Two processes (a shell and its sleep) and the namespace images CRIU writes for them (utsns, ipcns-var).
    mustInHost(
      'a',
      `mkdir -p ${WORK}/ns ${WORK}/ns-run && echo 19999 >/proc/sys/kernel/ns_last_pid; ` +
        `setsid unshare --uts --ipc sh -c 'hostname inner; i=0; while :; do i=$((i+1)); echo $i >${WORK}/ns-run/count; sleep 0.1; done' ` +
        `</dev/null >/dev/null 2>&1 & sleep 0.5; criu dump -t $! -D ${WORK}/ns -o dump.log`,
    );
    const seen = compareWithCrit('ns');
    t.diagnostic(`identical to crit and byte for byte: ${seen.join(', ')}`);
    for (const type of ['UTSNS', 'IPC_VAR'])
      assert.ok(
        seen.some((s) => s.includes(`(${type},`)),
        `${type} checked`,
      );
    assert.ok(
      seen.some((s) => /^pstree\.img \(PSTREE, 2 entries/.test(s)),
      'two processes',
    );
  });

  test('the pages hold the 16 MiB of data where the pagemap says', (t) => {
    const pages = new Map<bigint, Buffer>();
    let entries = 0;
    for (const run of readPages(dumpDir, pid)) {
      entries++;
      assert.ok(run.data, 'a plain dump has every page present');
      for (let i = 0; i < run.nrPages; i++)
        pages.set(run.vaddr + BigInt(i * PAGE_SIZE), run.data.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
    }
    const pagesFile = readdirSync(dumpDir).find((f) => f.startsWith('pages-'));
    assert.ok(pagesFile);
    assert.equal(
      readFileSync(join(dumpDir, pagesFile)).length,
      pages.size * PAGE_SIZE,
      'pages file = present pages',
    );
    const data = expectedData();
    const head = data.subarray(0, 64);
    const at = [...pages].find(([, p]) => p.indexOf(head) >= 0 && p.indexOf(head) <= PAGE_SIZE - 64);
    assert.ok(at, 'the start of the data is in a dumped page');
    const start = at[0] + BigInt(at[1].indexOf(head));
    const first = start - (start % BigInt(PAGE_SIZE));
    const span = Math.ceil((Number(start - first) + data.length) / PAGE_SIZE);
    const mem = Buffer.concat(
      Array.from(
        { length: span },
        (_, i) => pages.get(first + BigInt(i * PAGE_SIZE)) ?? Buffer.alloc(PAGE_SIZE),
      ),
    );
    assert.ok(mem.subarray(Number(start - first), Number(start - first) + data.length).equals(data));
    t.diagnostic(`${entries} pagemap entries, ${pages.size} pages; data at 0x${start.toString(16)}`);
  });

  test('pagemap + pages rewritten by precog: crit reads them, criu restore in host b continues the process', async (t) => {
    const restoreDir = join(rootOf('b'), WORK, 'restore');
    mustInHost('b', `rm -rf ${WORK} && mkdir -p ${WORK}/run ${WORK}/restore && ! test -e /proc/${pid}`);
    // Every other image re-encoded by precog from its decoded entries (raw images, if any, copied). Memory from
    // precog's page list: runs of at most 7 pages, the all-zero pages of private anonymous mappings left out, in
    // pages-9.img instead of pages-1.img.
    for (const f of readdirSync(dumpDir)) {
      if (/^(pagemap-|pages-)/.test(f) || f.endsWith('.log')) continue;
      if (isRawImageName(f)) copyFileSync(join(dumpDir, f), join(restoreDir, f));
      else writeFileSync(join(restoreDir, f), encodeImage(readImage(join(dumpDir, f))));
    }
    const pages: { vaddr: bigint; data: Buffer }[] = [];
    for (const run of readPages(dumpDir, pid))
      for (let i = 0; i < run.nrPages; i++)
        pages.push({
          vaddr: run.vaddr + BigInt(i * PAGE_SIZE),
          data: run.data!.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE),
        });
    const { runs, droppedZeroPages } = pageRuns(pages, {
      vmas: readVmas(dumpDir, pid),
      maxPages: 7,
      dropZeroPages: true,
    });
    assert.ok(droppedZeroPages >= (ZERO_MIB << 20) / PAGE_SIZE, `dropped ${droppedZeroPages} zero pages`);
    const w = writePagemap(restoreDir, pid, runs, { pagesId: 9 });
    const original = readPagemap(dumpDir, pid).entries.length;
    t.diagnostic(
      `rewritten: ${w.entries} entries (CRIU wrote ${original}), ${w.pages} of ${pages.length} pages, ` +
        `${droppedZeroPages} zero pages dropped, ${w.pagesBytes} bytes in pages-9.img`,
    );
    // Read back: every kept page is the original.
    const back = new Map<bigint, Buffer>();
    for (const r of readPages(restoreDir, pid))
      for (let i = 0; i < r.nrPages; i++)
        back.set(r.vaddr + BigInt(i * PAGE_SIZE), r.data!.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
    for (const p of pages) {
      const b = back.get(p.vaddr);
      assert.ok(b ? b.equals(p.data) : p.data.every((x) => x === 0), `page 0x${p.vaddr.toString(16)}`);
    }
    // crit accepts the pagemap precog wrote and prints what precog prints.
    const critText = mustInHost('b', `crit decode -i ${WORK}/restore/pagemap-${pid}.img --pretty`);
    assert.equal(critText, critJson(critImage(readImage(w.pagemapFile), true), true) + '\n');
    // Restore in host b.
    const restore = inHost('b', `cd ${WORK}/restore && criu restore -D . -d -o restore.log -v4`);
    assert.equal(
      restore.code,
      0,
      `criu restore failed:\n${restore.err}\n${tail(join(restoreDir, 'restore.log'))}`,
    );
    const stats = readImage(join(restoreDir, 'stats-restore'));
    t.diagnostic(`stats-restore: ${critJson(critImage(stats, false), false)}`);
    const run = join(rootOf('b'), WORK, 'run');
    const { counter, check } = await waitForCounter(run, dumpedCounter, 60);
    t.diagnostic(`dumped at counter ${dumpedCounter}; in host b: counter ${counter}, check "${check}"`);
    assert.ok(counter > dumpedCounter + 10, `the counter went on in b: ${dumpedCounter} -> ${counter}`);
    const [tick, verdict, digest] = check.split(' ');
    assert.ok(Number(tick) > dumpedCounter, 'a check made after the restore');
    assert.equal(verdict, 'ok');
    assert.equal(digest, want, 'the 16 MiB of data and the zero area are intact');
    assert.match(mustInHost('b', `ps -o args= -p ${pid}`), /python3 -c/);
    mustInHost('b', `kill ${pid}`);
  });
});
