/**
 * The bandwidth-aware choice: compress a page only when that shortens its transfer. Encoding a page costs c seconds
 * of CPU and saves s bytes, which the link would have carried in s / rate seconds; the writer encodes when
 * c < s / rate, and sends the page raw otherwise. c and s are running averages (EWMA) of the pages encoded so far,
 * kept apart for pages with a last-sent copy (deltas, which save most of a page) and pages without (whole pages,
 * which save what their content allows); rate is a running average of the link's throughput, measured over each
 * frame the writer hands over. While the rule says raw, one page in PROBE_EVERY is still encoded so that c and s
 * follow the content. Until the link rate is known every page is encoded.
 *
 * c is wall time measured around each encode, unless the chain pins the CPU's encode throughput (`cpu=RATE`):
 * the emulator's clock is virtual and does not see CPU time, and a pinned cost keeps its runs reproducible.
 */
const ALPHA = 0.125;
export const PROBE_EVERY = 32;

export type PageKind = 'delta' | 'whole';

/** The first encodes of a process include the JIT's compilation: not a sign of what the next ones cost. */
const WARMUP = 4;

class Estimate {
  seconds = 0;
  saved = 0;
  samples = 0;
  private seen = 0;

  add(seconds: number, saved: number): void {
    if (++this.seen <= WARMUP) return;
    if (this.samples === 0) {
      this.seconds = seconds;
      this.saved = saved;
    } else {
      this.seconds += ALPHA * (seconds - this.seconds);
      this.saved += ALPHA * (saved - this.saved);
    }
    this.samples++;
  }
}

export interface AdaptiveStats {
  /** Pages the rule sent raw without trying to compress them. */
  skipped: number;
  /** Pages encoded while the rule said raw, to keep the estimates fresh. */
  probes: number;
}

export class AdaptiveRule {
  /** Link throughput in bytes/s (0 until measured). */
  linkRate = 0;
  readonly stats: AdaptiveStats = { skipped: 0, probes: 0 };
  private readonly pageSize: number;
  /** Bytes/s of input pages the CPU encodes, when pinned; otherwise measured. */
  readonly cpuRate: number | undefined;
  private readonly est: Record<PageKind, Estimate> = { delta: new Estimate(), whole: new Estimate() };
  private countdown: Record<PageKind, number> = { delta: PROBE_EVERY, whole: PROBE_EVERY };

  constructor(pageSize: number, cpuRate?: number) {
    this.pageSize = pageSize;
    this.cpuRate = cpuRate;
  }

  /** Whether the rule wants CPU time measured (it does unless the encode throughput is pinned). */
  get timed(): boolean {
    return this.cpuRate === undefined;
  }

  /** One frame of `bytes` went over the link in `seconds`. */
  observeLink(bytes: number, seconds: number): void {
    if (!(bytes > 0 && seconds > 0)) return;
    const rate = bytes / seconds;
    this.linkRate = this.linkRate === 0 ? rate : this.linkRate + ALPHA * (rate - this.linkRate);
  }

  /** Whether to compress the next page of this kind. */
  shouldCompress(kind: PageKind): boolean {
    const e = this.est[kind];
    if (this.linkRate === 0 || e.samples === 0) return true;
    const cost = this.cpuRate === undefined ? e.seconds : this.pageSize / this.cpuRate;
    if (cost < e.saved / this.linkRate) return true;
    if (--this.countdown[kind] <= 0) {
      this.countdown[kind] = PROBE_EVERY;
      this.stats.probes++;
      return true;
    }
    this.stats.skipped++;
    return false;
  }

  /** A page of this kind was encoded in `seconds` (0 when not timed) and came out `saved` bytes shorter. */
  record(kind: PageKind, seconds: number, saved: number): void {
    this.est[kind].add(seconds, saved);
  }
}
