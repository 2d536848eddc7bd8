// A signed peer's migration state cannot make the destination agent write outside its directory:
// symlinks and non-plain names in images.tar, task and segment ids that are paths, a member over the agent's own
// parent.d, device nodes in the writable layer, sizes that disagree. Each case once wrote through a link or a
// path outside the rebuild directory; now each is an InputError and nothing outside is touched. No root needed.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { Layout } from '../src/util/interfaces.ts';
import {
  rebuildCheckpoint,
  storeState,
  STATE_MAGIC,
  STATE_SCHEMA,
  tarDir,
  type StateHeader,
} from '../src/migrate/state.ts';
import { InputError } from '../src/util/errors.ts';

const PAGE = 4096;
const dir = mkdtempSync(join(tmpdir(), 'precog-state-hardening-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A state blob from a header (its sections' sizes filled in) and the four sections. */
function blobOf(h: Omit<StateHeader, 'sections' | 'schema'> & { schema?: string }, parts: Buffer[]): Buffer {
  const names = ['images.tar', 'upper.tar', 'extras', 'shmem'];
  const header = {
    schema: STATE_SCHEMA,
    ...h,
    sections: parts.map((b, i) => ({ name: names[i], bytes: b.length })),
  };
  const json = Buffer.from(JSON.stringify(header));
  const head = Buffer.alloc(12);
  head.write(STATE_MAGIC, 0, 'latin1');
  head.writeUInt32LE(json.length, 8);
  return Buffer.concat([head, json, ...parts]);
}

/** A tar of the directory filled by `fill`. */
function tarOf(name: string, fill: (d: string) => void): Buffer {
  const d = join(dir, `src-${name}`);
  mkdirSync(d, { recursive: true });
  fill(d);
  return tarDir(d);
}

const layout: Layout = {
  pageSize: PAGE,
  pageCount: 1,
  regions: [{ start: '0x10000', pages: 1, pid: 900 }],
} as Layout;
const store = () => Buffer.alloc(PAGE, 7);
const plainImages = () => tarOf('plain-images', (d) => writeFileSync(join(d, 'core-1.img'), 'core'));
const emptyUpper = () => tarOf('empty-upper', () => {});
const base = { container: { name: 'c1' }, pids: [[1, 900]] as [number, number][], shmem: [], extras: [] };
const oneTask = [{ id: 1, runs: [['10000', 1, 4]] as [string, number, number][] }];

/** Rebuilds BLOB into a fresh directory; returns it (throws what the rebuild throws). */
let n = 0;
function rebuild(blob: Buffer): string {
  const out = join(dir, `out-${n++}`);
  rebuildCheckpoint(storeState(blob, `${out}.state`), layout, () => store(), out);
  return out;
}

describe("a peer's state cannot write outside the rebuild directory", () => {
  test('a well-formed state still rebuilds (the checks refuse only what is malformed)', () => {
    const out = rebuild(
      blobOf({ ...base, tasks: oneTask }, [plainImages(), emptyUpper(), Buffer.alloc(0), Buffer.alloc(0)]),
    );
    assert.deepEqual(readdirSync(join(out, 'images')).sort(), ['core-1.img', 'pagemap-1.img', 'pages-1.img']);
    assert.ok(readFileSync(join(out, 'images', 'pages-1.img')).equals(store()));
  });

  test('a symlink in images.tar (pages-1.img -> a host file) is refused; the host file is untouched', () => {
    const victim = join(dir, 'victim-1');
    writeFileSync(victim, 'host file\n');
    const images = tarOf('symlink-images', (d) => {
      writeFileSync(join(d, 'core-1.img'), 'core');
      symlinkSync(victim, join(d, 'pages-1.img'));
    });
    assert.throws(
      () =>
        rebuild(
          blobOf({ ...base, tasks: oneTask }, [images, emptyUpper(), Buffer.alloc(0), Buffer.alloc(0)]),
        ),
      (err: Error) =>
        err instanceof InputError &&
        /images.tar: member ".\/pages-1.img" is not a regular file \(type l\)/.test(err.message),
    );
    assert.equal(readFileSync(victim, 'utf8'), 'host file\n');
  });

  test("a member over the agent's own parent.d, or in a subdirectory, is refused", () => {
    const images = tarOf('parent-images', (d) => {
      mkdirSync(join(d, 'parent.d'));
      writeFileSync(join(d, 'parent.d', 'pages-1.img'), 'x');
    });
    assert.throws(
      () =>
        rebuild(
          blobOf({ ...base, tasks: oneTask }, [images, emptyUpper(), Buffer.alloc(0), Buffer.alloc(0)]),
        ),
      /images.tar: member ".\/parent.d\/" is not a regular file/,
    );
  });

  test('task and segment ids that are paths (../../x) are refused before any file is named after them', () => {
    const escape = join(dir, 'escaped');
    mkdirSync(escape, { recursive: true });
    for (const tasks of [
      [{ id: '../../../../escaped/x', runs: [] }],
      [{ id: 1.5, runs: [] }],
      [{ id: 1, runs: [['zz', 1, 2]] }],
      [{ id: 1, runs: [['10000', 2 ** 40, 4]] }],
    ])
      assert.throws(
        () =>
          rebuild(
            blobOf({ ...base, tasks: tasks as unknown as StateHeader['tasks'] }, [
              plainImages(),
              emptyUpper(),
              Buffer.alloc(0),
              Buffer.alloc(0),
            ]),
          ),
        (err: Error) => err instanceof InputError && /task|run/.test(err.message),
        JSON.stringify(tasks),
      );
    assert.throws(
      () =>
        rebuild(
          blobOf({ ...base, tasks: oneTask, shmem: [{ id: '../x' as unknown as number, runs: [] }] }, [
            plainImages(),
            emptyUpper(),
            Buffer.alloc(0),
            Buffer.alloc(0),
          ]),
        ),
      /shared memory segment id "..\/x" is not a positive integer/,
    );
    assert.deepEqual(readdirSync(escape), []);
  });

  test('sizes that disagree with the sections are refused', () => {
    assert.throws(
      () =>
        rebuild(
          blobOf({ ...base, tasks: oneTask, extras: [[1, '20000']] }, [
            plainImages(),
            emptyUpper(),
            Buffer.alloc(0),
            Buffer.alloc(0),
          ]),
        ),
      /1 extra pages in 0 bytes/,
    );
    assert.throws(
      () =>
        rebuild(
          blobOf({ ...base, tasks: oneTask, shmem: [{ id: 5, runs: [['0', 3, 4]] }] }, [
            plainImages(),
            emptyUpper(),
            Buffer.alloc(0),
            Buffer.alloc(PAGE),
          ]),
        ),
      /shared memory of 3 pages in 4096 bytes/,
    );
  });

  test('the writable layer keeps its links but no device node other than an overlay whiteout', () => {
    // A container's own symlinks (absolute ones too: they resolve inside the container) arrive as they were.
    const upper = tarOf('upper-links', (d) => {
      mkdirSync(join(d, 'etc'));
      symlinkSync('/usr/share/zoneinfo/UTC', join(d, 'etc', 'localtime'));
      writeFileSync(join(d, 'etc', 'café – menu.txt'), 'UTF-8 and spaces in a name\n');
    });
    const out = rebuild(
      blobOf({ ...base, tasks: oneTask }, [plainImages(), upper, Buffer.alloc(0), Buffer.alloc(0)]),
    );
    assert.ok(existsSync(join(out, 'upper', 'etc')));
    assert.equal(
      readFileSync(join(out, 'upper', 'etc', 'café – menu.txt'), 'utf8'),
      'UTF-8 and spaces in a name\n',
    );
    // A device node of the host (here /dev/null's 1:3; a disk's would be as easy) is refused.
    const d = join(dir, 'src-upper-dev');
    mkdirSync(join(d, 'dev'), { recursive: true });
    const t = spawnSync('tar', ['-cf', '-', '-C', '/', 'dev/null', '-C', d, 'dev'], { maxBuffer: 1 << 24 });
    assert.equal(t.status, 0, t.stderr?.toString());
    assert.throws(
      () =>
        rebuild(
          blobOf({ ...base, tasks: oneTask }, [plainImages(), t.stdout, Buffer.alloc(0), Buffer.alloc(0)]),
        ),
      /upper.tar: member "dev\/null" is a character device 1:3/,
    );
  });
});

test("a resume reads pages only of the container's own processes: the destination's LAYOUT is checked first", async () => {
  const { returnedLayoutRefusal } = await import('../src/migrate/resume.ts');
  const ours = new Set([100, 101]);
  const layout = (pids: (number | undefined)[], pages = 2): Layout => ({
    pageSize: 4096,
    pageCount: pids.length * pages,
    regions: pids.map((pid, i) => ({
      start: `0x${(i + 1) * 0x10000}`,
      pages,
      ...(pid === undefined ? {} : { pid }),
    })),
  });
  assert.equal(returnedLayoutRefusal(layout([100, 101]), ours), null);
  // A process that is not the container's (the agent itself, any process of the host): its memory is not read.
  assert.match(
    returnedLayoutRefusal(layout([100, 1]), ours) ?? '',
    /names process 1, not one of the container's/,
  );
  assert.match(returnedLayoutRefusal(layout([undefined]), ours) ?? '', /names process \(none\)/);
  // Malformed, as any LAYOUT: sizes that do not add up, pages that are not a count.
  assert.match(returnedLayoutRefusal({ ...layout([100]), pageCount: 5 }, ours) ?? '', /regions hold 2 pages/);
  assert.match(
    returnedLayoutRefusal(
      { ...layout([100, 101]), regions: [{ start: '0x1000', pages: -1, pid: 100 }] },
      ours,
    ) ?? '',
    /has -1 pages/,
  );
});
