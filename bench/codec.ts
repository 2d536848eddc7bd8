/**
 * Page codec speed: encode and decode throughput (MB/s of input pages, 1 MB = 10^6 bytes) of each codec chain on
 * one core, median of several runs, against a memory copy of the same pages measured in the same run. Time is the
 * process's CPU time (see timed()); the wall-time figure of the goal line says how much the two differ.
 *
 * Page sets (4096 pages of 4 KiB each, from a fixed seed):
 *   delta   a random page and its last-sent copy, 5 % of the bytes changed in runs of 16 bytes at random places
 *   random  random pages, first send (no last-sent copy)
 *   zero    pages of zeros
 * Each chain runs as the BatchWriter runs it: zero first, then the codec, then raw when the codec does not apply.
 * "xor-lz4 writer" is the BatchWriter itself (last-sent cache lookups and copies, record headers, no frame
 * checksum); "xor + lz4-napi" is the alternative xor-lz4 rejected for deltas: XOR in JavaScript, then one lz4-napi
 * call per page; "lz4-napi" is one call per random page, what the incompressibility test saves.
 *
 *   npm run bench:codec              # 5 runs
 *   npm run bench:codec -- 9         # 9 runs
 */
import os from 'node:os';
import { compressSync } from 'lz4-napi';
import { BatchWriter } from '../src/codec/batch.ts';
import { codecChain, type Codec } from '../src/codec/index.ts';
import { xorInto } from '../src/codec/bytes.ts';
import { median } from '../src/report/metrics.ts';
import { Prng } from '../src/util/prng.ts';

const runs = Number(process.argv[2] ?? 5);
if (!(Number.isInteger(runs) && runs > 0)) {
  console.error(`runs "${process.argv[2]}" must be a whole number > 0`);
  process.exit(2);
}
const PAGE = 4096;
const PAGES = 4096;
const CHANGED = 0.05;
const RUN = 16;
const TARGET = 1e9;

const prng = new Prng(20241122);
const random = Buffer.allocUnsafeSlow(PAGES * PAGE);
prng.fill(random);
const base = Buffer.allocUnsafeSlow(PAGES * PAGE);
prng.fill(base);
const delta = Buffer.from(base);
const noise = Buffer.allocUnsafe(RUN);
for (let p = 0; p < PAGES; p++) {
  for (let r = 0; r < Math.round((CHANGED * PAGE) / RUN); r++) {
    const at = p * PAGE + Math.floor(prng.next() * (PAGE - RUN));
    prng.fill(noise);
    noise.copy(delta, at);
  }
}
const zero = Buffer.alloc(PAGES * PAGE);
let changed = 0;
for (let i = 0; i < delta.length; i++) if (delta[i] !== base[i]) changed++;

interface PageSet {
  name: string;
  pages: Buffer;
  base: Buffer | null;
}
const SETS: PageSet[] = [
  { name: 'delta', pages: delta, base },
  { name: 'random', pages: random, base: null },
  { name: 'zero', pages: zero, base: null },
];

const page = (b: Buffer, p: number): Buffer => b.subarray(p * PAGE, (p + 1) * PAGE);
const out = Buffer.allocUnsafeSlow(2 * PAGE);
const records = Array.from({ length: PAGES }, () => ({
  codec: null as Codec | null,
  bytes: Buffer.alloc(0),
}));

/**
 * CPU seconds this process spent in fn (user + system, all its threads): the machines of this project are shared,
 * and wall time would count the time other processes held the core. Wall seconds go to `walls`.
 */
const walls: number[] = [];
/** Each measurement repeats its pass for at least this long: CPU time is counted in coarse steps. */
const MIN_WALL = 50;
function timed(fn: () => void): number {
  const c = process.cpuUsage();
  const t = performance.now();
  let passes = 0;
  do {
    fn();
    passes++;
  } while (performance.now() - t < MIN_WALL);
  walls.push((performance.now() - t) / 1000 / passes);
  const used = process.cpuUsage(c);
  return (used.user + used.system) / 1e6 / passes;
}

/**
 * Encodes every page of the set with the chain. Returns CPU seconds per pass and bytes; with keep, one untimed
 * pass that keeps the records for decoding.
 */
function encodeAll(chain: readonly Codec[], set: PageSet, keep: boolean): { seconds: number; bytes: number } {
  let bytes = 0;
  const pass = (): void => {
    bytes = 0;
    for (let p = 0; p < PAGES; p++) {
      const pg = page(set.pages, p);
      const b = set.base ? page(set.base, p) : undefined;
      for (const c of chain) {
        const n = c.encode(pg, out, 0, b);
        if (n < 0) continue;
        bytes += n;
        if (keep) {
          records[p].codec = c;
          records[p].bytes = Buffer.from(out.subarray(0, n));
        }
        break;
      }
    }
  };
  if (keep) {
    pass();
    return { seconds: 0, bytes };
  }
  const seconds = timed(pass);
  return { seconds, bytes };
}

function decodeAll(set: PageSet): number {
  const dst = Buffer.allocUnsafeSlow(PAGE);
  return timed(() => {
    for (let p = 0; p < PAGES; p++) {
      const r = records[p];
      r.codec!.decode(r.bytes, dst, set.base ? page(set.base, p) : undefined);
    }
  });
}

function checkRoundTrip(set: PageSet, chain: string): void {
  const dst = Buffer.allocUnsafeSlow(PAGE);
  for (let p = 0; p < PAGES; p++) {
    const r = records[p];
    r.codec!.decode(r.bytes, dst, set.base ? page(set.base, p) : undefined);
    if (!dst.equals(page(set.pages, p))) throw new Error(`${chain} on ${set.name} pages: page ${p} differs`);
  }
}

function memcpy(set: PageSet): number {
  return timed(() => {
    for (let p = 0; p < PAGES; p++) out.set(page(set.pages, p));
  });
}

/**
 * The BatchWriter with its cache holding every page's last-sent copy: what the source does per page on delta
 * pages. Runs alternate between the two versions of each page, so that each run sends 5 % deltas.
 */
const writer = new BatchWriter(codecChain('xor-lz4'), PAGE, 64 * 1024 + 16 * 16);
let writerTurn = 0;
function sendAll(pages: Buffer): void {
  for (let p = 0; p < PAGES; p++) {
    writer.add(p, page(pages, p));
    if (writer.full()) writer.seal(1);
  }
  writer.seal(1);
}
sendAll(base);
const writerWalls: number[] = [];
function writerAll(): number {
  const cpu = timed(() => sendAll(writerTurn++ % 2 === 0 ? delta : base));
  writerWalls.push(walls[walls.length - 1]);
  return cpu;
}

function napiXorLz4(set: PageSet): number {
  const d = Buffer.allocUnsafeSlow(PAGE);
  return timed(() => {
    for (let p = 0; p < PAGES; p++) {
      const pg = page(set.pages, p);
      if (set.base) {
        xorInto(d, pg, page(set.base, p));
        compressSync(d).copy(out);
      } else compressSync(pg).copy(out);
    }
  });
}

const CHAINS = ['raw', 'zero', 'xor-lz4', 'xbzrle', 'zstd'];
const MB = (s: number): number => (PAGES * PAGE) / s / 1e6;
interface Row {
  name: string;
  set: string;
  encode: number[];
  decode: number[];
  bytes: number;
}
const rows: Row[] = [];
const row = (name: string, set: string): Row => {
  let r = rows.find((x) => x.name === name && x.set === set);
  if (!r) rows.push((r = { name, set, encode: [], decode: [], bytes: NaN }));
  return r;
};

// Round trip first: a codec that does not give back the page has no speed to report.
for (const spec of CHAINS) {
  for (const set of SETS) {
    encodeAll(codecChain(spec), set, true);
    checkRoundTrip(set, spec);
  }
}

// One untimed run first, so that every path is compiled before it is measured.
for (let i = -1; i < runs; i++) {
  const keep = i >= 0;
  for (const set of SETS) {
    const copy = MB(memcpy(set));
    if (keep) row('memcpy (baseline)', set.name).encode.push(copy);
    for (const spec of CHAINS) {
      const chain = codecChain(spec);
      const e = encodeAll(chain, set, false);
      encodeAll(chain, set, true);
      const d = decodeAll(set);
      if (!keep) continue;
      const r = row(spec, set.name);
      r.encode.push(MB(e.seconds));
      r.bytes = e.bytes / PAGES;
      r.decode.push(MB(d));
    }
    if (set.name !== 'zero') {
      const napi = MB(napiXorLz4(set));
      if (keep) row(set.base ? 'xor + lz4-napi' : 'lz4-napi', set.name).encode.push(napi);
    }
    if (set.base) {
      const w = MB(writerAll());
      if (keep) row('xor-lz4 writer', set.name).encode.push(w);
    }
  }
}

const fmt = (xs: number[]): string => (xs.length ? median(xs).toFixed(0) : '-');
console.log(
  `page codecs, one core, ${PAGES} pages of ${PAGE} B per set, median of ${runs} runs (MB/s of input pages per CPU second, 1 MB = 10^6 B)`,
);
console.log(
  `delta pages: ${((100 * changed) / delta.length).toFixed(1)} % of bytes changed, in runs of ${RUN} B at random places`,
);
console.log('');
console.log('| chain | pages | encode MB/s | decode MB/s | bytes/page | x memcpy (encode) |');
console.log('| --- | --- | ---: | ---: | ---: | ---: |');
const copy = (set: string): number => median(row('memcpy (baseline)', set).encode);
for (const set of SETS) {
  for (const r of rows.filter((x) => x.set === set.name)) {
    const e = median(r.encode);
    console.log(
      `| ${r.name} | ${r.set} | ${fmt(r.encode)} | ${fmt(r.decode)} | ${Number.isNaN(r.bytes) ? '-' : r.bytes.toFixed(0)} | ${(e / copy(set.name)).toFixed(3)} |`,
    );
  }
}
const xl = median(row('xor-lz4', 'delta').encode);
const xw = median(row('xor-lz4 writer', 'delta').encode);
console.log('');
const xwWall = median(writerWalls.slice(1).map(MB));
console.log(
  `xor-lz4 encode on delta pages: ${xl.toFixed(0)} MB/s (codec), ${xw.toFixed(0)} MB/s (BatchWriter with its cache); target >= ${TARGET / 1e6} MB/s: ${Math.min(xl, xw) >= TARGET / 1e6 ? 'met' : 'NOT met'}`,
);
console.log(
  `the BatchWriter by wall time: ${xwWall.toFixed(0)} MB/s (lower when other processes share the core; load average ${os.loadavg()[0].toFixed(1)} on ${os.availableParallelism()} cores)`,
);
