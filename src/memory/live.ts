/**
 * The memory of a running process as a MemorySource: its layout from /proc/PID/maps, its bytes from
 * /proc/PID/mem, its dirty pages from a tracker (soft-dirty where the kernel has it, content hashes otherwise),
 * freeze/thaw with SIGSTOP/SIGCONT of the process tree. See docs/live-memory.md.
 */
import type { Layout, MemorySource, Region } from '../util/interfaces.ts';
import { PAGE_SIZE } from '../util/interfaces.ts';
import { Bitmap } from '../util/bitmap.ts';
import { UsageError } from '../util/errors.ts';
import { formatBytes } from '../util/units.ts';
import {
  AccessedReader,
  HashTracker,
  SoftDirtyTracker,
  chooseTracker,
  probeAccessedBits,
  processGone,
  type DirtyTracker,
  type Span,
  type TrackerChoice,
} from './dirty.ts';
import {
  LiveMemoryError,
  ProcessFiles,
  isAnonymous,
  isTrackedMapping,
  mappingName,
  pagemapHoldsData,
  processAlive,
  processTree,
  readMaps,
  readSmaps,
  readStat,
  threadsOf,
  type MapsEntry,
} from './procfs.ts';
import { lastAtOrBelow } from '../util/search.ts';

export interface LiveOptions {
  /** Dirty tracking: soft-dirty when the kernel tracks it (auto), or forced. Default auto. */
  tracker?: TrackerChoice;
  /**
   * readPages of a page the process has unmapped since the layout was taken: throw (default) or return zeros.
   * A migration wants zeros: the page is reported dirty, and the final dump knows it is gone.
   */
  onUnmapped?: 'error' | 'zero';
  /** Largest read of /proc/PID/mem by readPages (default 4 MiB): runs of consecutive pages share one read. */
  maxReadBytes?: number;
  /** Bytes per read of the hash tracker's scans (default 1 MiB: read, then hashed while still in cache). */
  scanReadBytes?: number;
  /** Refuse layouts larger than this (default 64 GiB): the hash tracker keeps 8 bytes per page. */
  maxLayoutBytes?: number;
  /** Open /proc/kpageflags for readAccessed() (root only). Default false. */
  accessed?: boolean;
}

/** How the process's mappings differ from the layout taken at start, as of the last collectDirty(). */
export interface LayoutDrift {
  /** Pages in private writable mappings that are not in the layout (mapped or grown since): not tracked. */
  newPages: number;
  /** Pages of the layout that are not mapped any more. */
  gonePages: number;
}

const PAGE = PAGE_SIZE;
const STOP_TIMEOUT_MS = 5000;

/**
 * The layout is fixed when the source is opened: page indexes must stay stable for the engine and the trace
 * format. Each collectDirty() re-reads the mappings: pages of the layout that were unmapped (or made
 * read-only) are reported dirty once and read as unmapped; pages that come back are reported dirty again;
 * mappings that appear outside the layout are counted in drift() but not tracked.
 */
export class LiveProcessMemory implements MemorySource {
  readonly pid: number;
  readonly layout: Layout;
  readonly tracker: DirtyTracker;
  /** Why this tracker was chosen (the probe's finding). */
  readonly trackerReason: string;
  private readonly files: ProcessFiles;
  private readonly onUnmapped: 'error' | 'zero';
  private readonly maxReadPages: number;
  private readonly regionFirst: number[] = [];
  private readonly regionAddr: number[] = [];
  private readonly regionAnon: boolean[] = [];
  private spans: Span[] = [];
  private mapped: Bitmap;
  /** Mapped pages as of the previous collectDirty(): a page mapped or unmapped since then changed. */
  private mappedBefore: Bitmap;
  private newPages = 0;
  private accessed: AccessedReader | null = null;
  /** Processes this source stopped (and will continue). */
  private stopped: number[] = [];
  private frozen = false;
  private closed = false;

  constructor(pid: number, options: LiveOptions = {}) {
    if (!Number.isInteger(pid) || pid <= 0) throw new UsageError(`PID "${pid}" must be a whole number > 0`);
    this.pid = pid;
    this.onUnmapped = options.onUnmapped ?? 'error';
    this.maxReadPages = Math.max(1, Math.floor((options.maxReadBytes ?? 4 << 20) / PAGE));
    let maps: MapsEntry[];
    try {
      maps = readMaps(pid);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ESRCH')
        throw new UsageError(
          `process ${pid} does not exist (no /proc/${pid}); give the PID of a running process`,
        );
      throw new UsageError(`cannot read /proc/${pid}/maps (${code ?? String(e)}): ${accessHint()}`);
    }
    const tracked = maps.filter(isTrackedMapping);
    if (tracked.length === 0) {
      throw new UsageError(
        `process ${pid} has no private writable memory to track (a kernel thread, or a zombie?); give the PID of a user process`,
      );
    }
    const regions: Region[] = [];
    let pageCount = 0;
    for (const e of tracked) {
      const pages = (e.end - e.start) / PAGE;
      regions.push({ start: `0x${e.start.toString(16)}`, pages, name: mappingName(e) });
      this.regionFirst.push(pageCount);
      this.regionAddr.push(e.start);
      this.regionAnon.push(isAnonymous(e));
      pageCount += pages;
    }
    const maxBytes = options.maxLayoutBytes ?? 64 * 2 ** 30;
    if (pageCount * PAGE > maxBytes) throw tooLarge(pid, pageCount, maxBytes);
    this.layout = { pageSize: PAGE, pageCount, regions };
    this.mapped = Bitmap.full(pageCount);
    this.mappedBefore = Bitmap.full(pageCount);
    try {
      this.files = new ProcessFiles(pid);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT')
        throw new UsageError(`process ${pid} exited before precog could open its memory`);
      throw new UsageError(`cannot open /proc/${pid}/mem (${code ?? String(e)}): ${accessHint()}`);
    }
    try {
      const choice = chooseTracker(options.tracker ?? 'auto');
      this.trackerReason = choice.reason;
      this.tracker =
        choice.kind === 'softdirty'
          ? new SoftDirtyTracker(this.files, pageCount)
          : new HashTracker(this.files, pageCount, { maxReadBytes: options.scanReadBytes });
      if (options.accessed) {
        const probe = probeAccessedBits();
        if (!probe.readable) throw new UsageError(probe.reason);
        this.accessed = new AccessedReader(this.files, pageCount);
      }
      this.refresh();
    } catch (e) {
      this.accessed?.close();
      this.files.close();
      throw e;
    }
  }

  /** The page index of a virtual address, or -1 when the layout does not hold it. */
  pageIndexOf(addr: number | bigint): number {
    const a = Number(addr);
    const r = this.regionAt(a);
    if (r < 0) return -1;
    return this.regionFirst[r] + Math.floor((a - this.regionAddr[r]) / PAGE);
  }

  /**
   * The layout index of the page at ADDR and how many pages of its region there are from it on (it included), or
   * null when no region holds it: a run of pages is mapped one region at a time.
   */
  pageSpanAt(addr: number): { page: number; pages: number } | null {
    const r = this.regionAt(addr);
    if (r < 0) return null;
    const k = Math.floor((addr - this.regionAddr[r]) / PAGE);
    return { page: this.regionFirst[r] + k, pages: this.layout.regions[r].pages - k };
  }

  /** The virtual address of a page of the layout. */
  addressOf(page: number): number {
    const r = this.regionOf(page);
    return this.regionAddr[r] + (page - this.regionFirst[r]) * PAGE;
  }

  drift(): LayoutDrift {
    return { newPages: this.newPages, gonePages: this.layout.pageCount - this.mapped.count() };
  }

  get isFrozen(): boolean {
    return this.frozen;
  }

  async collectDirty(): Promise<Bitmap> {
    this.assertOpen();
    this.refresh();
    const pause = this.tracker.needsStoppedProcess && !this.frozen;
    if (pause) await this.stop([this.pid]);
    let dirty: Bitmap;
    try {
      dirty = this.tracker.collect(this.spans);
    } finally {
      if (pause) this.cont();
    }
    // Pages that were unmapped or came back since the previous call changed too.
    const w = dirty.words;
    const now = this.mapped.words;
    const before = this.mappedBefore.words;
    for (let i = 0; i < w.length; i++) w[i] |= now[i] ^ before[i];
    this.mappedBefore = this.mapped.clone();
    return dirty;
  }

  /**
   * Pages the kernel marked REFERENCED since the last clearAccessed(). Reading pages through /proc/PID/mem
   * (hash scans, readPages) marks them too: read the bits before those and clear after.
   */
  readAccessed(): Bitmap {
    this.assertOpen();
    if (!this.accessed) throw new Error('readAccessed() needs the source opened with { accessed: true }');
    return this.accessed.read(this.spans);
  }

  clearAccessed(): void {
    this.accessed?.clear();
  }

  /**
   * Reads pages into out. What is read counts as sent: a content tracker compares its next scan against it, unless
   * `options.track` is false (a reader that only looks, as trace record's change sizes: the next scan then still
   * reports a page written after the last one).
   */
  readPages(ids: ArrayLike<number>, out: Uint8Array, options: { track?: boolean } = {}): void {
    this.assertOpen();
    if (out.length < ids.length * PAGE) {
      throw new RangeError(
        `readPages: out holds ${out.length} bytes, ${ids.length} pages need ${ids.length * PAGE}`,
      );
    }
    const count = this.layout.pageCount;
    for (let k = 0; k < ids.length;) {
      const first = ids[k];
      if (!Number.isInteger(first) || first < 0 || first >= count) {
        throw new RangeError(`readPages: page ${first} is outside the layout (0..${count - 1})`);
      }
      const r = this.regionOf(first);
      const end = Math.min(this.regionFirst[r] + this.layout.regions[r].pages, first + this.maxReadPages);
      let len = 1;
      while (k + len < ids.length && ids[k + len] === first + len && first + len < end) len++;
      this.readRun(r, first, len, out, k * PAGE);
      k += len;
    }
    // What is read here is what gets sent: content trackers compare later scans against it.
    if (this.tracker.noteSent && options.track !== false) {
      for (let k = 0; k < ids.length; k++)
        this.tracker.noteSent(ids[k], out.subarray(k * PAGE, (k + 1) * PAGE));
    }
  }

  /** Reads pages [first, first+len) of region r into out at offset: present pages from mem, the rest known. */
  private readRun(r: number, first: number, len: number, out: Uint8Array, offset: number): void {
    const addr = this.regionAddr[r] + (first - this.regionFirst[r]) * PAGE;
    // Per page: 0 read from mem, 1 zeros (anonymous, holds no data), 2 unmapped since the layout was taken.
    const kind = new Uint8Array(len);
    const pm = this.regionAnon[r] ? this.files.readPagemap(addr, len) : null;
    for (let i = 0; i < len; i++) {
      if (!this.mapped.get(first + i)) kind[i] = 2;
      else if (pm && !pagemapHoldsData(pm[2 * i + 1])) kind[i] = 1;
    }
    for (let i = 0; i < len;) {
      let j = i + 1;
      while (j < len && kind[j] === kind[i]) j++;
      const at = offset + i * PAGE;
      if (kind[i] === 0) this.readMem(first + i, j - i, out, at);
      else if (kind[i] === 1) out.fill(0, at, at + (j - i) * PAGE);
      else for (let p = i; p < j; p++) this.unmappedPage(first + p, out, offset + p * PAGE);
      i = j;
    }
  }

  private readMem(first: number, len: number, out: Uint8Array, offset: number): void {
    const addr = this.addressOf(first);
    const want = len * PAGE;
    let got = 0;
    while (got < want) {
      let n: number;
      try {
        n = this.files.readMem(out, offset + got, want - got, addr + got);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EIO') throw e;
        n = -1;
      }
      if (n === 0) throw processGone(this.pid);
      if (n > 0) {
        got += n;
        continue;
      }
      // EIO: the page at got cannot be read. Unmapped since the last look, or something the kernel refuses.
      const page = first + Math.floor(got / PAGE);
      this.refresh();
      if (this.mapped.get(page)) {
        throw new LiveMemoryError(
          `cannot read page ${page} at 0x${this.addressOf(page).toString(16)} (${this.regionName(page)}) of process ${this.pid}: the kernel answers EIO although the page is mapped (device memory?)`,
        );
      }
      const pageStart = Math.floor(got / PAGE) * PAGE;
      this.unmappedPage(page, out, offset + pageStart);
      got = pageStart + PAGE;
    }
  }

  private unmappedPage(page: number, out: Uint8Array, at: number): void {
    if (this.onUnmapped === 'zero') {
      out.fill(0, at, at + PAGE);
      return;
    }
    if (!processAlive(this.pid)) throw processGone(this.pid);
    throw new LiveMemoryError(
      `cannot read page ${page} at 0x${this.addressOf(page).toString(16)} (${this.regionName(page)}) of process ${this.pid}: the process unmapped it after precog took its layout (collectDirty() reports such pages); open the source with onUnmapped: 'zero' to read them as zeros`,
    );
  }

  /** Stops the process and all its descendants (SIGSTOP) and waits until every thread has stopped. */
  async freeze(): Promise<void> {
    this.assertOpen();
    if (this.frozen) return;
    if (!processAlive(this.pid)) throw processGone(this.pid);
    // Stop the tree top-down, then look again: a child forked before its parent stopped is caught next pass.
    const seen = new Set<number>();
    for (let pass = 0; pass < 16; pass++) {
      const fresh = processTree(this.pid).filter((p) => !seen.has(p));
      if (fresh.length === 0) break;
      if (fresh.includes(process.pid)) {
        this.cont();
        throw new UsageError(
          `process ${this.pid} is precog itself or one of its parents: it cannot be frozen`,
        );
      }
      fresh.forEach((p) => seen.add(p));
      await this.stop(fresh);
    }
    this.frozen = true;
  }

  /** Continues what freeze() stopped. Processes that were already stopped before freeze() stay stopped. */
  thaw(): void {
    if (!this.frozen) return;
    this.cont();
    this.frozen = false;
  }

  /** Releases the process's files; continues it if frozen, unless asked to leave it stopped. */
  close(opts: { leaveStopped?: boolean } = {}): void {
    if (this.closed) return;
    if (this.frozen && !opts.leaveStopped) this.thaw();
    this.accessed?.close();
    this.files.close();
    this.closed = true;
  }

  private async stop(pids: number[]): Promise<void> {
    const mine: number[] = [];
    for (const p of pids) {
      const s = readStat(p);
      if (!s || s.state === 'Z' || s.state === 'X' || s.state === 'T' || s.state === 't') continue;
      try {
        process.kill(p, 'SIGSTOP');
        mine.push(p);
        this.stopped.push(p);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
      }
    }
    // SIGSTOP is asynchronous: memory stops changing only once every thread has stopped.
    const deadline = performance.now() + STOP_TIMEOUT_MS;
    for (;;) {
      const running = firstRunningThread(mine);
      if (!running) return;
      if (performance.now() > deadline) {
        this.cont();
        throw new LiveMemoryError(
          `thread ${running.tid} of process ${running.pid} did not stop within ${STOP_TIMEOUT_MS / 1000}s after SIGSTOP (state ${running.state}); it may be in uninterruptible I/O: try again`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }

  private cont(): void {
    for (const p of this.stopped.reverse()) {
      try {
        process.kill(p, 'SIGCONT');
      } catch {
        // exited meanwhile
      }
    }
    this.stopped = [];
  }

  /** Re-reads the mappings: which layout pages are mapped (spans), and how many new pages are not tracked. */
  private refresh(): void {
    let maps: MapsEntry[];
    try {
      maps = readMaps(this.pid).filter(isTrackedMapping);
    } catch {
      throw processGone(this.pid);
    }
    if (maps.length === 0 && !processAlive(this.pid)) throw processGone(this.pid);
    const spans: Span[] = [];
    const mapped = new Bitmap(this.layout.pageCount);
    let covered = 0;
    let total = 0;
    let m = 0;
    for (const e of maps) total += (e.end - e.start) / PAGE;
    for (let r = 0; r < this.regionAddr.length; r++) {
      const start = this.regionAddr[r];
      const end = start + this.layout.regions[r].pages * PAGE;
      while (m < maps.length && maps[m].end <= start) m++;
      for (let k = m; k < maps.length && maps[k].start < end; k++) {
        const a = Math.max(start, maps[k].start);
        const b = Math.min(end, maps[k].end);
        const first = this.regionFirst[r] + (a - start) / PAGE;
        const count = (b - a) / PAGE;
        spans.push({ first, count, addr: a, anon: isAnonymous(maps[k]) });
        for (let i = 0; i < count; i++) mapped.set(first + i);
        covered += count;
      }
    }
    this.spans = spans;
    this.mapped = mapped;
    this.newPages = total - covered;
  }

  /** Whether a page of the layout is in an anonymous mapping (no file behind it). */
  isAnonymousPage(page: number): boolean {
    return this.regionAnon[this.regionOf(page)];
  }

  private regionOf(page: number): number {
    return lastAtOrBelow(this.regionFirst, page);
  }

  private regionAt(addr: number): number {
    for (let r = 0; r < this.regionAddr.length; r++) {
      if (addr >= this.regionAddr[r] && addr < this.regionAddr[r] + this.layout.regions[r].pages * PAGE)
        return r;
    }
    return -1;
  }

  private regionName(page: number): string {
    return this.layout.regions[this.regionOf(page)].name ?? 'anon';
  }

  private assertOpen(): void {
    if (this.closed) throw new Error(`the memory source of process ${this.pid} is closed`);
  }
}

function accessHint(): string {
  return process.getuid?.() === 0
    ? 'even root may not read this process (another user namespace, a sandbox or a security module protects it); give the PID of a process precog may trace'
    : "precog needs ptrace access to the process: run it as root or as the process's user";
}

function firstRunningThread(pids: number[]): { pid: number; tid: number; state: string } | null {
  for (const pid of pids) {
    for (const tid of threadsOf(pid)) {
      const s = readStat(pid, tid);
      if (s && !'TtZX'.includes(s.state)) return { pid, tid, state: s.state };
    }
  }
  return null;
}

function tooLarge(pid: number, pages: number, maxBytes: number): UsageError {
  let detail = '';
  try {
    const big = readSmaps(pid)
      .filter(isTrackedMapping)
      .sort((a, b) => b.end - b.start - (a.end - a.start))
      .slice(0, 3)
      .map(
        (e) =>
          `${mappingName(e)} ${formatBytes(e.end - e.start)} (resident ${formatBytes(e.fields.Rss ?? 0)})`,
      );
    detail = `; the largest: ${big.join(', ')}`;
  } catch {
    // smaps is only for the message
  }
  return new UsageError(
    `process ${pid} has ${formatBytes(pages * PAGE)} of private writable mappings, above the limit of ${formatBytes(maxBytes)}${detail}; raise the limit if the machine has memory for 8 bytes of hash per page`,
  );
}
