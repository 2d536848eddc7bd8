/**
 * Writes dirty-page traces of the emulator's workloads (precog's trace format, gzipped) for training and evaluating
 * the predictors: memchange sequential / random / hotspot at the published research's low and high rates, and hotcold.
 * Deterministic: the same seed writes the same bytes.
 *
 *   npx tsx scripts/emulated-traces.ts                  # traces/emulated/*.trace.gz, 256 MiB, 40 samples of 1 s
 *   npx tsx scripts/emulated-traces.ts --out DIR --memory 128MiB --samples 60 --interval 2s --seed 2
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { ContentPool } from '../src/memory/content.ts';
import { EmulatedMemory } from '../src/memory/emulated.ts';
import { serializeTrace, type Trace } from '../src/memory/trace.ts';
import { parseWorkload } from '../src/memory/workloads.ts';
import { deriveSeed } from '../src/util/prng.ts';
import { parseCount, parseDuration, parseSize } from '../src/util/units.ts';

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const out = flag('--out', new URL('../traces/emulated', import.meta.url).pathname);
const memory = parseSize(flag('--memory', '256MiB'), '--memory');
const samples = parseCount(flag('--samples', '40'), '--samples', 2);
const interval = parseDuration(flag('--interval', '1s'), '--interval');
const seed = parseCount(flag('--seed', '1'), '--seed', 0);

/** File name -> workload spec. */
export const EMULATED_WORKLOADS: Record<string, string> = {
  'memchange-low-sequential': 'memchange:low:pattern=sequential',
  'memchange-high-sequential': 'memchange:high:pattern=sequential',
  'memchange-high-random': 'memchange:high:pattern=random',
  'memchange-low-hotspot': 'memchange:low:pattern=hotspot',
  'memchange-high-hotspot': 'memchange:high:pattern=hotspot',
  'hotcold-skew1': 'hotcold:skew=1',
  'hotcold-skew1.5': 'hotcold:rate=11MB/s:skew=1.5',
};

/** Samples a workload like `precog trace record` samples a process: pages written per interval. */
function record(spec: string): Trace {
  const plan = parseWorkload(spec, memory);
  const pool = new ContentPool(deriveSeed(seed, 'content'), plan.layout.pageSize);
  const clock = { t: 0, now: () => clock.t };
  const mem = new EmulatedMemory(
    plan.layout,
    pool,
    plan.create(pool, deriveSeed(seed, 'workload')),
    clock,
    plan.zeroFraction,
    deriveSeed(seed, 'zero'),
  );
  mem.collectDirty();
  const bytes = (plan.layout.pageCount + 7) >>> 3;
  const dirty: Uint8Array[] = [];
  for (let s = 1; s <= samples; s++) {
    clock.t = s * interval;
    const b = mem.collectDirty();
    dirty.push(new Uint8Array(b.words.buffer, 0, bytes).slice());
  }
  return {
    pageSize: plan.layout.pageSize,
    intervalMs: interval * 1000,
    regions: plan.layout.regions,
    pageCount: plan.layout.pageCount,
    samples,
    dirty,
    accessed: null,
    source: plan.spec,
  };
}

mkdirSync(out, { recursive: true });
for (const [name, spec] of Object.entries(EMULATED_WORKLOADS)) {
  const trace = record(spec);
  const file = join(out, `${name}.trace.gz`);
  const data = gzipSync(serializeTrace(trace), { level: 9 });
  writeFileSync(file, data);
  const perSample = trace.dirty.map((d) => d.reduce((a, x) => a + popcount8(x), 0));
  const med = [...perSample].sort((a, b) => a - b)[perSample.length >> 1];
  console.log(
    `${file}: ${spec}, ${trace.pageCount} pages x ${samples} samples of ${interval * 1000}ms, median ${med} dirty per sample, ${data.length} bytes`,
  );
}

function popcount8(x: number): number {
  let n = 0;
  for (; x; x &= x - 1) n++;
  return n;
}
