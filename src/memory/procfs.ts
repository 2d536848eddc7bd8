/**
 * Reading a process's memory state from /proc: maps and smaps (which mappings exist), pagemap (which pages are
 * present, their frame numbers and soft-dirty bits), kpageflags (per-frame flags), mem (the bytes), and the
 * system-wide counters in /proc/vmstat and /proc/stat. Parsing is pure and separate from the file access.
 */
import { closeSync, openSync, readFileSync, readSync, readdirSync, writeFileSync } from 'node:fs';
import { endianness } from 'node:os';

/** One line of /proc/PID/maps. Addresses are numbers: user-space addresses stay below 2^53. */
export interface MapsEntry {
  start: number;
  end: number;
  /** e.g. "rw-p" */
  perms: string;
  offset: number;
  dev: string;
  inode: number;
  /** The pathname column: a file, [heap], [stack], [vdso], [anon:name], or '' for plain anonymous memory. */
  path: string;
}

const MAPS_LINE = /^([0-9a-f]+)-([0-9a-f]+)\s+([-rwxsp]{4})\s+([0-9a-f]+)\s+(\S+)\s+(\d+)\s*(.*)$/;

export function parseMaps(text: string): MapsEntry[] {
  const out: MapsEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const m = MAPS_LINE.exec(line);
    if (!m) throw new Error(`unexpected line in /proc/PID/maps: "${line}"`);
    out.push({
      start: parseInt(m[1], 16),
      end: parseInt(m[2], 16),
      perms: m[3],
      offset: parseInt(m[4], 16),
      dev: m[5],
      inode: Number(m[6]),
      path: m[7].trim(),
    });
  }
  return out;
}

/** Kernel-provided mappings whose contents a migration must not copy (the kernel recreates them). */
const SPECIAL = new Set(['[vvar]', '[vvar_vclock]', '[vdso]', '[vsyscall]', '[uprobes]']);

/**
 * Mappings whose pages belong to the process's own state and can change: private (copy-on-write) and
 * writable. That is anonymous memory, heap, stacks, and the written data segments of files. Read-only file
 * mappings equal the file and are skipped, as are shared mappings (their pages belong to the object they map)
 * and the kernel's special mappings.
 */
export function isTrackedMapping(e: MapsEntry): boolean {
  return e.perms[1] === 'w' && e.perms[3] === 'p' && !SPECIAL.has(e.path) && e.end > e.start;
}

/** Anonymous memory: a page that is neither present nor swapped out reads as zeros. */
export function isAnonymous(e: MapsEntry): boolean {
  return e.inode === 0;
}

/** A short name for a mapping, as regions carry it: the path, [heap], [stack], [anon:x], or "anon". */
export function mappingName(e: MapsEntry): string {
  return e.path === '' ? 'anon' : e.path;
}

export function readMaps(pid: number): MapsEntry[] {
  return parseMaps(readFileSync(`/proc/${pid}/maps`, 'utf8'));
}

/** One mapping of /proc/PID/smaps with its numeric fields in bytes (Rss, Pss, Anonymous, Referenced, ...). */
export interface SmapsEntry extends MapsEntry {
  fields: Record<string, number>;
}

export function parseSmaps(text: string): SmapsEntry[] {
  const out: SmapsEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) {
      out.push({ ...parseMaps(line)[0], fields: {} });
      continue;
    }
    const m = /^(\w+):\s+(\d+) kB$/.exec(line);
    if (m && out.length > 0) out[out.length - 1].fields[m[1]] = Number(m[2]) * 1024;
  }
  return out;
}

export function readSmaps(pid: number): SmapsEntry[] {
  return parseSmaps(readFileSync(`/proc/${pid}/smaps`, 'utf8'));
}

/**
 * Reading a process's memory failed: it exited, or a page cannot be read. Not the user's input: exit code 1.
 */
export class LiveMemoryError extends Error {
  override readonly name = 'LiveMemoryError';
  readonly exitCode = 1;
}

// ---- pagemap ----------------------------------------------------------------------------------------------

/**
 * /proc/PID/pagemap has one 64-bit entry per virtual page, in host byte order. Entries are handled as two
 * 32-bit halves (lo, hi) to stay out of BigInt in the hot loops; that needs a little-endian host.
 */
if (endianness() !== 'LE')
  throw new Error('precog reads /proc/PID/pagemap as little-endian; this host is not');

/** Bits of the high half of a pagemap entry. */
export const PM_PRESENT = 1 << 31; // bit 63
export const PM_SWAPPED = 1 << 30; // bit 62
export const PM_FILE = 1 << 29; // bit 61: file page or shared anonymous
export const PM_EXCLUSIVE = 1 << 24; // bit 56
export const PM_SOFT_DIRTY = 1 << 23; // bit 55
/** PFN bits 32..54 in the high half (bits 0..54 of the entry hold the PFN when present; 0 unless root). */
const PM_PFN_HI_MASK = 0x7fffff;

export function pagemapPresent(hi: number): boolean {
  return (hi & PM_PRESENT) !== 0;
}

/** The page holds data of its own: in RAM or in swap (migration entries count as swap). */
export function pagemapHoldsData(hi: number): boolean {
  return (hi & (PM_PRESENT | PM_SWAPPED)) !== 0;
}

/** The page frame number of a present page (0 when not root or not present). */
export function pagemapPfn(lo: number, hi: number): number {
  if ((hi & PM_PRESENT) === 0) return 0;
  return (hi & PM_PFN_HI_MASK) * 2 ** 32 + (lo >>> 0);
}

/** Flags of /proc/kpageflags (include/uapi/linux/kernel-page-flags.h). */
export const KPF_REFERENCED = 2;

/** Open files of one process: mem for bytes, pagemap for page state. Closed by close(). */
export class ProcessFiles {
  readonly pid: number;
  readonly mem: number;
  readonly pagemap: number;
  private pmBuf: Buffer = Buffer.allocUnsafeSlow(8 * 65536);

  constructor(pid: number) {
    this.pid = pid;
    this.mem = openSync(`/proc/${pid}/mem`, 'r');
    try {
      this.pagemap = openSync(`/proc/${pid}/pagemap`, 'r');
    } catch (e) {
      closeSync(this.mem);
      throw e;
    }
  }

  /**
   * Reads the pagemap entries of `count` pages starting at virtual address `addr` into out (2 words per page:
   * lo, hi). Returns out. The view stays valid until the next call.
   */
  readPagemap(addr: number, count: number): Uint32Array {
    const bytes = count * 8;
    if (this.pmBuf.length < bytes) this.pmBuf = Buffer.allocUnsafeSlow(bytes);
    let done = 0;
    while (done < bytes) {
      const n = readSync(this.pagemap, this.pmBuf, done, bytes - done, (addr / 4096) * 8 + done);
      if (n <= 0) throw new Error(`short read of /proc/${this.pid}/pagemap at 0x${addr.toString(16)}`);
      done += n;
    }
    return new Uint32Array(this.pmBuf.buffer, this.pmBuf.byteOffset, count * 2);
  }

  /** Positioned read of process memory; throws the errno error (EIO for unmapped addresses). */
  readMem(out: Uint8Array, offset: number, length: number, addr: number): number {
    return readSync(this.mem, out, offset, length, addr);
  }

  /**
   * Writes /proc/PID/clear_refs: "1" clears referenced/accessed bits, "4" clears soft-dirty bits (and
   * write-protects the pages so that the next write marks them again).
   */
  clearRefs(value: '1' | '4'): void {
    writeFileSync(`/proc/${this.pid}/clear_refs`, value);
  }

  close(): void {
    closeSync(this.mem);
    closeSync(this.pagemap);
  }
}

/** Reads /proc/kpageflags for a set of frame numbers: one read per run of nearby frames. */
export class KpageflagsReader {
  private fd = -1;
  private buf: Buffer = Buffer.allocUnsafeSlow(64 * 1024);

  /** Throws EACCES/ENOENT when /proc/kpageflags cannot be opened (root only). */
  constructor() {
    this.fd = openSync('/proc/kpageflags', 'r');
  }

  /**
   * For each frame number in pfns (0 = none), sets out[i] to 1 when flag `bit` is set. Frames are sorted and
   * read in runs: frames at most `gap` apart share one read (a read costs about as much as 16 entries).
   */
  testBit(pfns: Float64Array, bit: number, out: Uint8Array, gap = 16): void {
    out.fill(0);
    const n = pfns.length;
    // Sort (frame, index) pairs as one number: frame * m + index, exact while below 2^53.
    const m = 2 ** Math.ceil(Math.log2(Math.max(2, n)));
    const keys = new Float64Array(n);
    let count = 0;
    for (let i = 0; i < n; i++) {
      const p = pfns[i];
      if (p === 0) continue;
      if (p * m >= 2 ** 53)
        throw new RangeError(`page frame number ${p} is too large for ${n} pages per call`);
      keys[count++] = p * m + i;
    }
    const sorted = keys.subarray(0, count).sort();
    const hiMask = bit >= 32 ? 1 << (bit - 32) : 0;
    const loMask = bit < 32 ? 1 << bit : 0;
    const maxEntries = this.buf.length / 8;
    const words = new Uint32Array(this.buf.buffer, this.buf.byteOffset, this.buf.length / 4);
    for (let a = 0; a < count;) {
      const first = Math.floor(sorted[a] / m);
      let last = first;
      let b = a + 1;
      for (; b < count; b++) {
        const p = Math.floor(sorted[b] / m);
        if (p - last > gap || p - first >= maxEntries) break;
        last = p;
      }
      const got = readSync(this.fd, this.buf, 0, (last - first + 1) * 8, first * 8) >>> 3;
      for (let k = a; k < b; k++) {
        const p = Math.floor(sorted[k] / m);
        const e = p - first;
        if (e < got && (words[2 * e] & loMask || words[2 * e + 1] & hiMask)) out[sorted[k] - p * m] = 1;
      }
      a = b;
    }
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

// ---- processes ---------------------------------------------------------------------------------------------

export interface ProcStat {
  pid: number;
  comm: string;
  /** R, S, D, T (stopped), t (traced), Z (zombie), X, I ... */
  state: string;
  ppid: number;
  /** PF_* flags of the kernel's task_struct (field 9). */
  flags: number;
  minflt: number;
  majflt: number;
  /** clock ticks */
  utime: number;
  stime: number;
  numThreads: number;
  /** resident pages */
  rss: number;
}

/** Parses /proc/PID/stat (the command name may hold spaces and parentheses: split at the last ")"). */
export function parseStat(text: string): ProcStat {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  const f = text
    .slice(close + 2)
    .trim()
    .split(' ');
  // f[0] is field 3 (state) of proc(5).
  return {
    pid: Number(text.slice(0, open).trim()),
    comm: text.slice(open + 1, close),
    state: f[0],
    ppid: Number(f[1]),
    flags: Number(f[6]),
    minflt: Number(f[7]),
    majflt: Number(f[9]),
    utime: Number(f[11]),
    stime: Number(f[12]),
    numThreads: Number(f[17]),
    rss: Number(f[21]),
  };
}

/** /proc/PID/stat, or null when the process does not exist. */
export function readStat(pid: number, tid?: number): ProcStat | null {
  try {
    const path = tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`;
    return parseStat(readFileSync(path, 'utf8'));
  } catch {
    return null;
  }
}

/** PF_EXITING: the task has begun to exit (its memory may already be gone while its state still reads R or D). */
const PF_EXITING = 0x4;

/** The process exists, is not a zombie, and has not begun to exit. */
export function processAlive(pid: number): boolean {
  const s = readStat(pid);
  return s !== null && s.state !== 'Z' && s.state !== 'X' && (s.flags & PF_EXITING) === 0;
}

/** Thread ids of a process ([] when it is gone). */
export function threadsOf(pid: number): number[] {
  try {
    return readdirSync(`/proc/${pid}/task`).map(Number);
  } catch {
    return [];
  }
}

/** The process and all its descendants, parents before children. */
export function processTree(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const s = readStat(Number(name));
    if (!s) continue;
    const list = children.get(s.ppid);
    if (list) list.push(s.pid);
    else children.set(s.ppid, [s.pid]);
  }
  const out = [pid];
  for (let i = 0; i < out.length; i++) out.push(...(children.get(out[i]) ?? []));
  return out;
}

// ---- system features -------------------------------------------------------------------------------------

/** System-wide counters for predictors: cumulative since boot, so differences between samples are rates. */
export interface SystemFeatures {
  /** seconds, monotonic (performance.now based) */
  time: number;
  pgfault: number;
  pgmajfault: number;
  /** pages currently dirty in the page cache / under writeback */
  nrDirty: number;
  nrWriteback: number;
  /** CPU time of all CPUs in clock ticks (USER_HZ) */
  cpu: {
    user: number;
    nice: number;
    system: number;
    idle: number;
    iowait: number;
    irq: number;
    softirq: number;
    steal: number;
  };
  contextSwitches: number;
}

export function parseVmstat(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const sp = line.indexOf(' ');
    if (sp > 0) out.set(line.slice(0, sp), Number(line.slice(sp + 1)));
  }
  return out;
}

export function parseProcStat(text: string): Pick<SystemFeatures, 'cpu' | 'contextSwitches'> {
  let cpu: number[] = [];
  let ctxt = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('cpu ')) cpu = line.slice(4).trim().split(/\s+/).map(Number);
    else if (line.startsWith('ctxt ')) ctxt = Number(line.slice(5));
  }
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = cpu;
  return { cpu: { user, nice, system, idle, iowait, irq, softirq, steal }, contextSwitches: ctxt };
}

export function readSystemFeatures(): SystemFeatures {
  const vm = parseVmstat(readFileSync('/proc/vmstat', 'utf8'));
  return {
    time: performance.now() / 1000,
    pgfault: vm.get('pgfault') ?? 0,
    pgmajfault: vm.get('pgmajfault') ?? 0,
    nrDirty: vm.get('nr_dirty') ?? 0,
    nrWriteback: vm.get('nr_writeback') ?? 0,
    ...parseProcStat(readFileSync('/proc/stat', 'utf8')),
  };
}
