// The migration state blob and the destination's rebuild of CRIU images from its page store, without CRIU:
// a synthetic page-server stream, a store holding what live rounds sent, and the pages read back from the images.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { Message } from '../src/criu/codec.ts';
import { writeImage } from '../src/criu/images.ts';
import {
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  PE_PARENT,
  PE_PRESENT,
  VMA_ANON_PRIVATE,
  pagemapFlags,
  readPagemap,
  readPages,
} from '../src/criu/pages.ts';

const VMA_FILE_PRIVATE = 1 << 6;
import { ProcessFilesBacking } from '../src/engine/pagestore.ts';
import {
  encodeDstId,
  encodeIov,
  PageServerSession,
  psCmd,
  PS_IOV_ADD_F,
  PS_IOV_CLOSE,
  PS_IOV_OPEN2,
} from '../src/criu/pageserver.ts';
import type { Layout } from '../src/util/interfaces.ts';
import {
  encodeState,
  PARENT_DIR,
  rebuildCheckpoint,
  rebuildFromFiles,
  rebuildOnParent,
  STATE_MAGIC,
  StateReceiver,
  storeState,
  type RebuildResult,
} from '../src/migrate/state.ts';
import { InputError } from '../src/util/errors.ts';

const PAGE = 4096;
const page = (tag: number) => {
  const b = Buffer.alloc(PAGE, tag & 0xff);
  b.writeUInt32LE(tag, 0);
  return b;
};

/** Every page of a task in an image directory, following PE_PARENT entries into its parent (as criu restore does). */
function pagesWithParent(images: string, id: number): Map<bigint, Buffer> {
  const parent = existsSync(join(images, 'parent')) ? pagesWithParent(join(images, 'parent'), id) : new Map();
  const out = new Map<bigint, Buffer>();
  for (const run of readPages(images, id))
    for (let k = 0; k < run.nrPages; k++) {
      const v = run.vaddr + BigInt(k * PAGE);
      if (run.data) out.set(v, run.data.subarray(k * PAGE, (k + 1) * PAGE));
      else if (run.flags & PE_PARENT) {
        const b = parent.get(v) as Buffer | undefined;
        assert.ok(b, `page 0x${v.toString(16)} is PE_PARENT but not in the parent image`);
        out.set(v, b);
      }
    }
  return new Map([...out].sort((a, b) => (a[0] < b[0] ? -1 : 1)));
}

describe('migration state and the destination rebuild', () => {
  const dir = mkdtempSync(join(tmpdir(), 'precog-state-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  /** The blob as the agent keeps it, from STATE frames. */
  const stored = (blob: Buffer) => storeState(blob, join(dir, `state-${n++}`));

  test('images rebuilt from the store + changed pages + extra pages hold exactly what CRIU dumped', () => {
    // Task 1 (machine pid 900) has two regions in the live layout: 0x10000 (4 pages) and 0x40000 (2 pages).
    const layout: Layout = {
      pageSize: PAGE,
      pageCount: 6,
      regions: [
        { start: '0x10000', pages: 4, pid: 900 },
        { start: '0x40000', pages: 2, pid: 900 },
      ],
    };
    // What the destination holds from the live rounds: page g has tag 100 + g.
    const store = Buffer.concat([0, 1, 2, 3, 4, 5].map((g) => page(100 + g)));
    // The dump: 0x10000..0x13000 (g 0..3; g 2 rewritten to 222), 0x40000 (g 4), and 0x90000 (a new mapping).
    const dst = encodeDstId('pid', 1);
    const shm = encodeDstId('shmem', 99);
    const shmPages = Buffer.concat([page(901), page(902), page(903)]);
    const dumped = new Map<bigint, Buffer>([
      [0x10000n, page(100)],
      [0x11000n, page(101)],
      [0x12000n, page(222)],
      [0x13000n, page(103)],
      [0x40000n, page(104)],
      [0x90000n, page(777)],
    ]);
    const stream = Buffer.concat([
      encodeIov({ cmd: PS_IOV_OPEN2, nrPages: 0, vaddr: 0n, dstId: dst }, 32),
      encodeIov({ cmd: psCmd(PS_IOV_ADD_F, PE_PRESENT), nrPages: 4, vaddr: 0x10000n, dstId: dst }, 32),
      ...[0x10000n, 0x11000n, 0x12000n, 0x13000n].map((v) => dumped.get(v)!),
      encodeIov({ cmd: psCmd(PS_IOV_ADD_F, PE_PRESENT), nrPages: 1, vaddr: 0x40000n, dstId: dst }, 32),
      dumped.get(0x40000n)!,
      encodeIov({ cmd: psCmd(PS_IOV_ADD_F, PE_PRESENT), nrPages: 1, vaddr: 0x90000n, dstId: dst }, 32),
      dumped.get(0x90000n)!,
      // A shared anonymous segment: it comes whole with the state, its pages copied from the state's file.
      encodeIov({ cmd: psCmd(PS_IOV_ADD_F, PE_PRESENT), nrPages: 2, vaddr: 0x0n, dstId: shm }, 32),
      shmPages.subarray(0, 2 * PAGE),
      encodeIov({ cmd: psCmd(PS_IOV_ADD_F, PE_PRESENT), nrPages: 1, vaddr: 0x5000n, dstId: shm }, 32),
      shmPages.subarray(2 * PAGE),
      encodeIov({ cmd: PS_IOV_CLOSE, nrPages: 0, vaddr: 0n, dstId: 0n }, 32),
    ]);
    const holds = (_id: number, vaddr: bigint, bytes: Buffer, kind?: string) => {
      if (kind === 'shmem') return false;
      const region = vaddr >= 0x40000n ? { start: 0x40000n, first: 4 } : { start: 0x10000n, first: 0 };
      const g = region.first + Number((vaddr - region.start) / 4096n);
      return vaddr < 0x90000n && store.subarray(g * PAGE, (g + 1) * PAGE).equals(bytes);
    };
    const session = new PageServerSession({ have: holds, keepOnlyChanged: true });
    session.push(stream);
    const dump = session.finish();
    const changed = dump.tasks.get(1)!.changed.map((p) => p.vaddr);
    assert.deepEqual(changed, [0x12000n, 0x90000n], 'only the rewritten page and the new mapping');
    // The source sends the rewritten page in place (as the engine's final round would) ...
    store.set(page(222), 2 * PAGE);
    // ... and the page of the new mapping with the state.
    const images = join(dir, 'src-images');
    const upper = join(dir, 'src-upper');
    mkdirSync(images);
    mkdirSync(join(upper, 'data'), { recursive: true });
    writeFileSync(join(images, 'core-1.img'), 'not really a core image');
    writeFileSync(join(upper, 'data', 'note.txt'), 'written before\n');
    const blob = encodeState({
      container: { name: 'c1' },
      pids: [[1, 900]],
      dump,
      extras: [{ id: 1, vaddr: 0x90000n, bytes: page(777) }],
      imagesDir: images,
      upperDir: upper,
    });
    assert.equal(blob.toString('latin1', 0, 8), STATE_MAGIC);
    const check = (out: string, r: RebuildResult) => {
      assert.deepEqual(
        { pages: r.pages, fromStore: r.fromStore, fromState: r.fromState },
        { pages: 6, fromStore: 5, fromState: 4 },
      );
      const shmMap = readPagemap(join(out, 'images'), 'shmem-99');
      assert.deepEqual(
        shmMap.entries.map((e) => [e.vaddr, e.nr_pages]),
        [
          [0n, 2],
          [0x5000n, 1],
        ],
      );
      assert.ok(
        readFileSync(join(out, 'images', `pages-${shmMap.pagesId}.img`)).equals(shmPages),
        'the shared memory pages, byte for byte',
      );
      const got = pagesWithParent(join(out, 'images'), 1);
      assert.deepEqual([...got.keys()], [...dumped.keys()], 'the same pages as the dump, in address order');
      for (const [v, bytes] of dumped) assert.ok(got.get(v)!.equals(bytes), `page 0x${v.toString(16)}`);
      assert.equal(readFileSync(join(out, 'images', 'core-1.img'), 'utf8'), 'not really a core image');
      assert.equal(readFileSync(join(out, 'upper', 'data', 'note.txt'), 'utf8'), 'written before\n');
      assert.deepEqual(JSON.parse(readFileSync(join(out, 'state.json'), 'utf8')), { name: 'c1' });
    };
    // Pages copied out of a store in memory.
    const out = join(dir, 'rebuilt');
    check(
      out,
      rebuildCheckpoint(stored(blob), layout, (g, n) => store.subarray(g * PAGE, (g + n) * PAGE), out),
    );
    // A store kept as one file per process (the agent's, for containers): the files become the parent image.
    const onParent = join(dir, 'rebuilt-parent');
    mkdirSync(join(onParent, 'images', PARENT_DIR), { recursive: true });
    const files = new ProcessFilesBacking(layout, (k) =>
      join(onParent, 'images', PARENT_DIR, `pages-${k + 1}.img`),
    );
    for (let g = 0; g < 6; g++) {
      store.copy(files.slot(g), 0, g * PAGE, (g + 1) * PAGE);
      files.settle();
    }
    files.close();
    check(onParent, rebuildOnParent(stored(blob), layout, files.processes, onParent));
    const child = readPagemap(join(onParent, 'images'), 1).entries;
    assert.equal(
      child.filter((e) => pagemapFlags(e) & PE_PARENT).reduce((a, e) => a + e.nr_pages, 0),
      5,
      'the five pages of the store are PE_PARENT entries: the commit wrote none of them',
    );
  });

  test('self layout: each page file becomes its pages image; undumped pages zeroed (anonymous) or cut', () => {
    // Task 1 (machine pid 900): live regions 0x10000 (4 pages) and 0x40000 (2 pages). At the dump, 0x11000 was
    // never populated (CRIU skips it), 0x13000 is an unmodified page of a private file mapping (CRIU skips it too),
    // 0x40000 is no longer mapped (cut from the middle of the file), and 0x90000 is a mapping made after the start.
    const layout: Layout = {
      pageSize: PAGE,
      pageCount: 6,
      regions: [
        { start: '0x10000', pages: 4, pid: 900 },
        { start: '0x40000', pages: 2, pid: 900 },
      ],
    };
    const dst = encodeDstId('pid', 1);
    const dumped = new Map<bigint, Buffer>([
      [0x10000n, page(100)],
      [0x12000n, page(222)],
      [0x41000n, page(104)],
      [0x90000n, page(777)],
    ]);
    const session = new PageServerSession({ have: () => false, keepOnlyChanged: true });
    session.push(
      Buffer.concat([
        encodeIov({ cmd: PS_IOV_OPEN2, nrPages: 0, vaddr: 0n, dstId: dst }, 32),
        ...[...dumped].flatMap(([v, b]) => [
          encodeIov({ cmd: psCmd(PS_IOV_ADD_F, PE_PRESENT), nrPages: 1, vaddr: v, dstId: dst }, 32),
          b,
        ]),
        encodeIov({ cmd: PS_IOV_CLOSE, nrPages: 0, vaddr: 0n, dstId: 0n }, 32),
      ]),
    );
    const dump = session.finish();
    const images = join(dir, 'self-src-images');
    const upper = join(dir, 'self-src-upper');
    mkdirSync(images);
    mkdirSync(upper);
    // The dump's mappings: anonymous 0x10000-0x13000, an unmodified page of a private file mapping at 0x13000,
    // anonymous 0x41000 and 0x90000; 0x40000 is no longer mapped.
    const vma = (start: bigint, end: bigint, file = false) => ({
      start,
      end,
      pgoff: 0n,
      shmid: 0n,
      prot: 3,
      flags: file ? MAP_PRIVATE : MAP_PRIVATE | MAP_ANONYMOUS,
      status: (file ? VMA_FILE_PRIVATE : VMA_ANON_PRIVATE) | 1,
      fd: file ? 3n : -1n,
    });
    const mm = {
      mm_start_code: 0n,
      mm_end_code: 0n,
      mm_start_data: 0n,
      mm_end_data: 0n,
      mm_start_stack: 0n,
      mm_start_brk: 0n,
      mm_brk: 0n,
      mm_arg_start: 0n,
      mm_arg_end: 0n,
      mm_env_start: 0n,
      mm_env_end: 0n,
      exe_file_id: 1,
      vmas: [
        vma(0x10000n, 0x13000n),
        vma(0x13000n, 0x14000n, true),
        vma(0x41000n, 0x42000n),
        vma(0x90000n, 0x91000n),
      ],
    };
    writeFileSync(join(images, 'mm-1.img'), writeImage('MM', [mm as unknown as Message]));
    const state = (extras: { id: number; vaddr: bigint; bytes: Buffer }[]) =>
      encodeState({
        container: { name: 'c1' },
        pids: [[1, 900]],
        dump,
        extras,
        imagesDir: images,
        upperDir: upper,
      });
    const blob = state([{ id: 1, vaddr: 0x90000n, bytes: page(777) }]);
    // The destination's file for the process: what the live rounds and the final copy left there. 0x11000 holds
    // stale bytes (an older mapping the live rounds saw), 0x40000 the contents of the mapping since removed.
    const held = [page(100), page(55), page(222), page(103), page(66), page(104)];
    /** The page files as the destination holds them, under OUT's parent image directory. */
    const filesIn = (out: string) => {
      mkdirSync(join(out, 'images', PARENT_DIR), { recursive: true });
      const files = new ProcessFilesBacking(layout, (k) =>
        join(out, 'images', PARENT_DIR, `pages-${k + 1}.img`),
      );
      held.forEach((b, g) => {
        b.copy(files.slot(g));
        files.settle();
      });
      files.close();
      return files;
    };
    const out = join(dir, 'rebuilt-self');
    const files = filesIn(out);
    const r = rebuildFromFiles(stored(blob), layout, files.processes, out);
    assert.equal(r.layout, 'self', `self layout chosen (${r.why})`);
    assert.deepEqual(
      { pages: r.pages, fromStore: r.fromStore, fromState: r.fromState },
      { pages: 4, fromStore: 3, fromState: 1 },
    );
    const map = readPagemap(join(out, 'images'), 1).entries.map((e) => [
      e.vaddr,
      e.nr_pages,
      pagemapFlags(e),
    ]);
    assert.deepEqual(map, [
      [0x10000n, 4, PE_PRESENT],
      [0x41000n, 1, PE_PRESENT],
      [0x90000n, 1, PE_PARENT],
    ]);
    const got = pagesWithParent(join(out, 'images'), 1);
    for (const [v, bytes] of dumped) assert.ok(got.get(v)!.equals(bytes), `page 0x${v.toString(16)}`);
    assert.ok(
      got.get(0x11000n)!.equals(Buffer.alloc(PAGE)),
      'an anonymous page CRIU did not dump reads as zeros',
    );
    assert.ok(got.get(0x13000n)!.equals(page(103)), 'an unmodified file page is kept as the source read it');
    assert.equal(got.has(0x40000n), false, 'an unmapped page is cut');
    assert.equal(statSync(join(out, 'images', 'pages-1.img')).size, 5 * PAGE, 'the file, cut, is the image');
    // The same dump without the page made after the start in the state: that page is in neither, and is named.
    const bare = state([]);
    const out2 = join(dir, 'rebuilt-self-2');
    const files2 = filesIn(out2);
    assert.throws(
      () => rebuildFromFiles(stored(bare), layout, files2.processes, out2),
      (e: Error) =>
        e instanceof InputError && /page 0x90000 of task 1 is neither in the page store/.test(e.message),
    );
  });

  test('a page neither in the store nor in the state, and malformed blobs, are refused with what is wrong', () => {
    const empty = mkdtempSync(join(dir, 'e-'));
    const session = new PageServerSession();
    const dst = encodeDstId('pid', 5);
    session.push(
      Buffer.concat([
        encodeIov({ cmd: PS_IOV_OPEN2, nrPages: 0, vaddr: 0n, dstId: dst }, 32),
        encodeIov({ cmd: psCmd(PS_IOV_ADD_F, PE_PRESENT), nrPages: 1, vaddr: 0x5000n, dstId: dst }, 32),
        page(1),
        encodeIov({ cmd: PS_IOV_CLOSE, nrPages: 0, vaddr: 0n, dstId: 0n }, 32),
      ]),
    );
    const blob = encodeState({
      container: {},
      pids: [[5, 77]],
      dump: session.finish(),
      extras: [],
      imagesDir: empty,
      upperDir: empty,
    });
    const layout: Layout = {
      pageSize: PAGE,
      pageCount: 1,
      regions: [{ start: '0x9000', pages: 1, pid: 77 }],
    };
    assert.throws(
      () => rebuildCheckpoint(stored(blob), layout, () => Buffer.alloc(PAGE), join(dir, 'x')),
      (e: Error) =>
        e instanceof InputError && /page 0x5000 of task 5 is neither in the page store/.test(e.message),
    );
  });

  test('a state is taken in chunk by chunk, checked at its header, and refused by name when malformed', () => {
    const images = mkdtempSync(join(dir, 'i-'));
    writeFileSync(join(images, 'core-1.img'), Buffer.alloc(5000, 3));
    const blob = encodeState({
      container: { name: 'x' },
      pids: [],
      dump: { tasks: new Map(), shmem: new Map() } as unknown as Parameters<typeof encodeState>[0]['dump'],
      extras: [],
      imagesDir: images,
      upperDir: images,
    });
    const limit = { bytes: blob.length, hint: 'raise it' };
    const receive = (chunks: Buffer[], l = limit) => {
      const rx = new StateReceiver(join(dir, `rx-${n++}`), 'state', l);
      try {
        for (const c of chunks) rx.push(c);
        return rx.finish();
      } finally {
        rx.close();
      }
    };
    // One byte at a time: the same sections on disk as the whole blob.
    const whole = receive([blob]);
    const bytewise = receive([...blob].map((b) => Buffer.from([b])));
    assert.deepEqual(bytewise.header, whole.header);
    for (const name of ['images.tar', 'upper.tar', 'extras', 'shmem'])
      assert.ok(readFileSync(join(bytewise.dir, name)).equals(readFileSync(join(whole.dir, name))), name);
    assert.equal(readFileSync(join(whole.dir, 'images.tar')).length, whole.header.sections[0].bytes);
    // Refused as soon as what is wrong has arrived: the magic in the first 8 bytes, the header once whole.
    assert.throws(() => receive([Buffer.from('hello, w')]), /not a precog migration state/);
    const bad = Buffer.from(blob);
    bad.write('!', 12);
    assert.throws(() => receive([bad.subarray(0, 12 + bad.readUInt32LE(8))]), /header is not JSON/);
    // A header declaring more than the limit, before any section byte is stored.
    assert.throws(
      () =>
        receive([blob.subarray(0, 12 + blob.readUInt32LE(8))], { bytes: blob.length - 1, hint: 'raise it' }),
      (e: Error) =>
        e instanceof InputError &&
        /declares \d+ bytes, over the limit of \d+ bytes: raise it/.test(e.message),
    );
    assert.throws(
      () => receive([blob.subarray(0, blob.length - 10)]),
      /section upper\.tar ends 10 bytes short/,
    );
    assert.throws(
      () => receive([blob, Buffer.from('x')], { bytes: 2 * blob.length, hint: '' }),
      /bytes after the last section/,
    );
    assert.throws(() => receive([blob.subarray(0, 11)]), /ends inside its header \(11 bytes came\)/);
  });
});
