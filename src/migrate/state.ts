import { spawnSync } from 'node:child_process';
import {
  closeSync,
  lstatSync,
  readdirSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  statSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import {
  encodePagemap,
  isPrivateAnonymous,
  MAP_PRIVATE,
  readVmas,
  PE_LAZY,
  PE_PARENT,
  PE_PRESENT,
  writePagemap,
  writePagemapEntries,
  type PageRun,
} from '../criu/pages.ts';
import { planLazy } from '../criu/lazy.ts';
import type { ReceivedDump, ReceivedMemory } from '../criu/pageserver.ts';
import type { Layout } from '../util/interfaces.ts';
import { PAGE_SIZE } from '../util/interfaces.ts';
import { InputError, peerValue } from '../util/errors.ts';
import type { ExtraPage } from './memory.ts';

/**
 * The non-memory state of a container migration, as one blob in the STATE frames: what the destination needs
 * besides the pages it already keeps to rebuild a complete CRIU image directory and the container around it.
 *
 *   "PRCGST01" | u32 LE length of the JSON header | JSON header | sections, in the header's order
 *
 * Sections: images.tar (the dump's images without memory), upper.tar (the writable layer), extras (pages of
 * mappings the live layout did not hold, 4096 bytes each, in the header's order), shmem (the pages of shared
 * anonymous memory, run after run).
 */
export const STATE_MAGIC = 'PRCGST01';
export const STATE_SCHEMA = 'precog.migration-state/v1';

/** A pagemap as CRIU sent it: [vaddr (hex), page count, flags] per run. */
type Runs = [string, number, number][];

export interface StateHeader {
  schema: string;
  /** The container's state.json at the source (name, command, memory limit...). */
  container: unknown;
  /** CRIU pagemap id -> the PID the live layout names the process by (its regions' `pid`). */
  pids: [number, number][];
  tasks: { id: number; runs: Runs }[];
  shmem: { id: number; runs: Runs }[];
  extras: [number, string][];
  sections: { name: string; bytes: number }[];
}

function runsOf(m: ReceivedMemory): Runs {
  return m.runs.map((r) => [r.vaddr.toString(16), r.nrPages, r.flags]);
}

/** Packs a directory as tar (overlay whiteouts and opaque-directory xattrs kept). */
export function tarDir(dir: string): Buffer {
  const r = spawnSync('tar', ['--xattrs', '--xattrs-include=trusted.overlay.*', '-C', dir, '-cf', '-', '.'], {
    maxBuffer: 2 ** 31,
  });
  if (r.status !== 0)
    throw new Error(`tar of ${dir} failed: ${r.stderr?.toString().trim() || r.error?.message}`);
  return r.stdout;
}

/** A member of a tar archive as GNU tar lists it: its type (the mode's first letter), name, and device numbers. */
interface TarMember {
  type: string;
  name: string;
  /** A hard link's or symlink's target. */
  target?: string;
  device?: [number, number];
}

/** Most members precog unpacks from one archive a peer sent. */
const MAX_TAR_MEMBERS = 1_000_000;

/**
 * The members of a tar archive a peer sent, listed without unpacking anything (GNU tar's verbose listing, names
 * escaped so that one member is one line). An archive tar cannot read is an InputError.
 */
export function listTar(file: string, what: string): TarMember[] {
  const r = spawnSync('tar', ['-tvf', file, '--numeric-owner', '--quoting-style=escape'], {
    maxBuffer: 1 << 30,
  });
  if (r.status !== 0)
    throw new InputError(
      `${what} is not a tar archive tar can read: ${r.stderr?.toString().trim() || r.error?.message}`,
    );
  const lines = r.stdout.toString('utf8').split('\n').filter(Boolean);
  if (lines.length > MAX_TAR_MEMBERS)
    throw new InputError(`${what} has more than ${MAX_TAR_MEMBERS} members`);
  return lines.map((line) => {
    const m =
      /^(.)\S{9}\S*\s+\d+\/\d+\s+(\d+|\d+,\s*\d+)\s+\d{4}-\d\d-\d\d\s+\d\d:\d\d(?::\d\d)?\s(.*)$/.exec(line);
    if (!m) throw new InputError(`${what}: a member tar lists as "${line.slice(0, 120)}" is not understood`);
    const [, type, size, rest] = m;
    const member: TarMember = { type, name: rest };
    const arrow = type === 'l' ? rest.indexOf(' -> ') : type === 'h' ? rest.indexOf(' link to ') : -1;
    if (arrow >= 0) {
      member.name = rest.slice(0, arrow);
      member.target = rest.slice(arrow + (type === 'l' ? 4 : 9));
    }
    if (type === 'c' || type === 'b') {
      const [major, minor] = size.split(',').map((x) => Number(x.trim()));
      member.device = [major, minor];
    }
    return member;
  });
}

/**
 * A member name inside the archive's directory: relative, no ".." component. (Names are as tar lists them, with
 * unusual bytes escaped by backslashes: an escape never hides a "/" or a "..", so a UTF-8 file name still passes.)
 */
const confined = (name: string): boolean => !name.startsWith('/') && !name.split('/').includes('..');

/**
 * Why a peer's archive must not be unpacked here, or null. `flat` (images.tar: CRIU's image files): nothing but
 * regular files with plain names, directly in the directory. Otherwise (the writable layer, a bundle: a container's
 * own files) links, devices and special bits are the container's, but no member may leave the directory, a hard
 * link may not point outside it, and the only device nodes are overlayfs whiteouts (character device 0:0): a device
 * node of the host's disks or memory would hand them to the container.
 */
export function tarRefusal(members: TarMember[], flat: boolean): string | null {
  for (const m of members) {
    const name = m.name.replace(/^\.\//, '');
    if (flat) {
      if (name === '' || name === '.') {
        if (m.type !== 'd') return `member "${m.name}" is not the directory itself`;
        continue;
      }
      if (m.type !== '-') return `member "${m.name}" is not a regular file (type ${m.type})`;
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(name) || name === PARENT_DIR || name === PARENT_LINK)
        return `member "${m.name}" is not a plain image file name`;
      continue;
    }
    if (!confined(m.name)) return `member "${m.name}" is outside the archive's directory`;
    if (m.type === 'h' && (!m.target || !confined(m.target)))
      return `hard link "${m.name}" points outside the archive's directory (${m.target})`;
    if (m.type === 'b') return `member "${m.name}" is a block device (${m.device?.join(':')})`;
    if (m.type === 'c' && (m.device?.[0] !== 0 || m.device?.[1] !== 0))
      return `member "${m.name}" is a character device ${m.device?.join(':')} (only overlay whiteouts, 0:0, are kept)`;
    if (!['-', 'd', 'l', 'h', 'c', 'p'].includes(m.type)) return `member "${m.name}" has type ${m.type}`;
  }
  return null;
}

/** Unpacks a peer's archive into DIR once tarRefusal passes it; `flat`: CRIU's images (checked again on disk). */
function untar(file: string, dir: string, what: string, flat: boolean): void {
  const why = tarRefusal(listTar(file, what), flat);
  if (why) throw new InputError(`${what}: ${why}`);
  mkdirSync(dir, { recursive: true });
  const r = spawnSync(
    'tar',
    ['--xattrs', '--xattrs-include=trusted.overlay.*', '-C', dir, '-xp', '-f', file],
    {
      maxBuffer: 1 << 20,
    },
  );
  if (r.error)
    // Not the peer's archive: this host could not run tar (out of memory or processes, no tar).
    throw new Error(`unpacking into ${dir}: cannot run tar (${r.error.message})`);
  if (r.status !== 0)
    throw new InputError(
      `unpacking into ${dir} failed: ${r.stderr?.toString().trim() || `tar exit ${r.status}`}`,
    );
  if (flat)
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const st = lstatSync(join(dir, e.name));
      if (e.name !== PARENT_DIR && (!st.isFile() || st.nlink !== 1))
        throw new InputError(`${what}: ${e.name} is not a regular file of its own once unpacked`);
    }
}

export function encodeState(opts: {
  container: unknown;
  pids: [number, number][];
  dump: ReceivedDump;
  extras: ExtraPage[];
  imagesDir: string;
  upperDir: string;
}): Buffer {
  const images = tarDir(opts.imagesDir);
  const upper = tarDir(opts.upperDir);
  const extras = Buffer.concat(opts.extras.map((e) => e.bytes));
  const shmemData = Buffer.concat(
    [...opts.dump.shmem.values()].flatMap((m) => m.runs.filter((r) => r.data).map((r) => r.data as Buffer)),
  );
  const header: StateHeader = {
    schema: STATE_SCHEMA,
    container: opts.container,
    pids: opts.pids,
    tasks: [...opts.dump.tasks.values()].map((m) => ({ id: m.id, runs: runsOf(m) })),
    shmem: [...opts.dump.shmem.values()].map((m) => ({ id: m.id, runs: runsOf(m) })),
    extras: opts.extras.map((e) => [e.id, e.vaddr.toString(16)]),
    sections: [
      { name: 'images.tar', bytes: images.length },
      { name: 'upper.tar', bytes: upper.length },
      { name: 'extras', bytes: extras.length },
      { name: 'shmem', bytes: shmemData.length },
    ],
  };
  const json = Buffer.from(JSON.stringify(header));
  const head = Buffer.alloc(12);
  head.write(STATE_MAGIC, 0, 'latin1');
  head.writeUInt32LE(json.length, 8);
  return Buffer.concat([head, json, images, upper, extras, shmemData]);
}

/** The sections a state has, in order. */
const SECTIONS = ['images.tar', 'upper.tar', 'extras', 'shmem'];
/** Most tasks, runs per task and extra pages one state may name (bounds on what a peer makes the agent do). */
const MAX_TASKS = 100_000;
const MAX_RUNS = 1_000_000;
const MAX_EXTRAS = 1 << 20;

const isId = (x: unknown): x is number =>
  Number.isSafeInteger(x) && (x as number) > 0 && (x as number) < 2 ** 31;
const isHexAddress = (x: unknown): boolean => typeof x === 'string' && /^[0-9a-f]{1,16}$/.test(x);
const isRun = (r: unknown): boolean =>
  Array.isArray(r) &&
  r.length === 3 &&
  isHexAddress(r[0]) &&
  Number.isSafeInteger(r[1]) &&
  r[1] >= 1 &&
  r[1] <= 1 << 28 &&
  Number.isSafeInteger(r[2]) &&
  r[2] >= 0 &&
  r[2] < 1 << 16;

/**
 * Why a state header a peer sent is malformed, or null. Its task and segment ids become file names
 * (pagemap-ID.img), its addresses BigInts and its counts loops: each is checked for what it may be before use.
 */
export function headerRefusal(h: StateHeader): string | null {
  if (typeof h !== 'object' || h === null) return 'the header is not a JSON object';
  const list = (x: unknown, most: number, what: string): string | null =>
    !Array.isArray(x) ? `${what} is not a list` : x.length > most ? `more than ${most} ${what}` : null;
  const e =
    list(h.pids, MAX_TASKS, 'pids') ??
    list(h.tasks, MAX_TASKS, 'tasks') ??
    list(h.shmem, MAX_TASKS, 'shared memory segments') ??
    list(h.extras, MAX_EXTRAS, 'extra pages') ??
    list(h.sections, SECTIONS.length, 'sections');
  if (e) return e;
  for (const p of h.pids)
    if (!Array.isArray(p) || p.length !== 2 || !isId(p[0]) || !isId(p[1]))
      return `pid pair ${peerValue(p)} is not two process ids`;
  for (const [kind, segs] of [
    ['task', h.tasks],
    ['shared memory segment', h.shmem],
  ] as const)
    for (const t of segs) {
      if (typeof t !== 'object' || t === null || !isId(t.id))
        return `${kind} id ${peerValue((t as { id?: unknown })?.id)} is not a positive integer`;
      if (!Array.isArray(t.runs) || t.runs.length > MAX_RUNS)
        return `${kind} ${t.id}: runs are not a bounded list`;
      for (const r of t.runs) if (!isRun(r)) return `${kind} ${t.id}: run ${peerValue(r)} is malformed`;
    }
  for (const x of h.extras)
    if (!Array.isArray(x) || x.length !== 2 || !isId(x[0]) || !isHexAddress(x[1]))
      return `extra page ${peerValue(x)} is not [task id, hex address]`;
  const names = h.sections.map((x) => (x as { name?: unknown })?.name);
  if (JSON.stringify(names) !== JSON.stringify(SECTIONS))
    return `sections ${peerValue(names)}, expected ${SECTIONS.join(', ')}`;
  for (const x of h.sections)
    if (!Number.isSafeInteger(x.bytes) || x.bytes < 0)
      return `section ${peerValue(x.name)} has a size of ${peerValue(x.bytes)}`;
  let shmemPages = 0;
  for (const seg of h.shmem) for (const r of seg.runs) if (r[2] & PE_PRESENT) shmemPages += r[1];
  if (h.sections[3].bytes !== shmemPages * PAGE_SIZE)
    return `shared memory of ${shmemPages} pages in ${h.sections[3].bytes} bytes`;
  const extras = h.sections[2].bytes;
  if (extras !== h.extras.length * PAGE_SIZE) return `${h.extras.length} extra pages in ${extras} bytes`;
  return null;
}

/** Most bytes of a state's JSON header (its pids, tasks, runs and extra pages), held in memory while it arrives. */
export const MAX_STATE_HEADER_BYTES = 256 << 20;

/** The header of a state, from a buffer holding its first 12 + length bytes; checked for everything it may be. */
function parseHeader(buf: Buffer, what: string): StateHeader {
  const len = buf.readUInt32LE(8);
  let header: StateHeader;
  try {
    header = JSON.parse(buf.toString('utf8', 12, 12 + len)) as StateHeader;
  } catch (e) {
    throw new InputError(`${what}: header is not JSON (${(e as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header))
    throw new InputError(`${what}: header is not a JSON object`);
  if (header.schema !== STATE_SCHEMA)
    throw new InputError(`${what}: schema ${peerValue(header.schema)}, this precog reads ${STATE_SCHEMA}`);
  const bad = headerRefusal(header);
  if (bad) throw new InputError(`${what}: ${bad}`);
  return header;
}

/** A state as the destination keeps it: its header, and one file per section in `dir`, named as the section. */
export interface StoredState {
  header: StateHeader;
  dir: string;
}

/**
 * Takes a state in as it arrives, chunk by chunk, into a directory of its own: the magic and header are checked as
 * soon as they are whole (a malformed state is refused at its first frame, not after gigabytes), the sizes it
 * declares against `maxBytes`, and each section goes to its own file as its bytes come. Memory: the header alone.
 */
export class StateReceiver {
  private head: Buffer[] = [];
  private headBytes = 0;
  private header: StateHeader | null = null;
  private section = 0;
  private left = 0;
  private fd: number | null = null;

  /** `limit`: the most bytes a state may have, and what to tell a peer that passes it. */
  constructor(
    readonly dir: string,
    private readonly what: string,
    private readonly limit: { bytes: number; hint: string },
  ) {
    mkdirSync(dir, { mode: 0o700 });
  }

  push(chunk: Buffer): void {
    let at = 0;
    if (!this.header) at = this.takeHead(chunk);
    while (this.header && at < chunk.length) {
      if (this.section >= SECTIONS.length) throw new InputError(`${this.what}: bytes after the last section`);
      const n = Math.min(this.left, chunk.length - at);
      let done = 0;
      while (done < n) done += writeSync(this.fd!, chunk, at + done, n - done);
      at += n;
      this.left -= n;
      if (this.left === 0) this.nextSection();
    }
  }

  /** The state once every byte it declared has come (else an InputError naming what is missing). */
  finish(): StoredState {
    if (!this.header)
      throw new InputError(`${this.what}: ends inside its header (${this.headBytes} bytes came)`);
    if (this.section < SECTIONS.length)
      throw new InputError(
        `${this.what}: section ${SECTIONS[this.section]} ends ${this.left} bytes short of what its header declares`,
      );
    return { header: this.header, dir: this.dir };
  }

  /** Closes the section file being written (a state that will not be finished). */
  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }

  /** Takes header bytes from the chunk; returns where its sections' bytes start. */
  private takeHead(chunk: Buffer): number {
    const before = this.headBytes;
    this.head.push(chunk);
    this.headBytes += chunk.length;
    // The first 12 bytes (magic, header length) as soon as they are here; the header is joined once, when whole
    // (joined chunk by chunk, a header of many frames would be copied again with every frame).
    const start = Buffer.concat(this.head, Math.min(this.headBytes, 12));
    if (start.length >= 8 && start.toString('latin1', 0, 8) !== STATE_MAGIC)
      throw new InputError(`${this.what} is not a precog migration state (no ${STATE_MAGIC} magic)`);
    if (start.length < 12) return chunk.length;
    const len = start.readUInt32LE(8);
    if (len > MAX_STATE_HEADER_BYTES)
      throw new InputError(`${this.what}: a header of ${len} bytes, more than ${MAX_STATE_HEADER_BYTES}`);
    if (this.headBytes < 12 + len) return chunk.length;
    const header = parseHeader(Buffer.concat(this.head, 12 + len), this.what);
    const declared = 12 + len + header.sections.reduce((a, s) => a + s.bytes, 0);
    if (declared > this.limit.bytes)
      throw new InputError(
        `${this.what} declares ${declared} bytes, over the limit of ${this.limit.bytes} bytes: ${this.limit.hint}`,
      );
    this.header = header;
    this.head = [];
    this.section = -1;
    this.nextSection();
    return 12 + len - before;
  }

  /** Opens the next section's file (never one that exists: no link is followed); empty ones are passed at once. */
  private nextSection(): void {
    const sections = this.header!.sections;
    for (;;) {
      this.close();
      this.section++;
      if (this.section >= sections.length) return;
      this.fd = openSync(join(this.dir, sections[this.section].name), 'wx', 0o600);
      this.left = sections[this.section].bytes;
      if (this.left > 0) return;
    }
  }
}

/** Keeps a whole state (a blob encodeState made) in DIR, as StateReceiver would from frames. */
export function storeState(blob: Buffer, dir: string, what = 'state', maxBytes = 2 ** 31): StoredState {
  const r = new StateReceiver(dir, what, { bytes: maxBytes, hint: 'the state is too large' });
  try {
    r.push(blob);
    return r.finish();
  } finally {
    r.close();
  }
}

/** Page lookup in a committed page store: (layout pid, vaddr) -> global page index. */
class LayoutIndex {
  private readonly byPid = new Map<number, { start: bigint; end: bigint; first: number }[]>();

  constructor(layout: Layout) {
    let first = 0;
    for (const r of layout.regions) {
      const start = BigInt(`0x${r.start.replace(/^0x/, '')}`);
      const list = this.byPid.get(r.pid ?? 0) ?? [];
      list.push({ start, end: start + BigInt(r.pages * layout.pageSize), first });
      this.byPid.set(r.pid ?? 0, list);
      first += r.pages;
    }
  }

  pageOf(pid: number, vaddr: bigint): number {
    return this.runAt(pid, vaddr).first;
  }

  /** The global page of (pid, vaddr) and how many pages follow it contiguously in the same region (-1, 0: none). */
  runAt(pid: number, vaddr: bigint): { first: number; left: number } {
    for (const r of this.byPid.get(pid) ?? [])
      if (vaddr >= r.start && vaddr < r.end) {
        const k = Number((vaddr - r.start) / BigInt(PAGE_SIZE));
        return { first: r.first + k, left: Number((r.end - vaddr) / BigInt(PAGE_SIZE)) };
      }
    return { first: -1, left: 0 };
  }
}

export interface RebuildResult {
  dir: string;
  pages: number;
  fromStore: number;
  fromState: number;
}

/** `count` consecutive pages of the page store from global page `first`. */
export type StoreRuns = (first: number, count: number) => Buffer;

/** What both rebuilds start from: the state unpacked into outDir (images/, upper/, state.json), and lookups. */
function unpack(state: StoredState, layout: Layout, outDir: string, what: string) {
  const { header } = state;
  const section = (name: string): string => join(state.dir, name);
  const images = join(outDir, 'images');
  untar(section('images.tar'), images, `${what}: images.tar`, true);
  untar(section('upper.tar'), join(outDir, 'upper'), `${what}: upper.tar`, false);
  writeFileSync(join(outDir, 'state.json'), JSON.stringify(header.container, null, 2) + '\n');
  // Pages that came with the state, by task and address.
  const extrasOf = new Map<number, Map<bigint, Buffer>>();
  // Pages outside the live layout (few: mappings made after the last round) are kept in memory; the rest of the
  // state is read from its files as it is used.
  const extraData = readFileSync(section('extras'));
  header.extras.forEach(([id, vaddr], k) => {
    const m = extrasOf.get(id) ?? new Map<bigint, Buffer>();
    m.set(BigInt(`0x${vaddr}`), extraData.subarray(k * PAGE_SIZE, (k + 1) * PAGE_SIZE));
    extrasOf.set(id, m);
  });
  return {
    header,
    shmemFile: section('shmem'),
    images,
    index: new LayoutIndex(layout),
    pidOf: new Map(header.pids),
    extrasOf,
  };
}

/**
 * Splits a PE_PRESENT run of CRIU's pagemap where its source changes: a page that came with the state, or a run of
 * pages of one region of the store (`fromStore` makes the entry for those).
 */
function splitRun(
  task: number,
  pid: number | undefined,
  vaddr: bigint,
  nrPages: number,
  ctx: { index: LayoutIndex; extrasOf: Map<number, Map<bigint, Buffer>>; what: string },
  out: RebuildResult,
  fromStore: (at: bigint, g: number, n: number) => PageRun,
): PageRun[] {
  const runs: PageRun[] = [];
  const extraAt = ctx.extrasOf.get(task);
  out.pages += nrPages;
  let k = 0;
  while (k < nrPages) {
    const at = vaddr + BigInt(k * PAGE_SIZE);
    const extra = extraAt?.get(at);
    if (extra) {
      runs.push({ vaddr: at, data: extra, flags: PE_PRESENT });
      out.fromState++;
      k++;
      continue;
    }
    const { first: g, left } = pid === undefined ? { first: -1, left: 0 } : ctx.index.runAt(pid, at);
    if (g < 0)
      throw new InputError(
        `${ctx.what}: page 0x${at.toString(16)} of task ${task} is neither in the page store nor in the state`,
      );
    let n = 1;
    const most = Math.min(nrPages - k, left);
    while (n < most && !extraAt?.has(at + BigInt(n * PAGE_SIZE))) n++;
    runs.push(fromStore(at, g, n));
    out.fromStore += n;
    k += n;
  }
  return runs;
}

/**
 * Writes every task's pagemap (and pages) from CRIU's runs, `fromStore` making the entry for each run of pages the
 * store holds; then the shared memory.
 */
function writeTasks(
  u: ReturnType<typeof unpack>,
  what: string,
  out: RebuildResult,
  fromStore: (at: bigint, g: number, n: number, flags: number) => PageRun,
): void {
  let pagesId = 1;
  for (const task of u.header.tasks) {
    const pid = u.pidOf.get(task.id);
    const runs: PageRun[] = [];
    for (const [hex, nrPages, flags] of task.runs) {
      const vaddr = BigInt(`0x${hex}`);
      if (!(flags & PE_PRESENT)) runs.push({ vaddr, nrPages, flags });
      else
        runs.push(
          ...splitRun(task.id, pid, vaddr, nrPages, { ...u, what }, out, (at, g, n) =>
            fromStore(at, g, n, flags),
          ),
        );
    }
    writePagemap(u.images, task.id, runs, { pagesId: pagesId++ });
  }
  writeShmem(u.header, u.shmemFile, u.images, pagesId, out, what);
}

/**
 * Shared anonymous memory comes whole with the state: its pagemaps and pages, numbered from pagesId. The pages are
 * copied from the state's shmem file run by run, a MiB at a time (a segment may be as large as the container).
 */
function writeShmem(
  header: StateHeader,
  shmemFile: string,
  images: string,
  pagesId: number,
  out: RebuildResult,
  what: string,
): void {
  const src = openSync(shmemFile, 'r');
  const buf = Buffer.allocUnsafe(1 << 20);
  try {
    let at = 0;
    for (const seg of header.shmem) {
      // Each run's bytes, in the header's order; the pages image holds them in address order.
      const runs = seg.runs.map(([hex, nrPages, flags]) => {
        const run = { vaddr: BigInt(`0x${hex}`), nrPages, flags, offset: at };
        if (flags & PE_PRESENT) at += nrPages * PAGE_SIZE;
        return run;
      });
      runs.sort((a, b) => (a.vaddr < b.vaddr ? -1 : a.vaddr > b.vaddr ? 1 : 0));
      for (let i = 1; i < runs.length; i++)
        if (runs[i - 1].vaddr + BigInt(runs[i - 1].nrPages * PAGE_SIZE) > runs[i].vaddr)
          throw new InputError(
            `${what}: shared memory segment ${seg.id} has overlapping runs at 0x${runs[i].vaddr.toString(16)}`,
          );
      const dst = openSync(join(images, `pages-${pagesId}.img`), 'w', 0o600);
      try {
        for (const r of runs) {
          if (!(r.flags & PE_PRESENT)) continue;
          out.fromState += r.nrPages;
          for (let done = 0, left = r.nrPages * PAGE_SIZE; left > 0;) {
            const n = readSync(src, buf, 0, Math.min(buf.length, left), r.offset + done);
            if (n === 0) throw new InputError(`${what}: the shared memory section ends early`);
            for (let w = 0; w < n;) w += writeSync(dst, buf, w, n - w);
            done += n;
            left -= n;
          }
        }
      } finally {
        closeSync(dst);
      }
      writePagemapEntries(images, `shmem-${seg.id}`, runs, { pagesId: pagesId++ });
    }
  } finally {
    closeSync(src);
  }
}

/**
 * Rebuilds a complete checkpoint directory (images/ with pagemap and pages images, upper/, state.json) from a
 * destination's page store and the state blob: every page of CRIU's pagemaps comes from the store, unless the state
 * carries it (pages outside the live layout). Consecutive pages are read as one run (a view, for a store in memory).
 */
export function rebuildCheckpoint(
  state: StoredState,
  layout: Layout,
  store: StoreRuns,
  outDir: string,
  what = 'state',
): RebuildResult {
  const u = unpack(state, layout, outDir, what);
  const out: RebuildResult = { dir: outDir, pages: 0, fromStore: 0, fromState: 0 };
  writeTasks(u, what, out, (at, g, n, flags) => ({ vaddr: at, data: store(g, n), flags }));
  return out;
}

/** A rebuild from per-process page files, and which of the two layouts it chose. */
export interface FilesRebuildResult extends RebuildResult {
  /**
   * 'self': each process's page file became its own pages-N.img, cut down to the pages CRIU dumped (what a lazy
   * restore needs: CRIU's lazy-pages daemon cannot serve pages from a parent image); 'parent': the files are a parent
   * image the pagemaps point into (PE_PARENT), used when the files cannot be cut (tmpfs) or the layout is unusual.
   */
  layout: 'self' | 'parent';
  /** Why 'self' was not possible (null when it was). */
  why: string | null;
  /** Stretches cut out of the page files, and the time that took. */
  cuts: number;
  cutMs: number;
  /** ms: unpacking the state's images and layer, planning the layout, and writing the pagemaps. */
  unpackMs: number;
  planMs: number;
  writeMs: number;
}

/**
 * Rebuilds the checkpoint from per-process page files without copying memory: the 'self' layout when every process
 * allows it, else the 'parent' one (rebuildOnParent).
 */
export function rebuildFromFiles(
  state: StoredState,
  layout: Layout,
  processes: readonly { pid: number; path: string }[],
  outDir: string,
  what = 'state',
): FilesRebuildResult {
  const t0 = performance.now();
  const u = unpack(state, layout, outDir, what);
  const t1 = performance.now();
  const plan = planSelf(u, layout, processes);
  const t2 = performance.now();
  const why = typeof plan === 'string' ? plan : collapse(plan, processes);
  const cuts = typeof plan === 'string' ? 0 : [...plan.values()].reduce((a, p) => a + p.drop.length, 0);
  const t3 = performance.now();
  const r = why ? onParent(u, layout, processes, what) : onSelf(u, layout, processes, plan as SelfPlan, what);
  return {
    ...r,
    layout: why ? 'parent' : 'self',
    why,
    cuts: why ? 0 : cuts,
    cutMs: t3 - t2,
    unpackMs: t1 - t0,
    planMs: t2 - t1,
    writeMs: performance.now() - t3,
  };
}

type Unpacked = ReturnType<typeof unpack>;

/** vma_entry.status of the vsyscall, vDSO and vvar areas: the kernel's, never restored from pages. */
const VMA_SPECIAL_AREAS = (1 << 2) | (1 << 3) | (1 << 12);

/** The layout regions of each process, in layout order (= their order in the process's page file). */
function regionsByPid(layout: Layout): Map<number, { vaddr: bigint; nrPages: number }[]> {
  const m = new Map<number, { vaddr: bigint; nrPages: number }[]>();
  for (const r of layout.regions) {
    const list = m.get(r.pid ?? 0) ?? [];
    list.push({ vaddr: BigInt(`0x${r.start.replace(/^0x/, '')}`), nrPages: r.pages });
    m.set(r.pid ?? 0, list);
  }
  return m;
}

/**
 * Per process (index into processes): the stretches of its page file that stay, with their addresses, the byte
 * ranges to zero, and those to cut out.
 */
type SelfPlan = Map<
  number,
  {
    keep: { vaddr: bigint; nrPages: number; offset: number }[];
    zero: { offset: number; length: number }[];
    drop: { offset: number; length: number }[];
  }
>;

/**
 * Plans the 'self' layout from what CRIU dumped. A page of the live layout that CRIU did not dump is kept when it
 * is in a private mapping: zeroed in a private anonymous one (never populated: what restore would map), as the store
 * holds it in a private file mapping (an unmodified page: the file's contents, as the source read them through
 * /proc; restored as a private copy of the same bytes). It is cut out otherwise (no longer mapped, or shared): a cut
 * costs tens of ms on a large file, a zeroed page a write. Returns why the layout is impossible instead, when it is.
 */
function planSelf(u: Unpacked, layout: Layout, processes: readonly { pid: number }[]): SelfPlan | string {
  const regions = regionsByPid(layout);
  const plan: SelfPlan = new Map();
  for (const task of u.header.tasks) {
    const pid = u.pidOf.get(task.id);
    const k = pid === undefined ? -1 : processes.findIndex((p) => p.pid === pid);
    if (k < 0) continue;
    const vmas = readVmas(u.images, task.id)
      .filter((v) => v.flags & MAP_PRIVATE && !(v.status & VMA_SPECIAL_AREAS))
      .sort((a, b) => (a.start < b.start ? -1 : 1));
    const dumped: { vaddr: bigint; nrPages: number }[] = [];
    for (const [hex, nrPages, flags] of task.runs)
      if (flags & PE_PRESENT) dumped.push({ vaddr: BigInt(`0x${hex}`), nrPages });
    const p = {
      keep: [] as { vaddr: bigint; nrPages: number; offset: number }[],
      zero: [] as { offset: number; length: number }[],
      drop: [] as { offset: number; length: number }[],
    };
    const keep = (vaddr: bigint, to: bigint, offset: number) => {
      const last = p.keep[p.keep.length - 1];
      const n = Number(to - vaddr) / PAGE_SIZE;
      if (
        last &&
        last.vaddr + BigInt(last.nrPages * PAGE_SIZE) === vaddr &&
        last.offset + last.nrPages * PAGE_SIZE === offset
      )
        last.nrPages += n;
      else p.keep.push({ vaddr, nrPages: n, offset });
    };
    let end = 0n;
    let offset = 0;
    for (const r of regions.get(pid!) ?? []) {
      if (r.vaddr < end) return `task ${task.id}: live regions out of address order`;
      const stop = r.vaddr + BigInt(r.nrPages * PAGE_SIZE);
      end = stop;
      // File offsets before any cut: collapse() cuts from the end, so each stays valid while it runs.
      const off = (a: bigint) => offset + Number(a - r.vaddr);
      let at = r.vaddr;
      for (const h of holes(r, dumped)) {
        if (h.from > at) keep(at, h.from, off(at));
        // Within the hole: stretches of private anonymous mappings zeroed and kept, of private file mappings kept
        // as the store has them (the file's contents, read through /proc), the rest (unmapped, shared) cut.
        let x = h.from;
        for (const v of vmas) {
          if (v.end <= x) continue;
          if (v.start >= h.to) break;
          if (v.start > x) p.drop.push({ offset: off(x), length: Number(v.start - x) });
          const from = v.start > x ? v.start : x;
          const to = v.end < h.to ? v.end : h.to;
          if (isPrivateAnonymous(v)) p.zero.push({ offset: off(from), length: Number(to - from) });
          keep(from, to, off(from));
          x = to;
        }
        if (x < h.to) p.drop.push({ offset: off(x), length: Number(h.to - x) });
        at = h.to;
      }
      if (at < stop) keep(at, stop, off(at));
      offset += r.nrPages * PAGE_SIZE;
    }
    plan.set(k, p);
  }
  return plan;
}

/**
 * Cuts each page file as planned, last range first so that offsets hold: `fallocate --collapse-range`, or a truncate
 * for a range that reaches the end of the file (collapsing one is not allowed). One shell runs every cut. Returns
 * why not when the file system cannot cut (tmpfs) and nothing was cut yet; throws when a later cut fails.
 */
function collapse(plan: SelfPlan, processes: readonly { path: string }[]): string | null {
  const zeros = Buffer.alloc(1 << 20);
  for (const [k, p] of plan) {
    if (!p.zero.length) continue;
    const fd = openSync(processes[k].path, 'r+');
    try {
      for (const z of p.zero)
        for (let done = 0; done < z.length;) {
          const n = Math.min(z.length - done, zeros.length);
          writeSync(fd, zeros, 0, n, z.offset + done);
          done += n;
        }
    } finally {
      closeSync(fd);
    }
  }
  const q = (x: string) => `'${x.replace(/'/g, `'\\''`)}'`;
  const lines: string[] = [];
  for (const [k, p] of plan) {
    let size = statSync(processes[k].path).size;
    for (const d of [...p.drop].sort((a, b) => b.offset - a.offset)) {
      if (d.offset + d.length >= size) {
        lines.push(`truncate -s ${d.offset} ${q(processes[k].path)}`);
        size = d.offset;
      } else {
        lines.push(
          `fallocate --collapse-range --offset ${d.offset} --length ${d.length} ${q(processes[k].path)}`,
        );
        size -= d.length;
      }
      lines.push('n=$((n + 1))');
    }
  }
  if (!lines.length) return null;
  // Stops at the first failure and says how many cuts were made before it.
  const script = `set -e\nn=0\ntrap 'echo "after $n cut(s)" >&2' EXIT\n${lines.join('\n')}\ntrap - EXIT\n`;
  const r = spawnSync('/bin/sh', ['-c', script], { encoding: 'utf8' });
  if (r.status === 0) return null;
  const msg = `cannot cut pages CRIU did not dump out of the page files: ${(r.stderr || r.error?.message || '').trim()}`;
  if (/after 0 cut/.test(r.stderr ?? '')) return msg;
  throw new Error(msg);
}

/**
 * The 'self' layout. Per task: its page file (cut as planned) moves to images/pages-N.img and its kept stretches are
 * PE_PRESENT entries over it. Pages CRIU dumped outside the live layout came with the state: they go into a small
 * parent image (PE_PARENT, restored eagerly). Tasks the live rounds did not know get all their pages from the state.
 */
function onSelf(
  u: Unpacked,
  layout: Layout,
  processes: readonly { pid: number; path: string }[],
  plan: SelfPlan,
  what: string,
): RebuildResult {
  const out: RebuildResult = { dir: dirname(u.images), pages: 0, fromStore: 0, fromState: 0 };
  const parent = join(u.images, PARENT_DIR);
  mkdirSync(parent, { recursive: true });
  const regions = regionsByPid(layout);
  let pagesId = 1;
  for (const task of u.header.tasks) {
    const pid = u.pidOf.get(task.id);
    const k = pid === undefined ? -1 : processes.findIndex((p) => p.pid === pid);
    const extras = u.extrasOf.get(task.id) ?? new Map<bigint, Buffer>();
    const mine = k >= 0 ? (regions.get(pid!) ?? []) : [];
    const inLayout = (at: bigint) =>
      mine.some((r) => at >= r.vaddr && at < r.vaddr + BigInt(r.nrPages * PAGE_SIZE));
    // Every dumped page must be in the live layout or in the state: counted a run at a time (the layout's regions
    // of a process do not overlap), page by page only to name the first that is in neither.
    for (const [hex, nrPages, flags] of task.runs) {
      if (!(flags & PE_PRESENT)) continue;
      out.pages += nrPages;
      const from = BigInt(`0x${hex}`);
      const to = from + BigInt(nrPages * PAGE_SIZE);
      let covered = 0;
      for (const r of mine) {
        const end = r.vaddr + BigInt(r.nrPages * PAGE_SIZE);
        const lo = r.vaddr > from ? r.vaddr : from;
        const hi = end < to ? end : to;
        if (hi > lo) covered += Number(hi - lo) / PAGE_SIZE;
      }
      let extra = 0;
      let extraOutside = 0;
      for (const at of extras.keys())
        if (at >= from && at < to) {
          extra++;
          if (!inLayout(at)) extraOutside++;
        }
      if (covered + extraOutside < nrPages)
        for (let i = 0; i < nrPages; i++) {
          const at = from + BigInt(i * PAGE_SIZE);
          if (!extras.has(at) && !inLayout(at))
            throw new InputError(
              `${what}: page 0x${at.toString(16)} of task ${task.id} is neither in the page store nor in the state`,
            );
        }
      out.fromStore += nrPages - extra;
    }
    const id = pagesId++;
    const extraRuns = pageRunsOf(extras);
    out.fromState += extras.size;
    if (k >= 0) {
      renameSync(processes[k].path, join(u.images, `pages-${id}.img`));
      const enc = encodePagemap(extraRuns, id);
      writeFileSync(join(parent, `pages-${id}.img`), enc.pages, { mode: 0o600 });
      writeFileSync(join(parent, `pagemap-${task.id}.img`), enc.pagemap, { mode: 0o600 });
      const entries = [
        ...plan.get(k)!.keep.map((r) => ({ vaddr: r.vaddr, nrPages: r.nrPages, flags: PE_PRESENT })),
        ...extraRuns.map((r) => ({ vaddr: r.vaddr, nrPages: r.data!.length / PAGE_SIZE, flags: PE_PARENT })),
      ].sort((a, b) => (a.vaddr < b.vaddr ? -1 : a.vaddr > b.vaddr ? 1 : 0));
      writePagemapEntries(u.images, task.id, entries, { pagesId: id });
    } else {
      // Unknown to the live rounds: every page came with the state.
      writeFileSync(join(parent, `pages-${id}.img`), '');
      writePagemapEntries(parent, task.id, [], { pagesId: id });
      writePagemap(u.images, task.id, extraRuns, { pagesId: id });
    }
  }
  symlinkSync(PARENT_DIR, join(u.images, PARENT_LINK));
  writeShmem(u.header, u.shmemFile, u.images, pagesId, out, what);
  return out;
}

/** The stretches of region r that no dumped run covers. */
function holes(
  r: { vaddr: bigint; nrPages: number },
  dumped: readonly { vaddr: bigint; nrPages: number }[],
): { from: bigint; to: bigint }[] {
  const end = r.vaddr + BigInt(r.nrPages * PAGE_SIZE);
  const cover = dumped
    .map((d) => ({ from: d.vaddr, to: d.vaddr + BigInt(d.nrPages * PAGE_SIZE) }))
    .filter((d) => d.to > r.vaddr && d.from < end)
    .sort((a, b) => (a.from < b.from ? -1 : 1));
  const out: { from: bigint; to: bigint }[] = [];
  let at = r.vaddr;
  for (const c of cover) {
    if (c.from > at) out.push({ from: at, to: c.from });
    if (c.to > at) at = c.to;
  }
  if (at < end) out.push({ from: at, to: end });
  return out;
}

/** Single pages (address -> contents) as runs of consecutive pages, in address order. */
function pageRunsOf(pages: Map<bigint, Buffer>): PageRun[] {
  const list = [...pages.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const runs: PageRun[] = [];
  let cur: { vaddr: bigint; parts: Buffer[] } | null = null;
  for (const [at, data] of list) {
    if (cur && cur.vaddr + BigInt(cur.parts.length * PAGE_SIZE) === at) cur.parts.push(data);
    else {
      if (cur) runs.push({ vaddr: cur.vaddr, data: Buffer.concat(cur.parts), flags: PE_PRESENT });
      cur = { vaddr: at, parts: [data] };
    }
  }
  if (cur) runs.push({ vaddr: cur.vaddr, data: Buffer.concat(cur.parts), flags: PE_PRESENT });
  return runs;
}

/** Name of the parent image directory inside images/, and CRIU's link to it. */
export const PARENT_DIR = 'parent.d';
const PARENT_LINK = 'parent';

/**
 * Like rebuildCheckpoint, for a page store kept in one file per process (ProcessFilesBacking) whose files already
 * are `images/parent.d/pages-<k+1>.img`: they become a CRIU parent image (a pagemap per process covering its live
 * layout), and the final images point into it with PE_PARENT entries. Only pages outside the layout are written:
 * the commit costs what the state costs, not what the memory does.
 */
export function rebuildOnParent(
  state: StoredState,
  layout: Layout,
  processes: readonly { pid: number }[],
  outDir: string,
  what = 'state',
): RebuildResult {
  return onParent(unpack(state, layout, outDir, what), layout, processes, what);
}

function onParent(
  u: Unpacked,
  layout: Layout,
  processes: readonly { pid: number }[],
  what: string,
): RebuildResult {
  const parent = join(u.images, PARENT_DIR);
  mkdirSync(parent, { recursive: true });
  const out: RebuildResult = { dir: dirname(u.images), pages: 0, fromStore: 0, fromState: 0 };
  // The parent: each process's regions, in layout order, are its pages file as it stands.
  const regionsOf = new Map<number, { vaddr: bigint; nrPages: number; flags: number }[]>();
  for (const r of layout.regions) {
    const list = regionsOf.get(r.pid ?? 0) ?? [];
    list.push({ vaddr: BigInt(`0x${r.start.replace(/^0x/, '')}`), nrPages: r.pages, flags: PE_PRESENT });
    regionsOf.set(r.pid ?? 0, list);
  }
  let emptyPages = 0;
  for (const task of u.header.tasks) {
    const pid = u.pidOf.get(task.id);
    const k = pid === undefined ? -1 : processes.findIndex((p) => p.pid === pid);
    if (k >= 0) writePagemapEntries(parent, task.id, regionsOf.get(pid!)!, { pagesId: k + 1 });
    else {
      // A process the live rounds did not know: all its pages come with the state. An empty parent pagemap.
      emptyPages ||= processes.length + 1;
      writeFileSync(join(parent, `pages-${emptyPages}.img`), '');
      writePagemapEntries(parent, task.id, [], { pagesId: emptyPages });
    }
  }
  symlinkSync(PARENT_DIR, join(u.images, PARENT_LINK));
  writeTasks(u, what, out, (at, _g, n) => ({ vaddr: at, nrPages: n, flags: PE_PARENT }));
  return out;
}

/** Where the pages of a post-copy restore come from: the store (layout page g) or the state (extras). */
export interface PostcopyPages {
  /**
   * The page run of task `task` (as the dump names it) at vaddr: `first` layout page and how many follow in the same
   * region, or the pages the state carries from vaddr on (consecutive); null when neither holds vaddr.
   */
  lookup(task: number, vaddr: bigint): { first: number; left: number } | { extras: Buffer[] } | null;
  /** Pages restored eagerly (they must be in the store before the restore), and lazily. */
  eagerPages: number;
  lazyPages: number;
}

/**
 * The checkpoint for a post-copy restore (`criu restore --lazy-pages` with `criu lazy-pages --page-server`): every
 * pagemap as CRIU dumped it; each task's pages image is a sparse file of the right size in which only the pages
 * restored eagerly are written (from the store, which must hold them, or from the state); the others are served to
 * the lazy-pages daemon, from the store as they arrive (src/criu/lazyserver.ts). `isPresent(g)` says whether the
 * store holds layout page g; `read(g, n)` reads n of them.
 */
export function rebuildForPostcopy(
  state: StoredState,
  layout: Layout,
  isPresent: (g: number) => boolean,
  read: (first: number, count: number) => Buffer,
  outDir: string,
  what = 'state',
): RebuildResult & PostcopyPages {
  const u = unpack(state, layout, outDir, what);
  const out: RebuildResult = { dir: outDir, pages: 0, fromStore: 0, fromState: 0 };
  let pagesId = 1;
  const sizes = new Map<number, { id: number; pages: number }>();
  for (const task of u.header.tasks) {
    const entries = task.runs.map(([hex, nrPages, flags]) => ({ vaddr: BigInt(`0x${hex}`), nrPages, flags }));
    const pages = entries.reduce((a, e) => a + (e.flags & PE_PRESENT ? e.nrPages : 0), 0);
    const id = pagesId++;
    sizes.set(task.id, { id, pages });
    writePagemapEntries(u.images, task.id, entries, { pagesId: id });
    out.pages += pages;
  }
  writeShmem(u.header, u.shmemFile, u.images, pagesId, out, what);
  const planned = planLazy(u.images);
  const lookup = (task: number, vaddr: bigint) => {
    const extra = u.extrasOf.get(task);
    if (extra?.has(vaddr)) {
      const pages: Buffer[] = [];
      for (let at = vaddr; extra.has(at); at += BigInt(PAGE_SIZE)) pages.push(extra.get(at)!);
      return { extras: pages };
    }
    const pid = u.pidOf.get(task);
    if (pid === undefined) return null;
    const r = u.index.runAt(pid, vaddr);
    return r.first < 0 ? null : r;
  };
  let eagerPages = 0;
  for (const task of u.header.tasks) {
    const { id, pages } = sizes.get(task.id)!;
    const file = join(u.images, `pages-${id}.img`);
    const fd = openSync(file, 'w', 0o600);
    try {
      ftruncateSync(fd, pages * PAGE_SIZE);
      // The eager runs: those markLazy will leave without PE_LAZY (all of them where it cannot tell).
      const plan = planned?.plans.find((p) => p.pid === task.id);
      const eager = (
        plan?.entries ??
        task.runs.map(([hex, nrPages, flags]) => ({ vaddr: BigInt(`0x${hex}`), nrPages, flags }))
      ).filter((e) => e.flags & PE_PRESENT && !(e.flags & (PE_LAZY | PE_PARENT)));
      // File offset of each page: its index among the PE_PRESENT pages of the task's pagemap, in order.
      const present = task.runs
        .filter(([, , flags]) => flags & PE_PRESENT)
        .map(([hex, nrPages]) => ({ vaddr: BigInt(`0x${hex}`), nrPages }));
      const offsetOf = (at: bigint): number => {
        let before = 0;
        for (const r of present) {
          const end = r.vaddr + BigInt(r.nrPages * PAGE_SIZE);
          if (at >= r.vaddr && at < end)
            return (before + Number((at - r.vaddr) / BigInt(PAGE_SIZE))) * PAGE_SIZE;
          before += r.nrPages;
        }
        throw new InputError(`${what}: page 0x${at.toString(16)} of task ${task.id} is not in its pagemap`);
      };
      for (const e of eager)
        for (let k = 0; k < e.nrPages;) {
          const at = e.vaddr + BigInt(k * PAGE_SIZE);
          const where = lookup(task.id, at);
          if (!where)
            throw new InputError(
              `${what}: page 0x${at.toString(16)} of task ${task.id} is neither in the page store nor in the state`,
            );
          let data: Buffer;
          if ('extras' in where) {
            data = Buffer.concat(where.extras.slice(0, e.nrPages - k));
            out.fromState += data.length / PAGE_SIZE;
          } else {
            const n = Math.min(e.nrPages - k, where.left);
            for (let i = 0; i < n; i++)
              if (!isPresent(where.first + i))
                throw new InputError(
                  `${what}: page 0x${(at + BigInt(i * PAGE_SIZE)).toString(16)} of task ${task.id} is restored eagerly but has not arrived`,
                );
            data = read(where.first, n);
            out.fromStore += n;
          }
          writeSync(fd, data, 0, data.length, offsetOf(at));
          k += data.length / PAGE_SIZE;
          eagerPages += data.length / PAGE_SIZE;
        }
    } finally {
      closeSync(fd);
    }
  }
  return { ...out, lookup, eagerPages, lazyPages: planned ? planned.result.lazyPages : 0 };
}
