/**
 * What the predictor benchmarks (bench/predict.ts, bench/predict-u2c.ts) feed their predictors: rounds of per-page
 * dirty bitmaps over `pages` pages from a real trace tiled to size, emulated workloads, and a uniform stress case.
 */
import { ContentPool } from '../src/memory/content.ts';
import { loadTrace } from '../src/memory/trace.ts';
import { parseWorkload } from '../src/memory/workloads.ts';
import { traceBitmaps } from '../src/predict/evaluate.ts';
import { Bitmap } from '../src/util/bitmap.ts';
import { Prng } from '../src/util/prng.ts';

/** The value after a command-line flag, or the fallback. */
export function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** The scenarios by name, each making `rounds` bitmaps of `pages` pages when called. */
export function benchScenarios(pages: number, rounds: number): [string, () => Bitmap[]][] {
  const tiledTrace = (path: string): Bitmap[] => {
    const t = traceBitmaps(loadTrace(new URL(path, import.meta.url).pathname));
    return Array.from({ length: rounds }, (_, r) => {
      const src = t[r % t.length];
      const b = new Bitmap(pages);
      for (let p = 0; p < pages; p++) if (src.get(p % src.size)) b.set(p);
      return b;
    });
  };
  // An emulator workload, collecting the pages it writes in each `seconds` of its clock. Only the pages it writes
  // are touched, so the memory is not all committed.
  const workloadRounds = (spec: string, seconds: number): Bitmap[] => {
    const w = parseWorkload(spec, pages * 4096).create(new ContentPool(1, 4096), 1);
    const mem = Buffer.allocUnsafeSlow(pages * 4096);
    return Array.from({ length: rounds }, (_, r) => {
      const b = new Bitmap(pages);
      while (w.time <= (r + 1) * seconds) {
        if (w.write) b.set(w.page);
        w.apply(mem);
      }
      return b;
    });
  };
  const uniform = (p: number): Bitmap[] => {
    const prng = new Prng(7);
    return Array.from({ length: rounds }, () => {
      const b = new Bitmap(pages);
      for (let i = 0; i < pages; i++) if (prng.next() < p) b.set(i);
      return b;
    });
  };
  return [
    ['redis', () => tiledTrace('../traces/redis-benchmark.trace.gz')],
    ['hotspot', () => workloadRounds('memchange:high:pattern=hotspot', 2)],
    ['hotcold', () => workloadRounds('hotcold:rate=11MB/s:skew=1', 2)],
    ['uniform-10%', () => uniform(0.1)],
  ];
}
