import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { InputError } from '../util/errors.ts';
import type { Region } from '../util/interfaces.ts';
import type { ContentPool } from './content.ts';
import type { Workload } from './workload.ts';
import { popcount } from '../util/bitmap.ts';

/**
 * A recorded per-page access history: for each sample (an interval of intervalMs), which pages were written
 * and, where known, which were read. Page indexes follow the regions in order.
 */
export interface Trace {
  pageSize: number;
  intervalMs: number;
  regions: Region[];
  pageCount: number;
  samples: number;
  /** samples x bitmap of ceil(pageCount/8) bytes, bit i of byte j = page 8j+i. */
  dirty: Uint8Array[];
  accessed: Uint8Array[] | null;
  /**
   * Per sample, for each page dirty in it (ascending page index), how many of its bytes differ from what the
   * page held when the previous sample read it: the size of the change, 1..pageSize (0, from older files, is
   * replayed as a whole page). Absent or null: not recorded (every write is read as a whole page).
   */
  changes?: Uint16Array[] | null;
  source: string;
}

/** Pages set in a trace bitmap. */
export function bitmapCount(b: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < b.length; i++) n += popcount(b[i]);
  return n;
}

/** Magic line of precog's own trace format (docs/trace-format.md). */
export const TRACE_MAGIC = 'PRECOG-TRACE 1\n';

/** Shortest sampling interval a trace may have (a shorter one would make the replay spin). */
export const MIN_TRACE_INTERVAL_MS = 1;
/** Most pages a trace may cover (2^31: 8 TiB of 4 KiB pages). */
export const MAX_TRACE_PAGES = 2 ** 31;
/** Most bytes a gzip trace may expand to: PRECOG_MAX_TRACE_BYTES, default 4 GiB. */
export const maxTraceBytes = (): number => {
  const v = Number(process.env.PRECOG_MAX_TRACE_BYTES);
  return Number.isSafeInteger(v) && v > 0 ? v : 4 * 2 ** 30;
};

export function loadTrace(path: string): Trace {
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (e) {
    throw new InputError(`cannot read trace file ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  if (data[0] === 0x1f && data[1] === 0x8b) {
    try {
      data = gunzipSync(data, { maxOutputLength: maxTraceBytes() });
    } catch (e) {
      throw new InputError(
        (e as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE'
          ? `trace file ${path} expands to more than ${maxTraceBytes()} bytes (PRECOG_MAX_TRACE_BYTES)`
          : `trace file ${path} looks gzip-compressed but does not decompress: ${(e as Error).message}`,
      );
    }
  }
  if (data.subarray(0, TRACE_MAGIC.length).toString('latin1') === TRACE_MAGIC)
    return parsePrecogTrace(data, path);
  const first = data.subarray(0, 64).toString('utf8').trimStart()[0];
  if (first === '{') return parsePublicTrace(data.toString('utf8'), path);
  throw new InputError(
    `trace file ${path} is neither precog's trace format (starts with "PRECOG-TRACE 1") nor the public JSON format ({"<hex vaddr>": {"isDirtyList": [...]}})`,
  );
}

/**
 * The public format of the U2CMigration prototype: {"<hex vaddr>": {"isDirtyList": [0|1...], "isAccessed": [...]}}.
 * Pages are sorted by address; runs of consecutive pages become regions.
 */
export function parsePublicTrace(text: string, source: string, pageSize = 4096): Trace {
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    throw new InputError(`trace ${source} is not valid JSON: ${(e as Error).message}`);
  }
  if (!obj || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new InputError(`trace ${source}: expected an object keyed by hex page address`);
  }
  const entries = Object.entries(obj as Record<string, unknown>);
  if (entries.length === 0) throw new InputError(`trace ${source} has no pages`);
  const pages: { addr: bigint; dirty: number[]; accessed: number[] | null }[] = [];
  let samples = -1;
  let hasAccessed = true;
  for (const [key, value] of entries) {
    if (!/^(0x)?[0-9a-f]+$/i.test(key))
      throw new InputError(`trace ${source}: page key "${key}" is not a hex address`);
    const addr = BigInt(key.startsWith('0x') ? key : `0x${key}`);
    if (addr % BigInt(pageSize) !== 0n) {
      throw new InputError(`trace ${source}: page address ${key} is not aligned to ${pageSize} bytes`);
    }
    const rec = value as { isDirtyList?: unknown; isAccessed?: unknown } | null;
    const dirty = bitList(rec?.isDirtyList, source, key, 'isDirtyList');
    if (!dirty) throw new InputError(`trace ${source}: page ${key} has no isDirtyList`);
    const accessed = bitList(rec?.isAccessed, source, key, 'isAccessed');
    if (samples < 0) samples = dirty.length;
    if (dirty.length !== samples || (accessed && accessed.length !== samples)) {
      throw new InputError(
        `trace ${source}: page ${key} has ${dirty.length} samples, the first page has ${samples}`,
      );
    }
    if (!accessed) hasAccessed = false;
    pages.push({ addr, dirty, accessed });
  }
  if (samples === 0) throw new InputError(`trace ${source} has zero samples`);
  pages.sort((a, b) => (a.addr < b.addr ? -1 : a.addr > b.addr ? 1 : 0));
  const regions: Region[] = [];
  const size = BigInt(pageSize);
  for (let i = 0; i < pages.length; i++) {
    const last = regions[regions.length - 1];
    if (last && BigInt(last.start) + BigInt(last.pages) * size === pages[i].addr) last.pages++;
    else regions.push({ start: `0x${pages[i].addr.toString(16)}`, pages: 1 });
  }
  const bytes = (pages.length + 7) >>> 3;
  const dirty = Array.from({ length: samples }, () => new Uint8Array(bytes));
  const accessed = hasAccessed ? Array.from({ length: samples }, () => new Uint8Array(bytes)) : null;
  pages.forEach((p, i) => {
    for (let s = 0; s < samples; s++) {
      if (p.dirty[s]) dirty[s][i >>> 3] |= 1 << (i & 7);
      if (accessed && p.accessed![s]) accessed[s][i >>> 3] |= 1 << (i & 7);
    }
  });
  return { pageSize, intervalMs: 1000, regions, pageCount: pages.length, samples, dirty, accessed, source };
}

function bitList(v: unknown, source: string, key: string, field: string): number[] | null {
  if (v === undefined) return null;
  if (!Array.isArray(v) || v.some((x) => x !== 0 && x !== 1 && x !== true && x !== false)) {
    throw new InputError(`trace ${source}: page ${key} field ${field} must be a list of 0/1`);
  }
  return v.map((x) => (x ? 1 : 0));
}

interface TraceHeader {
  pageSize: number;
  intervalMs: number;
  regions: Region[];
  samples: number;
  accessed: boolean;
  /** Whether each sample ends with the change sizes of its dirty pages (uint16 LE each). */
  changes?: boolean;
}

/** precog's trace format: magic line, one JSON header line, then per sample the dirty (and accessed) bitmaps. */
export function parsePrecogTrace(data: Buffer, source: string): Trace {
  const nl = data.indexOf(10, TRACE_MAGIC.length);
  if (nl < 0) throw new InputError(`trace ${source}: header line is missing`);
  let h: TraceHeader;
  try {
    h = JSON.parse(data.subarray(TRACE_MAGIC.length, nl).toString('utf8')) as TraceHeader;
  } catch (e) {
    throw new InputError(`trace ${source}: header is not valid JSON: ${(e as Error).message}`);
  }
  const ok =
    typeof h === 'object' &&
    h !== null &&
    Number.isInteger(h.pageSize) &&
    h.pageSize > 0 &&
    typeof h.intervalMs === 'number' &&
    h.intervalMs >= MIN_TRACE_INTERVAL_MS &&
    Array.isArray(h.regions) &&
    h.regions.every(
      (r) =>
        typeof r === 'object' &&
        r !== null &&
        typeof r.start === 'string' &&
        Number.isSafeInteger(r.pages) &&
        r.pages > 0,
    ) &&
    Number.isInteger(h.samples) &&
    h.samples > 0 &&
    typeof h.accessed === 'boolean' &&
    (h.changes === undefined || typeof h.changes === 'boolean');
  if (!ok) {
    throw new InputError(
      `trace ${source}: header needs pageSize, intervalMs >= ${MIN_TRACE_INTERVAL_MS}, regions [{start, pages}], samples > 0, accessed and optionally changes (see docs/trace-format.md)`,
    );
  }
  const pageCount = h.regions.reduce((a, r) => a + r.pages, 0);
  if (pageCount > MAX_TRACE_PAGES)
    throw new InputError(
      `trace ${source}: ${pageCount} pages, more than precog replays (${MAX_TRACE_PAGES})`,
    );
  const bytes = Math.ceil(pageCount / 8);
  const per = bytes * (h.accessed ? 2 : 1);
  const body = data.subarray(nl + 1);
  const dirty: Uint8Array[] = [];
  const accessed: Uint8Array[] | null = h.accessed ? [] : null;
  const changes: Uint16Array[] | null = h.changes ? [] : null;
  if (!changes && body.length !== per * h.samples) {
    throw new InputError(
      `trace ${source}: body has ${body.length} bytes, the header announces ${h.samples} samples of ${per} bytes (${per * h.samples}); the file is truncated or corrupt`,
    );
  }
  let at = 0;
  for (let s = 0; s < h.samples; s++) {
    if (body.length - at < per) {
      throw new InputError(
        `trace ${source}: body ends in sample ${s} of ${h.samples} (${body.length} bytes, each sample has ${per} bytes of bitmaps${changes ? ' and 2 per dirty page' : ''}); the file is truncated or corrupt`,
      );
    }
    const d = body.subarray(at, at + bytes);
    dirty.push(d);
    if (accessed) accessed.push(body.subarray(at + bytes, at + 2 * bytes));
    at += per;
    if (changes) {
      const n = bitmapCount(d);
      if (body.length - at < 2 * n) {
        throw new InputError(
          `trace ${source}: sample ${s} has ${n} dirty pages but only ${body.length - at} bytes of change sizes follow (${2 * n} needed); the file is truncated or corrupt`,
        );
      }
      const c = new Uint16Array(n);
      for (let i = 0; i < n; i++) {
        const v = body.readUInt16LE(at + 2 * i);
        if (v > h.pageSize)
          throw new InputError(
            `trace ${source}: sample ${s} gives a change of ${v} bytes, more than a page (${h.pageSize})`,
          );
        c[i] = v;
      }
      changes.push(c);
      at += 2 * n;
    }
  }
  if (at !== body.length) {
    throw new InputError(
      `trace ${source}: body has ${body.length} bytes, the header announces ${h.samples} samples that take ${at}; the file is truncated or corrupt`,
    );
  }
  return {
    pageSize: h.pageSize,
    intervalMs: h.intervalMs,
    regions: h.regions,
    pageCount,
    samples: h.samples,
    dirty,
    accessed,
    changes,
    source,
  };
}

export function serializeTrace(t: Trace): Buffer {
  const header: TraceHeader = {
    pageSize: t.pageSize,
    intervalMs: t.intervalMs,
    regions: t.regions,
    samples: t.samples,
    accessed: t.accessed !== null,
    ...(t.changes ? { changes: true } : {}),
  };
  const parts: Uint8Array[] = [Buffer.from(TRACE_MAGIC + JSON.stringify(header) + '\n')];
  for (let s = 0; s < t.samples; s++) {
    parts.push(t.dirty[s]);
    if (t.accessed) parts.push(t.accessed[s]);
    if (t.changes) {
      const c = t.changes[s];
      if (c.length !== bitmapCount(t.dirty[s]))
        throw new Error(
          `serializeTrace: sample ${s} has ${bitmapCount(t.dirty[s])} dirty pages but ${c.length} change sizes`,
        );
      const b = Buffer.allocUnsafe(2 * c.length);
      for (let i = 0; i < c.length; i++) b.writeUInt16LE(c[i], 2 * i);
      parts.push(b);
    }
  }
  return Buffer.concat(parts);
}

/**
 * Replays a trace: the writes of sample s are spread evenly over [s, s+1) intervals, each the size of change the
 * trace recorded for it (whole pages when it recorded none); accessed-only pages are reads at the start of their
 * sample. After the last sample the trace starts again.
 */
export class TraceWorkload implements Workload {
  readonly name = 'trace';
  time = 0;
  page = 0;
  write = false;
  private readonly trace: Trace;
  private readonly pool: ContentPool;
  private readonly interval: number;
  private sample = 0;
  private pass = 0;
  private events: Uint32Array = new Uint32Array(0);
  /** The recorded change size of each write of the sample (null: whole pages). */
  private touch: Uint16Array | null = null;
  private reads = 0;
  private k = 0;
  private seq = 0;

  constructor(trace: Trace, pool: ContentPool, intervalSeconds: number) {
    this.trace = trace;
    this.pool = pool;
    this.interval = intervalSeconds;
    let any = false;
    for (let s = 0; s < trace.samples && !any; s++) any = trace.dirty[s].some((b) => b !== 0);
    if (!any && !trace.accessed?.some((a) => a.some((b) => b !== 0))) {
      this.time = Infinity;
      return;
    }
    this.load();
  }

  /** Loads the current sample's accesses: reads first, then writes. */
  private load(): void {
    for (;;) {
      const d = this.trace.dirty[this.sample];
      const a = this.trace.accessed?.[this.sample];
      const reads: number[] = [];
      const writes: number[] = [];
      for (let i = 0; i < this.trace.pageCount; i++) {
        const bit = 1 << (i & 7);
        if (d[i >>> 3] & bit) writes.push(i);
        else if (a && a[i >>> 3] & bit) reads.push(i);
      }
      this.events = Uint32Array.from([...reads, ...writes]);
      this.touch = this.trace.changes?.[this.sample] ?? null;
      this.reads = reads.length;
      this.k = 0;
      if (this.events.length > 0) break;
      this.advanceSample();
    }
    this.setPending();
  }

  private advanceSample(): void {
    this.sample++;
    if (this.sample === this.trace.samples) {
      this.sample = 0;
      this.pass++;
    }
  }

  private setPending(): void {
    const start = (this.pass * this.trace.samples + this.sample) * this.interval;
    const writes = this.events.length - this.reads;
    this.page = this.events[this.k];
    this.write = this.k >= this.reads;
    this.time = this.write ? start + ((this.k - this.reads + 1) / (writes + 1)) * this.interval : start;
  }

  apply(mem: Buffer): void {
    if (this.write) {
      // The recorded size of the change (one run of that many bytes), or the whole page (none recorded, or 0).
      const size = this.touch ? this.touch[this.k - this.reads] || this.pool.pageSize : this.pool.pageSize;
      this.pool.write(mem, this.page, ++this.seq, size);
    }
    this.k++;
    if (this.k < this.events.length) {
      this.setPending();
      return;
    }
    this.advanceSample();
    this.load();
  }
}
