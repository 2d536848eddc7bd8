/**
 * Which pages of a live process changed since the last look. Two trackers behind one interface:
 * - softdirty: the kernel marks written pages (pagemap bit 55) after "4" is written to clear_refs. Exact for
 *   writes and cheap, but only on kernels built with CONFIG_MEM_SOFT_DIRTY (never on arm64).
 * - hash: xxh64 of every page holding data, compared with the hash of the previous scan. Works everywhere and
 *   reports pages whose content changed (a write of identical bytes is not a change), at the cost of reading
 *   all resident memory each time.
 * Also here: the startup probes that decide what the kernel offers, and the accessed-bit reader.
 */
import { xxh64 } from '@node-rs/xxhash';
import { Bitmap } from '../util/bitmap.ts';
import { UsageError } from '../util/errors.ts';
import type { TrackerChoice } from './tracker-choices.ts';
import {
  KPF_REFERENCED,
  KpageflagsReader,
  LiveMemoryError,
  PM_SOFT_DIRTY,
  ProcessFiles,
  isAnonymous,
  isTrackedMapping,
  pagemapHoldsData,
  pagemapPfn,
  processAlive,
  readMaps,
} from './procfs.ts';

export type TrackerKind = 'softdirty' | 'hash';
export { TRACKER_CHOICES, type TrackerChoice } from './tracker-choices.ts';

const PAGE = 4096;
/** Pagemap entries read per system call (512 KiB of entries). */
const PAGEMAP_CHUNK = 65536;

/** Pages [first, first + count) of the layout, mapped right now at address addr. */
export interface Span {
  first: number;
  count: number;
  addr: number;
  /** Anonymous memory: pages that are neither present nor swapped read as zeros. */
  anon: boolean;
}

/** What a tracker needs from the process: its pagemap, its memory, its clear_refs. ProcessFiles has it. */
export interface TrackerIO {
  readonly pid: number;
  readPagemap(addr: number, count: number): Uint32Array;
  readMem(out: Uint8Array, offset: number, length: number, addr: number): number;
  clearRefs(value: '1' | '4'): void;
}

export interface ScanStats {
  scans: number;
  /** Pages and bytes read from /proc/PID/mem by the last scan. */
  pagesRead: number;
  bytesRead: number;
  /** Pages known to be zero (anonymous, not present) in the last scan, not read. */
  pagesSkipped: number;
  /** Pages that could not be read in the last scan (unmapped while scanning). */
  unreadable: number;
  /** Wall time of the last scan in seconds. */
  seconds: number;
}

export interface DirtyTracker {
  readonly kind: TrackerKind;
  /** The process must be stopped while collect() runs (soft-dirty: reading and clearing must be atomic). */
  readonly needsStoppedProcess: boolean;
  /**
   * Pages among the spans that changed since the previous call. The first call starts tracking and returns
   * every page holding data (present or swapped; every page of a file-backed mapping).
   */
  collect(spans: readonly Span[]): Bitmap;
  /**
   * Records the content of a page as it was read to be sent. A tracker that compares contents must report the
   * page dirty whenever it differs from what was sent, not only from what the last scan saw: a page can change
   * after a scan, be sent, and change back (reference counts do) before the next scan.
   */
  noteSent?(page: number, bytes: Uint8Array): void;
  readonly stats: ScanStats;
}

function emptyStats(): ScanStats {
  return { scans: 0, pagesRead: 0, bytesRead: 0, pagesSkipped: 0, unreadable: 0, seconds: 0 };
}

// ---- hash ------------------------------------------------------------------------------------------------

const ZERO_HASH = xxh64(new Uint8Array(PAGE));
/** Stored for pages that could not be read; never equal to a real page's hash in practice. */
const GONE_HASH = ZERO_HASH ^ 0xffffffffffffffffn;

export interface HashTrackerOptions {
  /** Bytes per read of /proc/PID/mem (default 1 MiB). */
  maxReadBytes?: number;
}

/** Content hashing: one xxh64 per page, kept in a BigUint64Array (8 bytes per page of the layout). */
export class HashTracker implements DirtyTracker {
  readonly kind = 'hash';
  readonly needsStoppedProcess = false;
  readonly stats = emptyStats();
  private readonly io: TrackerIO;
  private readonly pageCount: number;
  private readonly hashes: BigUint64Array;
  /** Hash of each page as last sent, for the pages sent since the last scan (sentSinceScan). */
  private readonly sent: BigUint64Array;
  private readonly sentSinceScan: Bitmap;
  private readonly scratch: Buffer;
  /** One view per page of scratch, made once: views made per page cost more than the hash. */
  private readonly views: Buffer[];
  private started = false;

  constructor(io: TrackerIO, pageCount: number, options: HashTrackerOptions = {}) {
    this.io = io;
    this.pageCount = pageCount;
    this.hashes = new BigUint64Array(pageCount);
    this.sent = new BigUint64Array(pageCount);
    this.sentSinceScan = new Bitmap(pageCount);
    const pages = Math.max(1, Math.floor((options.maxReadBytes ?? 1 << 20) / PAGE));
    this.scratch = Buffer.allocUnsafeSlow(pages * PAGE);
    this.views = Array.from({ length: pages }, (_, i) => this.scratch.subarray(i * PAGE, (i + 1) * PAGE));
  }

  noteSent(page: number, bytes: Uint8Array): void {
    this.sent[page] = xxh64(bytes);
    this.sentSinceScan.set(page);
  }

  /**
   * Records a page's current hash and reports whether the destination's copy may be stale: for a page sent since
   * the last scan, when it differs from what was sent; otherwise when it differs from what the last scan saw.
   * (So every page not reported holds, after the scan, the content the destination has or has pending.)
   */
  private see(p: number, h: bigint, dirty: Bitmap, first: boolean): void {
    if (first || (this.sentSinceScan.get(p) ? h !== this.sent[p] : h !== this.hashes[p])) dirty.set(p);
    this.hashes[p] = h;
  }

  collect(spans: readonly Span[]): Bitmap {
    const t0 = performance.now();
    const s = this.stats;
    s.pagesRead = s.bytesRead = s.pagesSkipped = s.unreadable = 0;
    const dirty = new Bitmap(this.pageCount);
    const first = !this.started;
    const maxPages = this.views.length;
    for (const span of spans) {
      for (let off = 0; off < span.count; off += PAGEMAP_CHUNK) {
        const n = Math.min(PAGEMAP_CHUNK, span.count - off);
        const base = span.first + off;
        const addr = span.addr + off * PAGE;
        // Anonymous pages that hold no data are zeros: no need to read them (nor to make the kernel map the
        // zero page into the process by reading them).
        const pm = span.anon ? this.io.readPagemap(addr, n) : null;
        let i = 0;
        while (i < n) {
          if (pm && !pagemapHoldsData(pm[2 * i + 1])) {
            // a page without data is not news on the first scan (round 1 sends everything anyway)
            this.see(base + i, ZERO_HASH, dirty, false);
            s.pagesSkipped++;
            i++;
            continue;
          }
          let j = i + 1;
          while (j < n && j - i < maxPages && (!pm || pagemapHoldsData(pm[2 * j + 1]))) j++;
          this.scanRun(base + i, addr + i * PAGE, j - i, dirty, first);
          i = j;
        }
      }
    }
    this.sentSinceScan.clearAll();
    this.started = true;
    s.scans++;
    s.seconds = (performance.now() - t0) / 1000;
    return dirty;
  }

  /** Reads and hashes `count` consecutive pages; pages that cannot be read are marked gone. */
  private scanRun(page: number, addr: number, count: number, dirty: Bitmap, first: boolean): void {
    while (count > 0) {
      const want = count * PAGE;
      let got = 0;
      for (;;) {
        let n: number;
        try {
          n = this.io.readMem(this.scratch, got, want - got, addr + got);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EIO') throw e;
          n = -1;
        }
        if (n === 0) throw processGone(this.io.pid);
        if (n < 0) break;
        got += n;
        if (got === want) break;
      }
      const whole = Math.floor(got / PAGE);
      for (let k = 0; k < whole; k++) this.see(page + k, xxh64(this.views[k]), dirty, first);
      this.stats.pagesRead += whole;
      this.stats.bytesRead += whole * PAGE;
      if (whole === count) return;
      // Page `whole` is unreadable (unmapped since the maps were read): it changed, to nothing.
      this.see(page + whole, GONE_HASH, dirty, false);
      this.stats.unreadable++;
      page += whole + 1;
      addr += (whole + 1) * PAGE;
      count -= whole + 1;
    }
  }
}

export function processGone(pid: number): LiveMemoryError {
  return new LiveMemoryError(
    processAlive(pid)
      ? `process ${pid} replaced its program (exec): the memory precog was reading is gone; start again with the new program`
      : `process ${pid} exited: its memory is gone`,
  );
}

// ---- soft-dirty --------------------------------------------------------------------------------------------

/**
 * The kernel's soft-dirty bits. The pagemap is read and the bits cleared while the process is stopped, as
 * CRIU's pre-dump does: a write between reading and clearing would otherwise be lost.
 */
export class SoftDirtyTracker implements DirtyTracker {
  readonly kind = 'softdirty';
  readonly needsStoppedProcess = true;
  readonly stats = emptyStats();
  private readonly io: TrackerIO;
  private readonly pageCount: number;
  /** Pages that held data at the last scan: a page zapped since (MADV_DONTNEED) loses its soft-dirty bit. */
  private readonly held: Bitmap;
  private started = false;

  constructor(io: TrackerIO, pageCount: number) {
    this.io = io;
    this.pageCount = pageCount;
    this.held = new Bitmap(pageCount);
  }

  collect(spans: readonly Span[]): Bitmap {
    const t0 = performance.now();
    const dirty = new Bitmap(this.pageCount);
    const first = !this.started;
    let held = 0;
    for (const span of spans) {
      for (let off = 0; off < span.count; off += PAGEMAP_CHUNK) {
        const n = Math.min(PAGEMAP_CHUNK, span.count - off);
        const pm = this.io.readPagemap(span.addr + off * PAGE, n);
        for (let i = 0; i < n; i++) {
          const p = span.first + off + i;
          const hi = pm[2 * i + 1];
          const holds = pagemapHoldsData(hi);
          if (first ? holds || !span.anon : (hi & PM_SOFT_DIRTY) !== 0 || (!holds && this.held.get(p)))
            dirty.set(p);
          if (holds) {
            this.held.set(p);
            held++;
          } else this.held.clear(p);
        }
      }
    }
    this.io.clearRefs('4');
    this.started = true;
    const s = this.stats;
    s.scans++;
    s.pagesRead = s.bytesRead = s.unreadable = 0;
    s.pagesSkipped = held;
    s.seconds = (performance.now() - t0) / 1000;
    return dirty;
  }
}

// ---- probes ------------------------------------------------------------------------------------------------

export interface Probe {
  ok: boolean;
  /** Why, in words for a user. */
  reason: string;
}

const PROBE_PAGES = 1024;

/** Counts, over precog's own private writable anonymous memory, pages whose pagemap entry passes test. */
function countOwnPages(files: ProcessFiles, test: (lo: number, hi: number) => boolean): number {
  let n = 0;
  for (const e of readMaps(process.pid)) {
    if (!isTrackedMapping(e) || !isAnonymous(e)) continue;
    const pages = (e.end - e.start) / PAGE;
    for (let off = 0; off < pages; off += PAGEMAP_CHUNK) {
      const count = Math.min(PAGEMAP_CHUNK, pages - off);
      const pm = files.readPagemap(e.start + off * PAGE, count);
      for (let i = 0; i < count; i++) if (test(pm[2 * i], pm[2 * i + 1])) n++;
    }
  }
  return n;
}

let softDirtyProbe: Probe | null = null;

/**
 * Does this kernel really track soft-dirty pages? Clears precog's own soft-dirty bits, writes 1024 pages of its
 * own, and checks that at least half of them turned soft-dirty. Kernels without CONFIG_MEM_SOFT_DIRTY accept
 * the clear and never set the bit. The answer is cached.
 */
export function probeSoftDirty(): Probe {
  if (softDirtyProbe) return softDirtyProbe;
  const buf = Buffer.alloc(PROBE_PAGES * PAGE, 1);
  let files: ProcessFiles | null = null;
  try {
    files = new ProcessFiles(process.pid);
    files.clearRefs('4');
    const before = countOwnPages(files, (_lo, hi) => (hi & PM_SOFT_DIRTY) !== 0);
    buf.fill(2);
    const after = countOwnPages(files, (_lo, hi) => (hi & PM_SOFT_DIRTY) !== 0);
    softDirtyProbe =
      after - before >= PROBE_PAGES / 2
        ? {
            ok: true,
            reason: `the kernel tracks soft-dirty pages (${after - before} pages marked by the probe)`,
          }
        : {
            ok: false,
            reason: `the kernel does not track soft-dirty pages (CONFIG_MEM_SOFT_DIRTY unset?): after clearing, writes to ${PROBE_PAGES} pages of precog's own memory marked ${Math.max(0, after - before)} in /proc/PID/pagemap`,
          };
  } catch (e) {
    softDirtyProbe = {
      ok: false,
      reason: `soft-dirty tracking is unavailable: ${(e as Error).message}`,
    };
  } finally {
    files?.close();
  }
  return softDirtyProbe;
}

export interface AccessedProbe {
  /** /proc/kpageflags can be read and pagemap shows frame numbers (root). */
  readable: boolean;
  /** The REFERENCED flag follows the process's own loads and stores (not only the kernel's references). */
  followsAccesses: boolean;
  reason: string;
}

let accessedProbe: AccessedProbe | null = null;

/**
 * Can accessed bits be read per page, and do they mean anything? The REFERENCED flag in /proc/kpageflags is the
 * kernel's PG_referenced: set when the kernel itself marks a page accessed (page cache reads, reclaim scans,
 * and reads through /proc/PID/mem), while the CPU's accessed bit in the page table only reaches it when reclaim
 * looks. The probe clears precog's own bits, touches 1024 of its pages and counts how many turned REFERENCED.
 */
export function probeAccessedBits(): AccessedProbe {
  if (accessedProbe) return accessedProbe;
  const buf = Buffer.alloc(PROBE_PAGES * PAGE, 1);
  let files: ProcessFiles | null = null;
  let kpf: KpageflagsReader | null = null;
  try {
    try {
      kpf = new KpageflagsReader();
    } catch (e) {
      accessedProbe = {
        readable: false,
        followsAccesses: false,
        reason: `cannot open /proc/kpageflags (${(e as NodeJS.ErrnoException).code ?? String(e)}): accessed bits need root`,
      };
      return accessedProbe;
    }
    files = new ProcessFiles(process.pid);
    if (countOwnPages(files, (lo, hi) => pagemapPfn(lo, hi) > 0) === 0) {
      accessedProbe = {
        readable: false,
        followsAccesses: false,
        reason: 'pagemap hides page frame numbers (needs CAP_SYS_ADMIN): accessed bits need root',
      };
      return accessedProbe;
    }
    files.clearRefs('1');
    for (let i = 0; i < buf.length; i += PAGE) buf[i]++;
    const pfns: number[] = [];
    countOwnPages(files, (lo, hi) => {
      const pfn = pagemapPfn(lo, hi);
      if (pfn > 0) pfns.push(pfn);
      return false;
    });
    const flags = new Uint8Array(pfns.length);
    kpf.testBit(Float64Array.from(pfns), KPF_REFERENCED, flags);
    const referenced = flags.reduce((a, b) => a + b, 0);
    accessedProbe =
      referenced >= PROBE_PAGES / 2
        ? {
            readable: true,
            followsAccesses: true,
            reason: `kpageflags REFERENCED follows accesses (${referenced} pages marked by the probe)`,
          }
        : {
            readable: true,
            followsAccesses: false,
            reason: `kpageflags REFERENCED does not follow the process's own accesses on this kernel: after clearing, writing ${PROBE_PAGES} pages marked ${referenced} (without idle page tracking the CPU's accessed bits reach it only when reclaim scans)`,
          };
  } catch (e) {
    accessedProbe = {
      readable: false,
      followsAccesses: false,
      reason: `accessed bits: ${(e as Error).message}`,
    };
  } finally {
    files?.close();
    kpf?.close();
  }
  return accessedProbe;
}

/**
 * Accessed bits of a process: pagemap gives each present page's frame number, /proc/kpageflags its REFERENCED
 * flag; writing "1" to clear_refs clears them. Reading pages through /proc/PID/mem sets the flag too, so read
 * the bits before a hash scan or readPages, and clear them after.
 */
export class AccessedReader {
  private readonly io: TrackerIO;
  private readonly pageCount: number;
  private readonly kpf: KpageflagsReader;

  constructor(io: TrackerIO, pageCount: number) {
    this.io = io;
    this.pageCount = pageCount;
    this.kpf = new KpageflagsReader();
  }

  read(spans: readonly Span[]): Bitmap {
    const out = new Bitmap(this.pageCount);
    for (const span of spans) {
      for (let off = 0; off < span.count; off += PAGEMAP_CHUNK) {
        const n = Math.min(PAGEMAP_CHUNK, span.count - off);
        const pm = this.io.readPagemap(span.addr + off * PAGE, n);
        const pfns = new Float64Array(n);
        for (let i = 0; i < n; i++) pfns[i] = pagemapPfn(pm[2 * i], pm[2 * i + 1]);
        const flags = new Uint8Array(n);
        this.kpf.testBit(pfns, KPF_REFERENCED, flags);
        for (let i = 0; i < n; i++) if (flags[i]) out.set(span.first + off + i);
      }
    }
    return out;
  }

  clear(): void {
    this.io.clearRefs('1');
  }

  close(): void {
    this.kpf.close();
  }
}

/** Picks the tracker: soft-dirty when asked for or (auto) when the probe shows the kernel tracks it. */
export function chooseTracker(choice: TrackerChoice): { kind: TrackerKind; reason: string } {
  if (choice === 'hash') return { kind: 'hash', reason: 'content hashing was asked for' };
  const probe = probeSoftDirty();
  if (choice === 'softdirty') {
    if (!probe.ok) throw new UsageError(`${probe.reason}; use the hash tracker instead`);
    return { kind: 'softdirty', reason: probe.reason };
  }
  return probe.ok
    ? { kind: 'softdirty', reason: probe.reason }
    : { kind: 'hash', reason: `${probe.reason}; using content hashing (xxh64 per page)` };
}
