/**
 * CRIU's page-server protocol, receiving side (see docs/criu-pageserver.md).
 *
 * `criu dump --page-server --ps-socket 3` writes every image except the memory into its -D directory and streams
 * the memory to a page server over one connection (a socket pair precog made, see PS_SOCKET_FD): per task (and per shared anonymous segment) an
 * OPEN2 naming the pagemap, then the runs of pages (ADD_F with pagemap flags in the high bits of the command, the
 * page data right after the header when the run is PE_PRESENT; HOLE for pages in a parent dump), and a final CLOSE.
 * precog's source agent plays the page server: it keeps the pages in memory, compares each with what the
 * destination already holds (the `have` predicate) and forwards only the changed ones.
 *
 * Wire format (CRIU's struct page_server_iov, host byte order = little-endian on every CRIU target precog supports):
 *   CRIU <= 4.1: u32 cmd, u32 nr_pages, u64 vaddr, u64 dst_id              (24 bytes)
 *   CRIU >= 4.2: u32 cmd, u32 padding, u64 nr_pages, u64 vaddr, u64 dst_id (32 bytes)
 * cmd = flags << 16 | command; dst_id = id << 8 | type (1: task pagemap, id = pid; 2: shmem pagemap, id = shmid).
 * Replies: OPEN2 -> 1 byte has_parent; PARENT -> 4-byte int has_parent; CLOSE / FORCE_CLOSE -> 4-byte int status 0.
 */
import { writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { constants as bufferConstants } from 'node:buffer';
import { join } from 'node:path';
import { ProtocolError } from '../util/errors.ts';
import {
  encodePagemap,
  PAGE_SIZE,
  PE_PARENT,
  PE_PRESENT,
  writePagemap,
  type PageRun,
  type PagemapFormat,
} from './pages.ts';

// ---------------------------------------------------------------------------------------------------------------
// Protocol constants

export const PS_IOV_ADD = 1;
export const PS_IOV_HOLE = 2;
export const PS_IOV_OPEN = 3;
export const PS_IOV_OPEN2 = 4;
export const PS_IOV_PARENT = 5;
export const PS_IOV_ADD_F = 6;
export const PS_IOV_GET = 7;
/** Named FLUSH before CRIU 3.17 (same number, same meaning: end of the session, answered with a status). */
export const PS_IOV_CLOSE = 0x1023;
/** Named FLUSH_N_CLOSE before CRIU 3.17: CLOSE sent when the socket was inherited (`--ps-socket`). */
export const PS_IOV_FORCE_CLOSE = 0x1024;

const PS_CMD_BITS = 16;
const PS_CMD_MASK = (1 << PS_CMD_BITS) - 1;
const PS_TYPE_BITS = 8n;
const PS_TYPE_MASK = (1n << PS_TYPE_BITS) - 1n;
export const PS_TYPE_PID = 1;
export const PS_TYPE_SHMEM = 2;
/**
 * Type numbers older CRIU versions (1.0 to 3.2) put in dst_id (their CR_FD_* values); CRIU's page server still
 * accepts them, so does precog.
 */
const LEGACY_PID_TYPES = new Set([10, 11, 16, 17]);
const LEGACY_SHMEM_TYPES = new Set([27, 28, 29, 32, 33, 34]);

const COMMAND_NAMES: Record<number, string> = {
  [PS_IOV_ADD]: 'ADD',
  [PS_IOV_HOLE]: 'HOLE',
  [PS_IOV_OPEN]: 'OPEN',
  [PS_IOV_OPEN2]: 'OPEN2',
  [PS_IOV_PARENT]: 'PARENT',
  [PS_IOV_ADD_F]: 'ADD_F',
  [PS_IOV_GET]: 'GET',
  [PS_IOV_CLOSE]: 'CLOSE',
  [PS_IOV_FORCE_CLOSE]: 'FORCE_CLOSE',
};

/** "ADD_F", or "0x9" for a command CRIU does not define. */
export function commandName(cmd: number): string {
  return COMMAND_NAMES[cmd & PS_CMD_MASK] ?? `0x${(cmd & PS_CMD_MASK).toString(16)}`;
}

/** The two layouts of struct page_server_iov: 24 bytes up to CRIU 4.1, 32 bytes (u64 nr_pages) from CRIU 4.2. */
export type IovLayout = 24 | 32;

/** The layout a CRIU version sends ("4.1.1" -> 24, "4.2" and later -> 32). */
export function iovLayoutOfVersion(version: string): IovLayout {
  const m = /^(\d+)\.(\d+)/.exec(version);
  if (!m) throw new RangeError(`not a CRIU version: ${JSON.stringify(version)}`);
  const [major, minor] = [Number(m[1]), Number(m[2])];
  return major > 4 || (major === 4 && minor >= 2) ? 32 : 24;
}

/**
 * The pagemap format of the CRIU that sent a stream in this layout (24: CRIU <= 4.1, page counts in
 * compat_nr_pages; 32: CRIU >= 4.2, page counts in nr_pages): what its own page server would write.
 */
export function pagemapFormatOfLayout(layout: IovLayout): PagemapFormat {
  return layout === 32 ? 'nr_pages64' : 'compat';
}

export type PagemapKind = 'pid' | 'shmem';

export interface PageServerIov {
  /** The whole u32: command in the low 16 bits, flags in the high 16. */
  cmd: number;
  nrPages: number;
  vaddr: bigint;
  dstId: bigint;
}

/** Encodes one page_server_iov (what CRIU sends; used by tests and by a sending side). */
export function encodeIov(iov: PageServerIov, layout: IovLayout = 24): Buffer {
  const b = Buffer.alloc(layout);
  b.writeUInt32LE(iov.cmd >>> 0, 0);
  if (layout === 24) {
    b.writeUInt32LE(iov.nrPages, 4);
    b.writeBigUInt64LE(iov.vaddr, 8);
    b.writeBigUInt64LE(iov.dstId, 16);
  } else {
    b.writeBigUInt64LE(BigInt(iov.nrPages), 8);
    b.writeBigUInt64LE(iov.vaddr, 16);
    b.writeBigUInt64LE(iov.dstId, 24);
  }
  return b;
}

/** cmd with pagemap flags in the high bits (CRIU's encode_ps_cmd). */
export function psCmd(command: number, flags = 0): number {
  return ((flags << PS_CMD_BITS) | command) >>> 0;
}

/** dst_id of a task's (pid) or a shared memory segment's (shmem) pagemap (CRIU's encode_pm). */
export function encodeDstId(kind: PagemapKind, id: number): bigint {
  return (BigInt(id) << PS_TYPE_BITS) | BigInt(kind === 'pid' ? PS_TYPE_PID : PS_TYPE_SHMEM);
}

/** The pagemap a dst_id names, or undefined for a type CRIU does not know (CRIU's decode_pm). */
export function decodeDstId(dstId: bigint): { kind: PagemapKind; id: number } | undefined {
  const type = Number(dstId & PS_TYPE_MASK);
  const id = Number(dstId >> PS_TYPE_BITS);
  if (type === PS_TYPE_PID || LEGACY_PID_TYPES.has(type)) return { kind: 'pid', id };
  if (type === PS_TYPE_SHMEM || LEGACY_SHMEM_TYPES.has(type)) return { kind: 'shmem', id };
  return undefined;
}

function hex(n: bigint | number): string {
  return `0x${n.toString(16)}`;
}

function describeIov(iov: PageServerIov): string {
  const flags = iov.cmd >>> PS_CMD_BITS;
  return (
    `{cmd ${hex(iov.cmd)} (${commandName(iov.cmd)}${flags ? `, flags ${flags}` : ''}), nr_pages ${iov.nrPages}, ` +
    `vaddr ${hex(iov.vaddr)}, dst_id ${hex(iov.dstId)}}`
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Results

/** One run of pages as CRIU sent it (one ADD/ADD_F/HOLE command: later one pagemap_entry). */
export interface ReceivedRun {
  vaddr: bigint;
  nrPages: number;
  /** pagemap flags: PE_PRESENT (data follows), PE_LAZY, PE_PARENT (HOLE). */
  flags: number;
  /** nrPages * PAGE_SIZE bytes when PE_PRESENT, else null (also when only changed pages were kept). */
  data: Buffer | null;
  /** With keepOnlyChanged: the run's pages the destination lacks, and how many it already holds. */
  changed?: ReceivedPage[];
  unchanged?: number;
  /** Stream offset of the command's header (for error messages). */
  offset: number;
  /**
   * A local dump's run (src/criu/localdump.ts, deferPresent): pages with data the destination lacks that were not
   * read, by address; they are read from `source` (the pages file, where the run's data starts) when sent.
   */
  deferred?: bigint[];
  source?: { file: string; offset: number };
}

export interface ReceivedPage {
  vaddr: bigint;
  /** PAGE_SIZE bytes (a view into the run's data). */
  bytes: Buffer;
}

export interface PageCounts {
  /** Pages with data (PE_PRESENT). */
  pages: number;
  /** Pages with data the destination does not hold: to forward. */
  changed: number;
  /** Pages with data the destination already holds with the same bytes. */
  unchanged: number;
  /** Pages announced without data (PE_PARENT holes, PE_LAZY without PE_PRESENT). */
  absent: number;
}

/** The memory of one task (kind 'pid', id = its PID in the dump) or one shared anonymous segment ('shmem'). */
export interface ReceivedMemory {
  kind: PagemapKind;
  id: number;
  /** Runs in ascending address order (checked not to overlap). */
  runs: ReceivedRun[];
  /** Every page with data, in ascending address order. */
  pages: ReceivedPage[];
  /** The pages the destination does not hold (every page when no `have` predicate was given). */
  changed: ReceivedPage[];
  counts: PageCounts;
}

export interface ReceivedDump {
  /** Per task, by PID (pagemap-<pid>.img). */
  tasks: Map<number, ReceivedMemory>;
  /** Per shared anonymous memory segment, by shmid (pagemap-shmem-<shmid>.img). */
  shmem: Map<number, ReceivedMemory>;
  /** Sums over tasks and shmem. */
  counts: PageCounts;
  /** Bytes received on the connection, headers included. */
  bytes: number;
  /** Commands received, by name. */
  commands: Record<string, number>;
  /** The page_server_iov layout the stream used. */
  layout: IovLayout;
}

/** Whether the destination already holds this page with exactly these bytes. */
export type HavePredicate = (id: number, vaddr: bigint, bytes: Buffer, kind: PagemapKind) => boolean;

export interface SessionOptions {
  /**
   * The destination's knowledge: pages for which it returns true are "unchanged" and are not in `changed`.
   * Without it every page is changed (the destination holds nothing).
   */
  have?: HavePredicate;
  /** page_server_iov layout; 'auto' (default) tells them apart on the first OPEN/OPEN2/PARENT (see docs). */
  layout?: IovLayout | 'auto';
  /** Layout assumed when 'auto' cannot tell (a stream that does not start with OPEN/OPEN2/PARENT). Default 24. */
  fallbackLayout?: IovLayout;
  /** Refuse a stream carrying more page data than this (bytes). Default: no limit. */
  maxBytes?: number;
  /** Called for each run once its data has arrived (e.g. to start forwarding before the dump ends). */
  onRun?: (memory: { kind: PagemapKind; id: number }, run: ReceivedRun) => void;
  /**
   * Keep only the pages of tasks that `have` says the destination lacks, classifying each page as it arrives:
   * memory stays proportional to what changed, not to the dump (runs then carry `changed`/`unchanged` instead of
   * data, and `pages` lists only the changed ones). Shared memory is kept whole. Needs `have`.
   */
  keepOnlyChanged?: boolean;
}

/** A stream CRIU (or anyone) sent that precog cannot accept; names the command and the stream offset. */
export class PageServerError extends ProtocolError {
  constructor(
    message: string,
    readonly offset: number,
    readonly command?: string,
  ) {
    super(`page server: at offset ${offset}: ${message}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The protocol state machine (no I/O: bytes in, replies out)

interface Current {
  kind: PagemapKind;
  id: number;
  dstId: bigint;
}

interface Collecting {
  kind: PagemapKind;
  id: number;
  runs: ReceivedRun[];
}

/**
 * One page-server session as a state machine: `push` the bytes CRIU sends, write back the replies it returns;
 * `finish` once the connection ended. Throws PageServerError on bad input.
 */
export class PageServerSession {
  private readonly opts: SessionOptions;
  private layout: IovLayout | undefined;
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Stream offset of the first byte not consumed yet. */
  private offset = 0;
  private current: Current | undefined;
  private readonly memories = new Map<string, Collecting>();
  private readonly order: string[] = [];
  private data:
    { run: ReceivedRun; filled: number; iov: PageServerIov; memory: Collecting; len: number } | undefined;
  /** A page that arrived split over chunks (keepOnlyChanged), and the slab changed pages are copied into. */
  private readonly split = Buffer.allocUnsafe(PAGE_SIZE);
  private slab = Buffer.alloc(0);
  private slabUsed = 0;
  private dataBytes = 0;
  private last: { name: string; offset: number } | undefined;
  private readonly commands: Record<string, number> = {};
  /** Stream offset at which CLOSE was answered, once it was. */
  private closedAt: number | undefined;
  private failed: PageServerError | undefined;

  constructor(opts: SessionOptions = {}) {
    this.opts = opts;
    if (opts.layout !== undefined && opts.layout !== 'auto') this.layout = opts.layout;
  }

  /** True once CLOSE / FORCE_CLOSE was received and answered: the dump sent everything. */
  get closed(): boolean {
    return this.closedAt !== undefined;
  }

  /** Bytes consumed so far. */
  get position(): number {
    return this.offset;
  }

  /** Feeds received bytes; returns the replies to send, in order. */
  push(chunk: Buffer): Buffer[] {
    if (this.failed) throw this.failed;
    try {
      return this.pushInner(chunk);
    } catch (err) {
      if (err instanceof PageServerError) this.failed = err;
      throw err;
    }
  }

  private pushInner(chunk: Buffer): Buffer[] {
    const replies: Buffer[] = [];
    if (chunk.length === 0) return replies;
    if (this.closedAt !== undefined) {
      this.afterClose(chunk);
      return replies;
    }
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    for (;;) {
      if (this.data) {
        if (!this.fillData()) break;
        continue;
      }
      if (this.closedAt !== undefined) {
        // Bytes that came in the same chunk as CLOSE.
        const rest = Buffer.concat(this.chunks, this.buffered);
        this.chunks = [];
        this.buffered = 0;
        if (rest.length) this.afterClose(rest);
        break;
      }
      const size = this.headerSize();
      if (size === undefined || this.buffered < size) break;
      const at = this.offset;
      const raw = this.take(size);
      const reply = this.command(this.decode(raw), at);
      if (reply) replies.push(reply);
    }
    return replies;
  }

  /**
   * After CLOSE CRIU sends nothing. The one tolerated exception: a stream of CRIU >= 4.2 (32-byte headers) that
   * began with CLOSE was read with 24-byte headers; its last 8 bytes (zeros) arrive afterwards.
   */
  private afterClose(bytes: Buffer): void {
    const at = this.offset;
    const pending = at - (this.closedAt as number);
    if (this.layoutGuessed && pending + bytes.length <= 8 && bytes.every((b) => b === 0)) {
      this.offset += bytes.length;
      return;
    }
    throw new PageServerError(
      `${bytes.length} bytes after CLOSE (at offset ${this.closedAt}); CRIU sends nothing after it`,
      at,
      'CLOSE',
    );
  }

  private layoutGuessed = false;

  /** The header size, deciding the layout on the first header when 'auto'; undefined until 24 bytes are there. */
  private headerSize(): IovLayout | undefined {
    if (this.layout) return this.layout;
    if (this.buffered < 24) return undefined;
    const head = this.peek(24);
    const command = head.readUInt32LE(0) & PS_CMD_MASK;
    if (command === PS_IOV_OPEN || command === PS_IOV_OPEN2 || command === PS_IOV_PARENT) {
      // These carry vaddr 0 and a non-zero dst_id (its type is never 0): bytes 16..24 are the dst_id in the
      // 24-byte layout and the vaddr (0) in the 32-byte one.
      this.layout = head.readBigUInt64LE(16) === 0n ? 32 : 24;
    } else {
      this.layout = this.opts.fallbackLayout ?? 24;
      this.layoutGuessed = true;
    }
    return this.layout;
  }

  private decode(raw: Buffer): PageServerIov {
    if (raw.length === 24)
      return {
        cmd: raw.readUInt32LE(0),
        nrPages: raw.readUInt32LE(4),
        vaddr: raw.readBigUInt64LE(8),
        dstId: raw.readBigUInt64LE(16),
      };
    const nr = raw.readBigUInt64LE(8);
    return {
      cmd: raw.readUInt32LE(0),
      nrPages: nr > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(nr),
      vaddr: raw.readBigUInt64LE(16),
      dstId: raw.readBigUInt64LE(24),
    };
  }

  /** Handles one header; returns the reply CRIU waits for, if any. */
  private command(iov: PageServerIov, at: number): Buffer | undefined {
    const command = iov.cmd & PS_CMD_MASK;
    const flags = iov.cmd >>> PS_CMD_BITS;
    const name = commandName(iov.cmd);
    this.commands[name] = (this.commands[name] ?? 0) + 1;
    this.last = { name, offset: at };
    const fail = (why: string) => new PageServerError(`${name} ${describeIov(iov)}: ${why}`, at, name);
    switch (command) {
      case PS_IOV_OPEN:
      case PS_IOV_OPEN2: {
        this.current = this.open(iov, fail);
        // OPEN2 waits for one byte: whether a parent image (pre-dump) exists on this side. precog keeps no
        // parent images, so CRIU sends every page (no HOLEs).
        return command === PS_IOV_OPEN2 ? Buffer.alloc(1) : undefined;
      }
      case PS_IOV_PARENT: {
        this.open(iov, fail, false);
        return Buffer.alloc(4); // int has_parent = 0
      }
      case PS_IOV_ADD:
      case PS_IOV_ADD_F:
      case PS_IOV_HOLE: {
        const peFlags = command === PS_IOV_ADD_F ? flags : command === PS_IOV_ADD ? PE_PRESENT : PE_PARENT;
        if (!this.current || this.current.dstId !== iov.dstId) {
          // CRIU's own page server accepts this ("Deprecated IO w/o open") by opening the pagemap implicitly.
          this.current = this.open(iov, fail);
        }
        if (iov.nrPages <= 0) throw fail('a run of 0 pages');
        if (iov.vaddr % BigInt(PAGE_SIZE) !== 0n) throw fail('vaddr is not page-aligned');
        if (iov.vaddr + BigInt(iov.nrPages) * BigInt(PAGE_SIZE) > 1n << 64n)
          throw fail('the run ends beyond the 64-bit address space');
        const memory = this.memories.get(this.key(this.current)) as Collecting;
        const run: ReceivedRun = {
          vaddr: iov.vaddr,
          nrPages: iov.nrPages,
          flags: peFlags,
          data: null,
          offset: at,
        };
        memory.runs.push(run);
        if (!(peFlags & PE_PRESENT)) {
          this.opts.onRun?.({ kind: memory.kind, id: memory.id }, run);
          return undefined;
        }
        const len = iov.nrPages * PAGE_SIZE;
        if (len > bufferConstants.MAX_LENGTH)
          throw fail(`${len} bytes of data in one run is more than precog takes`);
        this.dataBytes += len;
        if (this.opts.maxBytes !== undefined && this.dataBytes > this.opts.maxBytes)
          throw fail(`the stream carries more than ${this.opts.maxBytes} bytes of pages (maxBytes)`);
        if (this.opts.keepOnlyChanged && this.opts.have && memory.kind === 'pid') {
          run.changed = [];
          run.unchanged = 0;
          this.data = { run, filled: 0, iov, memory, len };
        } else {
          run.data = Buffer.allocUnsafe(len);
          this.data = { run, filled: 0, iov, memory, len };
        }
        return undefined;
      }
      case PS_IOV_CLOSE:
      case PS_IOV_FORCE_CLOSE:
        this.closedAt = this.offset;
        return Buffer.alloc(4); // int32 status 0: everything was received
      case PS_IOV_GET:
        throw fail('a lazy-pages request; this receiver takes a dump (it serves no pages)');
      default:
        throw fail('unknown command');
    }
  }

  private key(c: { kind: PagemapKind; id: number }): string {
    return `${c.kind}:${c.id}`;
  }

  private open(iov: PageServerIov, fail: (why: string) => PageServerError, create = true): Current {
    const pm = decodeDstId(iov.dstId);
    if (!pm) throw fail(`unknown pagemap type ${Number(iov.dstId & PS_TYPE_MASK)} in dst_id`);
    const cur = { ...pm, dstId: iov.dstId };
    const key = this.key(cur);
    if (create && !this.memories.has(key)) {
      this.memories.set(key, { kind: pm.kind, id: pm.id, runs: [] });
      this.order.push(key);
    }
    return cur;
  }

  /** Copies buffered bytes into the current run's data; true when the run is complete. */
  private fillData(): boolean {
    const d = this.data as NonNullable<typeof this.data>;
    if (!d.run.data) return this.classifyData(d);
    const data = d.run.data;
    while (d.filled < data.length && this.chunks.length) {
      const c = this.chunks[0];
      const n = Math.min(c.length, data.length - d.filled);
      c.copy(data, d.filled, 0, n);
      d.filled += n;
      this.consume(n);
    }
    if (d.filled < data.length) return false;
    this.data = undefined;
    this.opts.onRun?.({ kind: d.memory.kind, id: d.memory.id }, d.run);
    return true;
  }

  /** keepOnlyChanged: classifies the run's pages as they arrive, keeping a copy of the changed ones only. */
  private classifyData(d: NonNullable<typeof this.data>): boolean {
    const have = this.opts.have as HavePredicate;
    const { run, memory } = d;
    while (d.filled < d.len && this.chunks.length) {
      const within = d.filled % PAGE_SIZE;
      const c = this.chunks[0];
      let page: Buffer | undefined;
      if (within === 0 && c.length >= PAGE_SIZE) {
        page = c.subarray(0, PAGE_SIZE);
        d.filled += PAGE_SIZE;
        this.consume(PAGE_SIZE);
      } else {
        const n = Math.min(c.length, PAGE_SIZE - within);
        c.copy(this.split, within, 0, n);
        d.filled += n;
        this.consume(n);
        if (d.filled % PAGE_SIZE === 0) page = this.split;
      }
      if (!page) continue;
      const vaddr = run.vaddr + BigInt(d.filled - PAGE_SIZE);
      if (have(memory.id, vaddr, page, memory.kind)) run.unchanged!++;
      else run.changed!.push({ vaddr, bytes: this.keep(page) });
    }
    if (d.filled < d.len) return false;
    this.data = undefined;
    this.opts.onRun?.({ kind: memory.kind, id: memory.id }, run);
    return true;
  }

  /** A copy of a page, from a slab (one allocation per 256 pages). */
  private keep(page: Buffer): Buffer {
    if (this.slabUsed + PAGE_SIZE > this.slab.length) {
      this.slab = Buffer.allocUnsafe(256 * PAGE_SIZE);
      this.slabUsed = 0;
    }
    const out = this.slab.subarray(this.slabUsed, this.slabUsed + PAGE_SIZE);
    page.copy(out);
    this.slabUsed += PAGE_SIZE;
    return out;
  }

  private consume(n: number): void {
    this.offset += n;
    this.buffered -= n;
    while (n > 0) {
      const c = this.chunks[0];
      if (c.length <= n) {
        n -= c.length;
        this.chunks.shift();
      } else {
        this.chunks[0] = c.subarray(n);
        n = 0;
      }
    }
  }

  private peek(n: number): Buffer {
    if (this.chunks[0].length >= n) return this.chunks[0].subarray(0, n);
    return Buffer.concat(this.chunks, this.buffered).subarray(0, n);
  }

  private take(n: number): Buffer {
    const out = Buffer.from(this.peek(n));
    this.consume(n);
    return out;
  }

  /**
   * The connection ended: checks that the dump completed (CLOSE answered, nothing half-received) and returns what
   * was received, sorted and classified.
   */
  finish(): ReceivedDump {
    if (this.failed) throw this.failed;
    const after = this.last ? `, after ${this.last.name} at offset ${this.last.offset}` : '';
    if (this.data) {
      const { run, filled, iov, len } = this.data;
      throw new PageServerError(
        `the connection ended inside the data of ${commandName(iov.cmd)} at offset ${run.offset} ` +
          `(${describeIov(iov)}): ${filled} of ${len} bytes`,
        this.offset,
        commandName(iov.cmd),
      );
    }
    if (this.closedAt === undefined) {
      if (this.buffered > 0)
        throw new PageServerError(
          `the connection ended inside a page_server_iov: ${this.buffered} of ${this.layout ?? 24} bytes${after}`,
          this.offset,
          this.last?.name,
        );
      throw new PageServerError(
        `the connection ended without CLOSE${after}: the dump did not complete`,
        this.offset,
        this.last?.name,
      );
    }
    return this.result();
  }

  private result(): ReceivedDump {
    const total: PageCounts = { pages: 0, changed: 0, unchanged: 0, absent: 0 };
    const tasks = new Map<number, ReceivedMemory>();
    const shmem = new Map<number, ReceivedMemory>();
    for (const key of this.order) {
      const m = this.memories.get(key) as Collecting;
      const mem = classify(m.kind, m.id, m.runs, this.opts.have);
      for (const k of ['pages', 'changed', 'unchanged', 'absent'] as const) total[k] += mem.counts[k];
      (m.kind === 'pid' ? tasks : shmem).set(m.id, mem);
    }
    return {
      tasks,
      shmem,
      counts: total,
      bytes: this.offset,
      commands: { ...this.commands },
      layout: this.layout ?? 24,
    };
  }
}

function sortRuns(kind: PagemapKind, id: number, runs: ReceivedRun[]): ReceivedRun[] {
  const sorted = [...runs].sort((a, b) => (a.vaddr < b.vaddr ? -1 : a.vaddr > b.vaddr ? 1 : 0));
  for (let i = 1; i < sorted.length; i++) {
    const p = sorted[i - 1];
    const n = sorted[i];
    if (p.vaddr + BigInt(p.nrPages * PAGE_SIZE) > n.vaddr)
      throw new PageServerError(
        `${kind} ${id}: the run at ${hex(n.vaddr)} (${n.nrPages} pages, command at offset ${n.offset}) overlaps ` +
          `the run at ${hex(p.vaddr)} (${p.nrPages} pages, command at offset ${p.offset})`,
        n.offset,
      );
  }
  return sorted;
}

/** Splits runs into pages and classifies them with `have` (every page is changed without it). */
/** A task's or segment's runs as ReceivedMemory: sorted, checked, pages counted (exported for local dumps). */
export function classify(
  kind: PagemapKind,
  id: number,
  runs: ReceivedRun[],
  have?: HavePredicate,
): ReceivedMemory {
  const sorted = sortRuns(kind, id, runs);
  const pages: ReceivedPage[] = [];
  const changed: ReceivedPage[] = [];
  const counts: PageCounts = { pages: 0, changed: 0, unchanged: 0, absent: 0 };
  let deferred = 0;
  for (const run of sorted) {
    if (run.changed) {
      // Classified as it arrived (keepOnlyChanged): only the changed pages are here.
      for (const page of run.changed) {
        pages.push(page);
        changed.push(page);
      }
      counts.unchanged += run.unchanged ?? 0;
      deferred += run.deferred?.length ?? 0;
      continue;
    }
    if (!run.data) {
      counts.absent += run.nrPages;
      continue;
    }
    for (let i = 0; i < run.nrPages; i++) {
      const page = {
        vaddr: run.vaddr + BigInt(i * PAGE_SIZE),
        bytes: run.data.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE),
      };
      pages.push(page);
      if (have?.(id, page.vaddr, page.bytes, kind)) counts.unchanged++;
      else changed.push(page);
    }
  }
  counts.pages = pages.length + deferred + (sorted.some((r) => r.changed) ? counts.unchanged : 0);
  counts.changed = changed.length + deferred;
  return { kind, id, runs: sorted, pages, changed, counts };
}

/**
 * Classifies a received dump again against another `have` predicate (e.g. for another destination), returning a
 * new ReceivedDump that shares the page data.
 */
export function classifyDump(dump: ReceivedDump, have?: HavePredicate): ReceivedDump {
  const total: PageCounts = { pages: 0, changed: 0, unchanged: 0, absent: 0 };
  const redo = (src: Map<number, ReceivedMemory>) => {
    const out = new Map<number, ReceivedMemory>();
    for (const [id, m] of src) {
      const mem = classify(m.kind, id, m.runs, have);
      for (const k of ['pages', 'changed', 'unchanged', 'absent'] as const) total[k] += mem.counts[k];
      out.set(id, mem);
    }
    return out;
  };
  const tasks = redo(dump.tasks);
  const shmem = redo(dump.shmem);
  return { ...dump, tasks, shmem, counts: total };
}

// ---------------------------------------------------------------------------------------------------------------
// Writing what was received as CRIU images

/** The pagemap runs of a received memory, as CRIU sent them (one pagemap_entry per command, flags kept). */
export function receivedPageRuns(memory: ReceivedMemory): PageRun[] {
  return memory.runs.map((r) =>
    r.data
      ? { vaddr: r.vaddr, data: r.data, flags: r.flags }
      : { vaddr: r.vaddr, nrPages: r.nrPages, flags: r.flags },
  );
}

export interface WrittenImages {
  files: string[];
  pages: number;
  pagesBytes: number;
}

/**
 * Writes what CRIU's own page server would have written: pagemap-<pid>.img / pagemap-shmem-<shmid>.img with one
 * entry per received run (flags kept) and a pages-<n>.img each, n counting up from `firstPagesId` (default 1).
 * The page counts go where the sending CRIU puts them (`format`, default: pagemapFormatOfLayout(dump.layout)), so
 * that the pagemap images are byte for byte those of a plain dump.
 */
export function writeReceivedImages(
  dir: string,
  dump: ReceivedDump,
  opts: { firstPagesId?: number; format?: PagemapFormat } = {},
): WrittenImages {
  let pagesId = opts.firstPagesId ?? 1;
  const format = opts.format ?? pagemapFormatOfLayout(dump.layout);
  const out: WrittenImages = { files: [], pages: 0, pagesBytes: 0 };
  for (const m of dump.tasks.values()) {
    const w = writePagemap(dir, m.id, receivedPageRuns(m), { pagesId: pagesId++, format });
    out.files.push(w.pagemapFile, w.pagesFile);
    out.pages += w.pages;
    out.pagesBytes += w.pagesBytes;
  }
  for (const m of dump.shmem.values()) {
    const enc = encodePagemap(receivedPageRuns(m), pagesId, { format });
    const pm = join(dir, `pagemap-shmem-${m.id}.img`);
    const pg = join(dir, `pages-${pagesId++}.img`);
    writeFileSync(pg, enc.pages, { mode: 0o600 });
    writeFileSync(pm, enc.pagemap, { mode: 0o600 });
    out.files.push(pm, pg);
    out.pages += enc.entries.reduce((s, e) => s + e.nr_pages, 0);
    out.pagesBytes += enc.pages.length;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// The connection to CRIU

/**
 * The descriptor CRIU gets its page-server connection on (`--page-server --ps-socket 3`). precog spawns CRIU with
 * one end of a socket pair there (a Node `pipe` stdio entry is a Unix socket pair) and serves the other end: the
 * connection exists before CRIU starts, between precog and the one CRIU it spawned, so nothing listens and no
 * other process can connect (docs/security.md, "Local page servers").
 */
export const PS_SOCKET_FD = 3;

/** precog's end of a page-server connection whose other end a CRIU it spawns gets as descriptor PS_SOCKET_FD. */
export interface PsConnection {
  /** Takes precog's end of the pair; called once, right after CRIU was spawned. */
  attach(socket: Socket): void;
}

/**
 * The page server of one `criu dump --page-server --ps-socket 3` session: it answers what CRIU waits for on the
 * socket it is given, and when the dump closes the session resolves `done` with the pages. Bad input rejects
 * `done` with a PageServerError and resets the connection, which makes the dump fail. It never listens.
 */
export class PageServer implements PsConnection {
  /** The received dump, or the reason the session failed. */
  readonly done: Promise<ReceivedDump>;
  private readonly opts: SessionOptions;
  private socket: Socket | undefined;
  private settle!: { resolve: (d: ReceivedDump) => void; reject: (e: Error) => void };
  private settled = false;

  constructor(opts: SessionOptions = {}) {
    this.opts = opts;
    this.done = new Promise<ReceivedDump>((resolve, reject) => (this.settle = { resolve, reject }));
    // A caller that only closes the server must not get an unhandled rejection.
    this.done.catch(() => {});
  }

  attach(socket: Socket): void {
    if (this.socket || this.settled) {
      socket.destroy();
      throw new Error('page server: a second connection (one CRIU per page server)');
    }
    this.accept(socket, this.opts);
  }

  private finish(result: ReceivedDump | Error): void {
    if (this.settled) return;
    this.settled = true;
    if (result instanceof Error) this.settle.reject(result);
    else this.settle.resolve(result);
  }

  private accept(socket: Socket, opts: SessionOptions): void {
    this.socket = socket;
    const session = new PageServerSession(opts);
    let ended = false;
    const end = (err?: Error) => {
      if (ended) return;
      ended = true;
      if (err && !session.closed) {
        socket.destroy();
        this.finish(err);
        return;
      }
      try {
        this.finish(session.finish());
      } catch (e) {
        this.finish(e as Error);
      }
      socket.destroy();
    };
    socket.on('data', (chunk: Buffer) => {
      if (ended) return;
      let replies: Buffer[];
      try {
        replies = session.push(chunk);
      } catch (err) {
        // CRIU's next write fails (EPIPE): the dump fails instead of ending cleanly.
        socket.destroy();
        end(err as Error);
        return;
      }
      for (const r of replies) socket.write(r);
    });
    socket.on('end', () => end());
    socket.on('error', (err) =>
      end(
        session.closed
          ? undefined
          : new PageServerError(`connection error: ${err.message}`, session.position, undefined),
      ),
    );
    socket.on('close', () => end());
  }

  /** Drops a session in progress (its `done` rejects). */
  close(): Promise<void> {
    if (!this.settled) this.finish(new Error('page server closed before a dump completed'));
    this.socket?.destroy();
    return Promise.resolve();
  }
}
