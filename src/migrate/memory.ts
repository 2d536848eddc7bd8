import { xxh64 } from '@node-rs/xxhash';
import { closeSync, openSync, readdirSync, readFileSync, readlinkSync, readSync } from 'node:fs';
import type { Layout, MemorySource } from '../util/interfaces.ts';
import { PAGE_SIZE } from '../util/interfaces.ts';
import type { PagemapKind, ReceivedDump } from '../criu/pageserver.ts';
import type { ProcessTreeMemory } from '../memory/tree.ts';
import { Bitmap } from '../util/bitmap.ts';

/** A page of a CRIU dump that the live layout does not hold (a mapping made after the migration started). */
export interface ExtraPage {
  id: number;
  vaddr: bigint;
  bytes: Buffer;
}

/** The PIDs a process has in each PID namespace, outermost first (NSpid of /proc/PID/status). */
export function nsPids(pid: number): number[] {
  try {
    const m = /^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? m[1].trim().split(/\s+/).map(Number) : [pid];
  } catch {
    return [];
  }
}

/**
 * The machine PID of the process that is PID `id` in the PID namespace of `root` (a container's init, by machine
 * PID): how a task of a dump that the live layout does not hold (forked since) is found. Undefined when none is.
 */
export function taskInNamespaceOf(root: number, id: number): number | undefined {
  let ns: string;
  try {
    ns = readlinkSync(`/proc/${root}/ns/pid`);
  } catch {
    return undefined;
  }
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    const inner = nsPids(pid);
    if (inner.length === 0 || inner[inner.length - 1] !== id) continue;
    try {
      if (readlinkSync(`/proc/${pid}/ns/pid`) === ns) return pid;
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}

/**
 * The memory of a running container for the engine. Live rounds read the processes through /proc (the hash
 * tracker finds what they rewrite); the switchover is CRIU's: `freeze()` runs the dump the caller provides, which
 * stops the container and streams its memory to precog's page server. The server asks `holds()` of every page, so
 * the final copy is exactly the pages whose bytes differ from what the destination was sent (or that it never got),
 * read from CRIU's stream, not from /proc.
 */
export class ContainerMemory implements MemorySource {
  readonly layout: Layout;
  private readonly tree: ProcessTreeMemory;
  /** Pages handed to the engine for sending, and the hash of what was sent (for sources without a hash tracker). */
  private readonly sent: Bitmap;
  private readonly sentHash: BigUint64Array;
  /** CRIU's pagemap id (a PID as the dump names it) -> index into tree.processes. */
  private readonly byCriuId = new Map<number, number>();
  private final: {
    dirty: Bitmap;
    data: Map<number, Buffer>;
    extras: ExtraPage[];
    /** Pages to send that were not read at the stop: read from the frozen processes when sent (deferUnsent). */
    deferred: Bitmap | null;
    /** Pages to send that were not read at the stop: read from the dump's pages files when sent (deferPresent). */
    inFiles: Map<number, { file: string; offset: number }>;
  } | null = null;
  private readonly dump: () => Promise<ReceivedDump>;
  private readonly undump: () => Promise<void>;
  private frozenAt = -1;
  /** Pages CRIU sent that the destination already held with the same bytes. */
  unchanged = 0;

  /**
   * `dump` freezes the container and returns CRIU's page-server stream (it must call `holds` as its `have`
   * predicate); `undump` lets the container run again after a failed migration.
   */
  /**
   * `readBeforeDump`: the runtime's dump ends the processes (Podman's checkpoint), so the pages the final copy reads
   * from them (never sent, not dumped: untouched or unmodified file pages) are read just before the dump instead.
   */
  constructor(
    tree: ProcessTreeMemory,
    dump: () => Promise<ReceivedDump>,
    undump: () => Promise<void>,
    private readonly opts: {
      readBeforeDump?: boolean;
      /**
       * The pages never sent that the dump did not carry are read from the processes (frozen after the dump, until
       * the move ends) when the engine sends them, not at the stop: a post-copy's stop then reads no memory.
       */
      deferUnsent?: boolean;
      /** Awaited before the freeze (nothing stopped yet, not downtime): the last word on how to dump. */
      beforeFreeze?: () => Promise<void>;
    } = {},
  ) {
    this.tree = tree;
    this.layout = tree.layout;
    this.dump = dump;
    this.undump = undump;
    this.sent = new Bitmap(this.layout.pageCount);
    this.sentHash = new BigUint64Array(this.layout.pageCount);
    tree.processes.forEach((p, i) => {
      // A dump of a container names tasks by their PID inside it (innermost namespace); the host's PID otherwise.
      for (const id of nsPids(p.pid).slice(1)) if (!this.byCriuId.has(id)) this.byCriuId.set(id, i);
    });
  }

  /** The machine PID of a task as a CRIU dump names it, or undefined when it is not in the live layout. */
  machinePid(criuId: number): number | undefined {
    const i = this.byCriuId.get(criuId);
    return i === undefined ? undefined : this.tree.processes[i].pid;
  }

  /** The global page index of a task's page, or -1 when the live layout does not hold it. */
  pageOf(criuId: number, vaddr: bigint): number {
    const i = this.byCriuId.get(criuId);
    if (i === undefined) return -1;
    const local = this.tree.processes[i].pageIndexOf(vaddr);
    return local < 0 ? -1 : this.tree.firstPage(i) + local;
  }

  /** The page-server `have` predicate: the destination holds exactly these bytes for this page. */
  readonly holds = (id: number, vaddr: bigint, bytes: Buffer, kind: PagemapKind): boolean => {
    if (kind !== 'pid') return false;
    const g = this.sentPageOf(id, vaddr);
    return g >= 0 && this.sentHash[g] === xxh64(bytes);
  };

  /**
   * Per page of a task's run of N pages from VADDR: its global page index, or -1 when the live layout does not hold
   * it. One region lookup per region the run crosses.
   */
  private runPages(id: number, vaddr: bigint, n: number): Int32Array {
    const out = new Int32Array(n).fill(-1);
    const i = this.byCriuId.get(id);
    if (i === undefined) return out;
    const p = this.tree.processes[i];
    const base = this.tree.firstPage(i);
    let a = Number(vaddr);
    for (let k = 0; k < n;) {
      const span = p.pageSpanAt(a);
      const m = span ? Math.min(span.pages, n - k) : 1;
      if (span) for (let j = 0; j < m; j++) out[k + j] = base + span.page + j;
      k += m;
      a += m * PAGE_SIZE;
    }
    return out;
  }

  /**
   * `holds` for a run of pages known by their xxh64 (the stop hashes on worker threads): 1 for each page whose hash
   * is that of what the destination was sent.
   */
  readonly holdsRun = (id: number, vaddr: bigint, hashes: BigUint64Array): Uint8Array => {
    const g = this.runPages(id, vaddr, hashes.length);
    const out = new Uint8Array(hashes.length);
    for (let k = 0; k < g.length; k++)
      if (g[k] >= 0 && this.sent.get(g[k]) && this.sentHash[g[k]] === hashes[k]) out[k] = 1;
    return out;
  };

  /** The global page index of a task's page that was sent to the destination, or -1 (hashes nothing). */
  private sentPageOf(id: number, vaddr: bigint): number {
    const g = this.pageOf(id, vaddr);
    return g >= 0 && this.sent.get(g) ? g : -1;
  }

  /** Whether any page was handed to the engine for sending (a live round ran). */
  get anySent(): boolean {
    return !this.sent.isEmpty();
  }

  /**
   * 1 for each page of a task's run that is in the live layout and was never sent (the stop defers them: deferLazy,
   * deferPresent).
   */
  readonly neverSent = (id: number, vaddr: bigint, n: number): Uint8Array => {
    const g = this.runPages(id, vaddr, n);
    const out = new Uint8Array(n);
    for (let k = 0; k < n; k++) if (g[k] >= 0 && !this.sent.get(g[k])) out[k] = 1;
    return out;
  };

  /** Seconds-from-epoch (performance.now() ms) at which the switchover froze the container; -1 before. */
  get freezeStartedAt(): number {
    return this.frozenAt;
  }

  /** Pages of the dump the layout does not hold: they travel with the state. */
  get extras(): ExtraPage[] {
    return this.final?.extras ?? [];
  }

  collectDirty(): Promise<Bitmap> {
    return this.tree.collectDirty();
  }

  async readPages(ids: ArrayLike<number>, out: Uint8Array): Promise<void> {
    if (this.final) {
      const { data, deferred, inFiles } = this.final;
      const later: number[] = [];
      const slots: number[] = [];
      const fds = new Map<string, number>();
      try {
        // Pages next to each other in a file and in the batch are read together.
        for (let k = 0; k < ids.length;) {
          const at = inFiles.get(ids[k]);
          if (!at) {
            k++;
            continue;
          }
          let n = 1;
          for (let next; k + n < ids.length; n++) {
            next = inFiles.get(ids[k + n]);
            if (!next || next.file !== at.file || next.offset !== at.offset + n * PAGE_SIZE) break;
          }
          let fd = fds.get(at.file);
          if (fd === undefined) fds.set(at.file, (fd = openSync(at.file, 'r')));
          const len = n * PAGE_SIZE;
          for (let got = 0; got < len;) {
            const r = readSync(fd, out, k * PAGE_SIZE + got, len - got, at.offset + got);
            if (r === 0) throw new Error(`${at.file}: ends before offset ${at.offset + len}`);
            got += r;
          }
          k += n;
        }
      } finally {
        for (const fd of fds.values()) closeSync(fd);
      }
      for (let k = 0; k < ids.length; k++) {
        const page = data.get(ids[k]);
        if (page) out.set(page, k * PAGE_SIZE);
        else if (inFiles.has(ids[k])) continue;
        else if (deferred?.get(ids[k])) {
          later.push(ids[k]);
          slots.push(k);
        } else if (!this.sent.get(ids[k])) out.fill(0, k * PAGE_SIZE, (k + 1) * PAGE_SIZE);
        else throw new Error(`page ${ids[k]} is not among the pages CRIU dumped as changed`);
      }
      if (later.length) {
        const buf = Buffer.allocUnsafe(later.length * PAGE_SIZE);
        await this.tree.readPages(later, buf);
        slots.forEach((k, i) => out.set(buf.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), k * PAGE_SIZE));
      }
      return;
    }
    await this.tree.readPages(ids, out);
    for (let k = 0; k < ids.length; k++) {
      const id = ids[k];
      this.sent.set(id);
      this.sentHash[id] = xxh64(out.subarray(k * PAGE_SIZE, (k + 1) * PAGE_SIZE));
    }
  }

  /**
   * The pages never sent that CRIU may not dump, read before a dump that ends the processes: those of file
   * mappings (an unmodified one is not in the dump). An anonymous page CRIU does not dump is one never written (or
   * given back: MADV_DONTNEED), which reads as zeros: it is not read (a cold move of 1 GiB no longer reads the whole
   * memory into the source before its checkpoint).
   */
  private async readUnsent(): Promise<Map<number, Buffer>> {
    const out = new Map<number, Buffer>();
    const ids: number[] = [];
    for (let g = 0; g < this.layout.pageCount; g++)
      if (!this.sent.get(g) && !this.tree.isAnonymousPage(g)) ids.push(g);
    for (let i = 0; i < ids.length; i += 256) {
      const chunk = ids.slice(i, i + 256);
      const buf = Buffer.allocUnsafe(chunk.length * PAGE_SIZE);
      await this.tree.readPages(chunk, buf);
      chunk.forEach((g, k) => out.set(g, buf.subarray(k * PAGE_SIZE, (k + 1) * PAGE_SIZE)));
    }
    return out;
  }

  async freeze(): Promise<void> {
    // Read while the container runs: a page that changes after this is in CRIU's dump, which takes precedence.
    const early = this.opts.readBeforeDump ? await this.readUnsent() : null;
    await this.opts.beforeFreeze?.();
    this.frozenAt = performance.now();
    const dump = await this.dump();
    const dirty = new Bitmap(this.layout.pageCount);
    const data = new Map<number, Buffer>();
    const extras: ExtraPage[] = [];
    const inFiles = new Map<number, { file: string; offset: number }>();
    for (const m of dump.tasks.values()) {
      for (const run of m.runs) {
        if (!run.deferred || !run.source) continue;
        for (const vaddr of run.deferred) {
          const g = this.pageOf(m.id, vaddr);
          const at = { file: run.source.file, offset: run.source.offset + Number(vaddr - run.vaddr) };
          if (g >= 0) {
            dirty.set(g);
            inFiles.set(g, at);
          } else {
            const bytes = Buffer.alloc(PAGE_SIZE);
            const fd = openSync(at.file, 'r');
            try {
              readSync(fd, bytes, 0, PAGE_SIZE, at.offset);
            } finally {
              closeSync(fd);
            }
            extras.push({ id: m.id, vaddr, bytes });
          }
        }
      }
      for (const p of m.changed) {
        const g = this.pageOf(m.id, p.vaddr);
        if (g >= 0) {
          dirty.set(g);
          data.set(g, p.bytes);
        } else extras.push({ id: m.id, vaddr: p.vaddr, bytes: p.bytes });
      }
    }
    // Pages never sent that CRIU did not dump either (never touched, unmodified pages of private file mappings,
    // unmapped since): the destination's store is complete only with every page of the layout, and its image may
    // keep them (src/migrate/state.ts, the 'self' layout), so they go as they read now (frozen; zeros if unmapped).
    const missing: number[] = [];
    for (let g = 0; g < this.layout.pageCount; g++)
      if (!this.sent.get(g) && !dirty.get(g)) {
        dirty.set(g);
        missing.push(g);
      }
    // Read early or not read at all (anonymous, not dumped: zeros, as readPages sends a never-sent page it has not).
    if (early)
      for (const g of missing) {
        const bytes = early.get(g);
        if (bytes) data.set(g, bytes);
      }
    const deferred = this.opts.deferUnsent && !early ? new Bitmap(this.layout.pageCount) : null;
    if (deferred) for (const g of missing) deferred.set(g);
    for (let i = 0; !early && !deferred && i < missing.length; i += 256) {
      const ids = missing.slice(i, i + 256);
      const buf = Buffer.allocUnsafe(ids.length * PAGE_SIZE);
      await this.tree.readPages(ids, buf);
      ids.forEach((g, k) => data.set(g, buf.subarray(k * PAGE_SIZE, (k + 1) * PAGE_SIZE)));
    }
    this.unchanged = dump.counts.unchanged;
    this.final = { dirty, data, extras, deferred, inFiles };
  }

  finalDirty(): Bitmap {
    if (!this.final) throw new Error('finalDirty() before freeze()');
    return this.final.dirty;
  }

  async thaw(): Promise<void> {
    await this.undump();
  }

  close(): void {
    this.tree.close();
  }
}
