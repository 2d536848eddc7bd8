import { UsageError } from '../util/errors.ts';
import { checkEmpty, paramSyntax, parseSpec, take, type Spec } from '../util/spec.ts';
import { parseDuration, parseRate, parseSize } from '../util/units.ts';
import type { Layout } from '../util/interfaces.ts';
import { ContentPool } from './content.ts';
import { HotColdWorkload, MemchangeWorkload, type MemchangePattern } from './memchange.ts';
import { loadTrace, TraceWorkload } from './trace.ts';
import { IdleWorkload, type Workload } from './workload.ts';

/** A parsed workload: its memory layout, and a factory for its (deterministic) access stream. */
export interface WorkloadPlan {
  /** The spec with every parameter spelled out. */
  spec: string;
  layout: Layout;
  zeroFraction: number;
  create(pool: ContentPool, seed: number): Workload;
}

/** Dirty-rate presets of the published research (MBDPC, U2CMigration) (MB/s, decimal). */
export const RATE_PRESETS: Record<string, [number, number]> = {
  low: [1e6, 2e6],
  high: [11e6, 12e6],
};

const DEFAULT_START = '0x7f0000000000';

function flatLayout(memoryBytes: number, pageSize: number): Layout {
  const pages = Math.floor(memoryBytes / pageSize);
  if (pages < 1) throw new UsageError(`memory of ${memoryBytes} bytes holds no page of ${pageSize} bytes`);
  return { pageSize, pageCount: pages, regions: [{ start: DEFAULT_START, pages, name: 'anon' }] };
}

/** "1MB/s", "1MB/s-2MB/s" or a preset word; returns [min, max] in bytes/s. */
function rateRange(spec: Spec, fallback: [number, number]): [number, number] {
  let range = fallback;
  for (const w of spec.words) {
    const preset = RATE_PRESETS[w];
    if (!preset) {
      throw new UsageError(
        `unknown ${spec.name} preset "${w}"; accepted: ${Object.keys(RATE_PRESETS).join(', ')} or rate=<MB/s>`,
      );
    }
    range = preset;
  }
  return take(
    spec,
    'rate',
    (v, what) => {
      const [a, b] = v.split('-');
      const lo = parseRate(a, what);
      const hi = b === undefined ? lo : parseRate(b, what);
      if (!(lo > 0) || hi < lo)
        throw new UsageError(`${what} "${v}" must be a rate > 0, or a range low-high`);
      return [lo, hi] as [number, number];
    },
    range,
  );
}

function fraction(v: string, what: string): number {
  const n = Number(v);
  if (!(n >= 0 && n <= 1)) throw new UsageError(`${what} "${v}" must be a fraction between 0 and 1`);
  return n;
}

function touchBytes(spec: Spec, pageSize: number): number {
  return take(
    spec,
    'touch',
    (v, what) => {
      const n = parseSize(v, what);
      if (n < 8 || n > pageSize)
        throw new UsageError(`${what} "${v}" must be between 8 bytes and a page (${pageSize})`);
      return n;
    },
    pageSize,
  );
}

const WORKLOADS: Record<
  string,
  { params: string[]; words: boolean; plan: (s: Spec, memory: number, pageSize: number) => WorkloadPlan }
> = {
  idle: {
    params: ['zero'],
    words: false,
    plan(s, memory, pageSize) {
      const zeroFraction = take(s, 'zero', fraction, 0);
      return {
        spec: `idle:zero=${zeroFraction}`,
        layout: flatLayout(memory, pageSize),
        zeroFraction,
        create: () => new IdleWorkload(),
      };
    },
  },
  memchange: {
    params: ['rate', 'buffer', 'pattern', 'touch', 'hot', 'hotshare', 'zero'],
    words: true,
    plan(s, memory, pageSize) {
      const layout = flatLayout(memory, pageSize);
      const [rateMin, rateMax] = rateRange(s, RATE_PRESETS.low);
      const bufferBytes = take(s, 'buffer', parseSize, Math.floor(memory / 2));
      const bufferPages = Math.floor(bufferBytes / pageSize);
      if (bufferPages < 1 || bufferPages > layout.pageCount) {
        throw new UsageError(
          `memchange buffer of ${bufferBytes} bytes must fit in memory of ${memory} bytes`,
        );
      }
      const pattern = take(s, 'pattern', (v) => v, 'sequential') as MemchangePattern;
      if (!['sequential', 'random', 'hotspot'].includes(pattern)) {
        throw new UsageError(
          `memchange pattern "${pattern}" is unknown; accepted: sequential, random, hotspot`,
        );
      }
      const touch = touchBytes(s, pageSize);
      const hotFraction = take(s, 'hot', fraction, 0.2);
      const hotShare = take(s, 'hotshare', fraction, 0.8);
      const zeroFraction = take(s, 'zero', fraction, 0);
      // The buffer sits after the first eighth of memory (code, stack and heap that the workload leaves alone).
      const bufferStart = Math.min(Math.floor(layout.pageCount / 8), layout.pageCount - bufferPages);
      return {
        spec:
          `memchange:rate=${rateMin / 1e6}MB/s-${rateMax / 1e6}MB/s:buffer=${bufferBytes}:pattern=${pattern}:touch=${touch}` +
          (pattern === 'hotspot' ? `:hot=${hotFraction}:hotshare=${hotShare}` : '') +
          `:zero=${zeroFraction}`,
        layout,
        zeroFraction,
        create: (pool, seed) =>
          new MemchangeWorkload(
            { rateMin, rateMax, bufferStart, bufferPages, pattern, touch, hotFraction, hotShare },
            pool,
            seed,
          ),
      };
    },
  },
  hotcold: {
    params: ['rate', 'skew', 'touch', 'zero'],
    words: true,
    plan(s, memory, pageSize) {
      const layout = flatLayout(memory, pageSize);
      const [rateMin, rateMax] = rateRange(s, [5e6, 5e6]);
      const skew = take(
        s,
        'skew',
        (v, what) => {
          const n = Number(v);
          if (!(n >= 0 && n <= 4)) throw new UsageError(`${what} "${v}" must be between 0 and 4`);
          return n;
        },
        1,
      );
      const touch = touchBytes(s, pageSize);
      const zeroFraction = take(s, 'zero', fraction, 0);
      return {
        spec: `hotcold:rate=${rateMin / 1e6}MB/s-${rateMax / 1e6}MB/s:skew=${skew}:touch=${touch}:zero=${zeroFraction}`,
        layout,
        zeroFraction,
        create: (pool, seed) =>
          new HotColdWorkload({ rateMin, rateMax, pages: layout.pageCount, skew, touch }, pool, seed),
      };
    },
  },
  trace: {
    params: ['file', 'interval'],
    words: false,
    plan(s) {
      const file = take(s, 'file', (v) => v, '');
      if (!file)
        throw new UsageError('the trace workload needs file=PATH (precog trace format or the public JSON)');
      const trace = loadTrace(file);
      const interval = take(
        s,
        'interval',
        (v, what) => {
          const d = parseDuration(v, what);
          if (!(d > 0)) throw new UsageError(`${what} "${v}" must be > 0`);
          return d;
        },
        trace.intervalMs / 1000,
      );
      return {
        spec: `trace:file=${file}:interval=${interval * 1000}ms`,
        layout: { pageSize: trace.pageSize, pageCount: trace.pageCount, regions: trace.regions },
        zeroFraction: 0,
        create: (pool) => new TraceWorkload(trace, pool, interval),
      };
    },
  },
};

export const WORKLOAD_NAMES = Object.keys(WORKLOADS);

/** Each emulated workload with the parameters it takes (and its presets), from the registry. */
export function describeWorkloads(): string[] {
  return WORKLOAD_NAMES.map((n) => {
    const presets = n === 'memchange' ? `[:${Object.keys(RATE_PRESETS).join('|')}]` : '';
    return n + presets + paramSyntax(WORKLOADS[n].params);
  });
}

/**
 * Parses a workload spec: "idle", "memchange:high", "memchange:rate=5MB/s:pattern=random:buffer=256MiB",
 * "hotcold:skew=1.2", "trace:file=PATH" (or "trace:PATH"). memoryBytes sizes the emulated memory (a trace brings its own).
 */
export function parseWorkload(text: string, memoryBytes: number, pageSize = 4096): WorkloadPlan {
  // "trace:FILE" is short for "trace:file=FILE" (the first parameter of a trace is its file).
  if (/^trace:(?![a-z]+=)/.test(text)) text = `trace:file=${text.slice(6)}`;
  const spec = parseSpec(text, 'workload');
  const entry = WORKLOADS[spec.name];
  if (!entry) throw new UsageError(`unknown workload "${spec.name}"; accepted: ${WORKLOAD_NAMES.join(', ')}`);
  if (!entry.words && spec.words.length > 0) {
    throw new UsageError(`workload ${spec.name} takes key=value parameters, not "${spec.words[0]}"`);
  }
  const plan = entry.plan(spec, memoryBytes, pageSize);
  checkEmpty(spec, 'workload', entry.params);
  return plan;
}
