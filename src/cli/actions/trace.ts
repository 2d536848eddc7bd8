import { writeFileSync } from 'node:fs';
import { probeAccessedBits, type TrackerChoice } from '../../memory/dirty.ts';
import { LiveProcessMemory } from '../../memory/live.ts';
import { LiveMemoryError } from '../../memory/procfs.ts';
import { bitmapCount, loadTrace, serializeTrace, type Trace } from '../../memory/trace.ts';
import type { Bitmap } from '../../util/bitmap.ts';
import { UsageError } from '../../util/errors.ts';
import { checkWritable } from '../../util/paths.ts';
import { formatBytes, parseDuration } from '../../util/units.ts';
import type { AccessedChoice } from '../trace.ts';
import { emit, jsonTarget, type JsonFlag } from './json.ts';

export const TRACE_RECORD_JSON_SCHEMA = 'precog.trace-record/v1';

export interface RecordFlags {
  pid?: string;
  interval: string;
  duration: string;
  out?: string;
  tracker: TrackerChoice;
  accessed: AccessedChoice;
  changes?: 'on' | 'off';
  json?: JsonFlag;
}

export interface RecordOptions {
  intervalSeconds: number;
  samples: number;
  /** Record accessed bits (the source must be opened with { accessed: true }). */
  accessed: boolean;
  /**
   * Record the size of each change (bytes that differ from the page's content at the previous sample). Keeps a
   * copy of the whole layout (the source should be opened with onUnmapped: 'zero').
   */
  changes?: boolean;
  /** Stops the recording early; the samples so far are kept. */
  signal?: AbortSignal;
}

export interface RecordResult {
  trace: Trace;
  /** Seconds between consecutive collections, as measured. */
  intervals: number[];
  /** Seconds each collection took. */
  scanSeconds: number[];
  dirtyPerSample: number[];
  accessedPerSample: number[] | null;
  /** Why recording ended before the planned samples, or null. */
  stoppedEarly: string | null;
}

/** Bitmap (32-bit words) to the trace format's bytes: bit i of byte j is page 8j+i. */
function toTraceBytes(b: Bitmap): Uint8Array {
  const out = new Uint8Array((b.size + 7) >>> 3);
  for (let j = 0; j < out.length; j++) out[j] = (b.words[j >>> 2] >>> ((j & 3) * 8)) & 0xff;
  return out;
}

/** Most memory a recording with change sizes copies (it keeps the previous content of every page). */
export const MAX_CHANGE_COPY_BYTES = 2 ** 31;

const PAGE = 4096;

/** Bytes that differ between two pages (4 words at a time skipped when equal, then counted bytewise). */
export function changedBytes(a: Uint8Array, b: Uint8Array): number {
  const wa = new Uint32Array(a.buffer, a.byteOffset, a.length >>> 2);
  const wb = new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2);
  let n = 0;
  for (let i = 0; i < wa.length; i += 4) {
    if (((wa[i] ^ wb[i]) | (wa[i + 1] ^ wb[i + 1]) | (wa[i + 2] ^ wb[i + 2]) | (wa[i + 3] ^ wb[i + 3])) === 0)
      continue;
    for (let j = i; j < i + 4; j++) {
      const x = wa[j] ^ wb[j];
      if (x & 0xff) n++;
      if (x & 0xff00) n++;
      if (x & 0xff0000) n++;
      if (x & 0xff000000) n++;
    }
  }
  return n;
}

/**
 * The content of every page as of the last sample, to size each change: read whole at the start, then the dirty
 * pages of each sample are read, compared and kept.
 */
class ChangeSizer {
  private readonly copy: Buffer;
  constructor(private readonly mem: LiveProcessMemory) {
    const n = mem.layout.pageCount;
    if (n * PAGE > MAX_CHANGE_COPY_BYTES) {
      throw new UsageError(
        `process ${mem.pid} maps ${formatBytes(n * PAGE)}; recording change sizes keeps a copy of all of it, at most ${formatBytes(MAX_CHANGE_COPY_BYTES)}: use --changes off`,
      );
    }
    this.copy = Buffer.alloc(n * PAGE);
    const chunk = 4096;
    const ids = new Uint32Array(chunk);
    for (let first = 0; first < n; first += chunk) {
      const len = Math.min(chunk, n - first);
      for (let i = 0; i < len; i++) ids[i] = first + i;
      mem.readPages(ids.subarray(0, len), this.copy.subarray(first * PAGE, (first + len) * PAGE), {
        track: false,
      });
    }
  }

  /** Reads the dirty pages, returns each one's changed bytes (ascending page order) and keeps their content. */
  sizes(dirty: Bitmap): Uint16Array {
    const ids: number[] = [];
    dirty.forEach((p) => ids.push(p));
    const out = new Uint16Array(ids.length);
    const buf = Buffer.allocUnsafe(Math.min(ids.length, 1024) * PAGE);
    for (let k = 0; k < ids.length; k += 1024) {
      const part = ids.slice(k, k + 1024);
      // Not tracked: a page written after the scan stays dirty for the next one (its change sized there).
      this.mem.readPages(part, buf, { track: false });
      for (let i = 0; i < part.length; i++) {
        const now = buf.subarray(i * PAGE, (i + 1) * PAGE);
        const before = this.copy.subarray(part[i] * PAGE, (part[i] + 1) * PAGE);
        // The tracker saw a write: at least a byte (0 when the write came between the last scan and its read,
        // and was sized with the sample before).
        out[k + i] = Math.max(1, changedBytes(now, before));
        now.copy(before);
      }
    }
    return out;
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

/**
 * Samples a live process: a first collection starts tracking, then every interval one sample of the pages
 * changed (and, when asked, referenced) since the previous one. Accessed bits are read before the dirty scan
 * and cleared after it, because the scan's own reads of /proc/PID/mem mark pages referenced.
 */
export async function recordTrace(mem: LiveProcessMemory, o: RecordOptions): Promise<RecordResult> {
  const dirty: Uint8Array[] = [];
  const accessed: Uint8Array[] | null = o.accessed ? [] : null;
  const changes: Uint16Array[] | null = o.changes ? [] : null;
  const r: Omit<RecordResult, 'trace'> = {
    intervals: [],
    scanSeconds: [],
    dirtyPerSample: [],
    accessedPerSample: o.accessed ? [] : null,
    stoppedEarly: null,
  };
  await mem.collectDirty();
  const sizer = o.changes ? new ChangeSizer(mem) : null;
  if (o.accessed) mem.clearAccessed();
  const t0 = performance.now();
  let last = t0;
  for (let s = 1; s <= o.samples; s++) {
    await sleep(t0 + s * o.intervalSeconds * 1000 - performance.now());
    if (o.signal?.aborted) {
      r.stoppedEarly = 'interrupted';
      break;
    }
    const start = performance.now();
    let d: Bitmap;
    let a: Bitmap | null = null;
    let c: Uint16Array | null = null;
    try {
      if (o.accessed) a = mem.readAccessed();
      d = await mem.collectDirty();
      if (sizer) c = sizer.sizes(d);
      if (o.accessed) mem.clearAccessed();
    } catch (e) {
      if (e instanceof LiveMemoryError) {
        r.stoppedEarly = e.message;
        break;
      }
      throw e;
    }
    const end = performance.now();
    r.intervals.push((start - last) / 1000);
    r.scanSeconds.push((end - start) / 1000);
    last = start;
    dirty.push(toTraceBytes(d));
    if (changes && c) changes.push(c);
    r.dirtyPerSample.push(d.count());
    if (a && accessed) {
      accessed.push(toTraceBytes(a));
      r.accessedPerSample!.push(a.count());
    }
  }
  // The nominal interval unless the scans could not keep up; then what was measured.
  const mean = r.intervals.reduce((x, y) => x + y, 0) / Math.max(1, r.intervals.length);
  const nominal = o.intervalSeconds;
  const intervalMs =
    Math.abs(mean - nominal) <= 0.05 * nominal ? nominal * 1000 : Math.round(mean * 1e4) / 10;
  const trace: Trace = {
    pageSize: mem.layout.pageSize,
    intervalMs,
    regions: mem.layout.regions,
    pageCount: mem.layout.pageCount,
    samples: dirty.length,
    dirty,
    accessed,
    changes,
    source: `pid ${mem.pid}`,
  };
  return { trace, ...r };
}

function median(xs: number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function parseRecordFlags(f: RecordFlags): { pid: number; interval: number; samples: number; out: string } {
  if (f.pid === undefined) throw new UsageError('--pid is required: the process to record');
  if (!/^\d+$/.test(f.pid) || Number(f.pid) <= 0)
    throw new UsageError(`--pid "${f.pid}" must be a process id (a whole number > 0)`);
  if (f.out === undefined || f.out === '') throw new UsageError('--out is required: the trace file to write');
  checkWritable(f.out, '--out');
  const interval = parseDuration(f.interval, '--interval');
  const duration = parseDuration(f.duration, '--duration');
  if (interval < 0.001) throw new UsageError(`--interval "${f.interval}" must be at least 1ms`);
  if (duration < interval)
    throw new UsageError(`--duration "${f.duration}" must be at least one --interval (${f.interval})`);
  return { pid: Number(f.pid), interval, samples: Math.round(duration / interval), out: f.out };
}

/** `precog trace record`: samples the process, writes the trace and prints a summary. */
export async function record(flags: RecordFlags): Promise<void> {
  const { pid, interval, samples, out } = parseRecordFlags(flags);
  const target = jsonTarget(flags.json);
  let accessed = false;
  let accessedNote = 'off';
  if (flags.accessed !== 'off') {
    const probe = probeAccessedBits();
    if (flags.accessed === 'on' && !probe.readable) throw new UsageError(`--accessed on: ${probe.reason}`);
    accessed = probe.readable && (flags.accessed === 'on' || probe.followsAccesses);
    accessedNote = accessed
      ? probe.followsAccesses
        ? 'recorded'
        : `recorded, but ${probe.reason}`
      : `not recorded: ${probe.reason}`;
  }
  const changes = flags.changes !== 'off';
  const mem = new LiveProcessMemory(pid, {
    tracker: flags.tracker,
    accessed,
    ...(changes ? { onUnmapped: 'zero' as const } : {}),
  });
  const abort = new AbortController();
  const onSigint = () => abort.abort();
  process.once('SIGINT', onSigint);
  let result: RecordResult;
  try {
    result = await recordTrace(mem, {
      intervalSeconds: interval,
      samples,
      accessed,
      changes,
      signal: abort.signal,
    });
  } finally {
    process.removeListener('SIGINT', onSigint);
    mem.close();
  }
  if (result.trace.samples === 0) {
    throw new LiveMemoryError(
      `no samples recorded from process ${pid} (${result.stoppedEarly ?? 'stopped'}); nothing written`,
    );
  }
  const data = serializeTrace(result.trace);
  writeFileSync(out, data);
  const drift = mem.drift();
  const warnings: string[] = [];
  if (result.stoppedEarly)
    warnings.push(`stopped after ${result.trace.samples} of ${samples} samples: ${result.stoppedEarly}`);
  const maxScan = Math.max(...result.scanSeconds);
  if (result.trace.intervalMs !== interval * 1000) {
    warnings.push(
      `scans took up to ${(maxScan * 1000).toFixed(1)}ms, samples came every ${result.trace.intervalMs}ms on average instead of ${interval * 1000}ms (written to the trace); use a longer --interval`,
    );
  }
  if (drift.newPages > 0) {
    warnings.push(
      `${formatBytes(drift.newPages * 4096)} mapped after recording started (new mappings, heap or stack growth) were not recorded`,
    );
  }
  if (drift.gonePages > 0)
    warnings.push(`${formatBytes(drift.gonePages * 4096)} of the recorded layout were unmapped by the end`);
  const allChanges = result.trace.changes?.flatMap((c) => Array.from(c)) ?? null;
  const changeMedian = allChanges ? median(allChanges) : null;
  const summary = {
    schema: TRACE_RECORD_JSON_SCHEMA,
    pid,
    out,
    bytes: data.length,
    tracker: mem.tracker.kind,
    trackerReason: mem.trackerReason,
    accessed: accessedNote,
    intervalMs: result.trace.intervalMs,
    samples: result.trace.samples,
    pageCount: result.trace.pageCount,
    regions: result.trace.regions.length,
    dirtyPerSample: result.dirtyPerSample,
    accessedPerSample: result.accessedPerSample,
    changeBytesMedian: changeMedian,
    scanSecondsMedian: median(result.scanSeconds),
    scanSecondsMax: maxScan,
    drift,
    warnings,
  };
  const dirtyMedian = median(result.dirtyPerSample);
  emit(target, summary, () =>
    [
      `precog trace record: process ${pid}, ${result.trace.samples} samples every ${result.trace.intervalMs}ms`,
      `  layout: ${result.trace.pageCount} pages (${formatBytes(result.trace.pageCount * 4096)}) in ${result.trace.regions.length} regions`,
      `  tracker: ${mem.tracker.kind} (${mem.trackerReason})`,
      `  dirty pages per sample: median ${dirtyMedian}, max ${Math.max(...result.dirtyPerSample)}`,
      `  accessed bits: ${accessedNote}`,
      `  change sizes: ${changeMedian === null ? 'not recorded' : `median ${changeMedian} bytes of a dirty page`}`,
      `  scan time per sample: median ${(median(result.scanSeconds) * 1000).toFixed(1)}ms, max ${(maxScan * 1000).toFixed(1)}ms`,
      ...warnings.map((w) => `  warning: ${w}`),
      `wrote ${out} (${formatBytes(data.length)})`,
      '',
    ].join('\n'),
  );
}

export const TRACE_INFO_JSON_SCHEMA = 'precog.trace-info/v1';

/** What `precog trace info` reports of one trace. */
export interface TraceInfo {
  file: string;
  pages: number;
  mib: number;
  samples: number;
  intervalMs: number;
  /** Median pages dirty in a sample, and their share of the trace's pages. */
  dirtyPerSample: number;
  dirtyShare: number;
  /** MB/s of whole dirty pages, and of changed bytes (null when the trace has no change sizes). */
  pageMBps: number;
  changedMBps: number | null;
  /** Median size of a change in bytes (null without change sizes). */
  changeBytesMedian: number | null;
}

export function traceInfo(file: string): TraceInfo {
  const t = loadTrace(file);
  const dirty = t.dirty.map(bitmapCount);
  const seconds = t.intervalMs / 1000;
  const total = dirty.reduce((a, b) => a + b, 0);
  let changed: number | null = null;
  let changeMedian: number | null = null;
  if (t.changes) {
    const all = t.changes.flatMap((c) => Array.from(c, (v) => v || t.pageSize));
    changed = all.reduce((a, b) => a + b, 0);
    changeMedian = median(all);
  }
  return {
    file,
    pages: t.pageCount,
    mib: (t.pageCount * t.pageSize) / 2 ** 20,
    samples: t.samples,
    intervalMs: t.intervalMs,
    dirtyPerSample: median(dirty),
    dirtyShare: total / (t.samples * t.pageCount),
    pageMBps: (total * t.pageSize) / (t.samples * seconds) / 1e6,
    changedMBps: changed === null ? null : changed / (t.samples * seconds) / 1e6,
    changeBytesMedian: changeMedian,
  };
}

/** `precog trace info FILE...`: one line per trace, or JSON. */
export function info(files: string[], flags: { json?: JsonFlag }): void {
  const target = jsonTarget(flags.json);
  const rows = files.map(traceInfo);
  emit(target, { schema: TRACE_INFO_JSON_SCHEMA, traces: rows }, () => {
    const head = [
      'trace',
      'size',
      'samples',
      'interval',
      'dirty/sample',
      'dirty',
      'pages MB/s',
      'changed MB/s',
      'change',
    ];
    const body = rows.map((r) => [
      r.file,
      `${r.mib.toFixed(1)} MiB`,
      String(r.samples),
      `${r.intervalMs} ms`,
      String(r.dirtyPerSample),
      `${(r.dirtyShare * 100).toFixed(1)}%`,
      r.pageMBps.toFixed(1),
      r.changedMBps === null ? '-' : r.changedMBps.toFixed(2),
      r.changeBytesMedian === null ? '-' : `${r.changeBytesMedian} B`,
    ]);
    const width = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
    const line = (cells: string[]) =>
      cells.map((c, i) => (i === 0 ? c.padEnd(width[i]) : c.padStart(width[i]))).join('  ');
    return [line(head), ...body.map(line), ''].join('\n');
  });
}
