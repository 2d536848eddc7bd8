/**
 * How fast does the hash tracker scan a live process? Starts the test writer with a buffer of --size (default
 * 1 GiB, every page touched), then alternates, --repeat times:
 *   baseline: a plain sequential read of the buffer from /proc/PID/mem, --read bytes per read (default 1 MiB,
 *             as ENVIRONMENT.md measured it), nothing else; also with the other of 1 MiB / 4 MiB reads;
 *   scan:     collectDirty() of LiveProcessMemory with the hash tracker (pagemap + read + xxh64 per page +
 *             compare), nothing written in between, so every resident page is read and hashed.
 * Also times xxh64 alone over an in-process buffer, to show where the time goes.
 * Prints medians: seconds per GiB, pages/s, and the scan/baseline ratio.
 *
 * usage: npx tsx bench/hash-scan.ts [--size 1GiB] [--repeat 5] [--read 1MiB] [--json]
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { xxh64 } from '@node-rs/xxhash';
import { LiveProcessMemory } from '../src/memory/live.ts';
import { parseCount, parseSize } from '../src/util/units.ts';
import { startWriter } from '../test/workloads/writer.ts';

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const size = parseSize(flag('--size', '1GiB'), '--size');
const repeat = parseCount(flag('--repeat', '5'), '--repeat', 1);
const readBytes = parseSize(flag('--read', '1MiB'), '--read');
const json = process.argv.includes('--json');
const GiB = 2 ** 30;
const otherRead = readBytes === 2 ** 20 ? 4 * 2 ** 20 : 2 ** 20;
const PAGE = 4096;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Reads [addr, addr+bytes) of the process in chunks of `chunk` bytes; returns seconds. */
function plainRead(pid: number, addr: number, bytes: number, chunk: number): number {
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  const buf = Buffer.allocUnsafeSlow(chunk);
  const t0 = performance.now();
  for (let off = 0; off < bytes;) {
    const n = readSync(fd, buf, 0, Math.min(chunk, bytes - off), addr + off);
    if (n <= 0) throw new Error(`read of /proc/${pid}/mem stopped at offset ${off}`);
    off += n;
  }
  const s = (performance.now() - t0) / 1000;
  closeSync(fd);
  return s;
}

/** xxh64 of every page of an in-process buffer (views made once); returns seconds per GiB. */
function hashOnly(bytes: number): number {
  const buf = Buffer.allocUnsafeSlow(bytes);
  for (let i = 0; i < bytes; i += 8) buf.writeUInt32LE((i * 2654435761) >>> 0, i);
  const views = Array.from({ length: bytes / PAGE }, (_, p) => buf.subarray(p * PAGE, (p + 1) * PAGE));
  const out = new BigUint64Array(views.length);
  const times: number[] = [];
  for (let r = 0; r < 3; r++) {
    const t0 = performance.now();
    for (let p = 0; p < views.length; p++) out[p] = xxh64(views[p]);
    times.push((performance.now() - t0) / 1000);
  }
  return median(times) / (bytes / GiB);
}

const mib = Math.ceil(size / 2 ** 20);
process.stderr.write(`starting a writer with ${mib} MiB touched...\n`);
const w = await startWriter(mib);
try {
  const mem = new LiveProcessMemory(w.pid, { tracker: 'hash', scanReadBytes: readBytes });
  try {
    const bytes = w.pages * PAGE;
    const t0 = performance.now();
    await mem.collectDirty(); // starts tracking: reads and hashes everything once
    const firstScan = (performance.now() - t0) / 1000;
    const base: number[] = [];
    const other: number[] = [];
    const scan: number[] = [];
    let scanned = 0;
    let dirtyPages = 0;
    for (let r = 0; r < repeat; r++) {
      process.stderr.write(`\rround ${r + 1}/${repeat}`);
      base.push(plainRead(w.pid, w.addr, bytes, readBytes) / (bytes / GiB));
      other.push(plainRead(w.pid, w.addr, bytes, otherRead) / (bytes / GiB));
      const d = await mem.collectDirty();
      dirtyPages += d.count();
      scanned = mem.tracker.stats.bytesRead;
      scan.push(mem.tracker.stats.seconds / (scanned / GiB));
    }
    process.stderr.write('\r\x1b[K');
    const hashSecPerGiB = hashOnly(Math.min(256 * 2 ** 20, bytes));
    const result = {
      writer: w.label,
      bufferBytes: bytes,
      layoutBytes: mem.layout.pageCount * PAGE,
      bytesScannedPerRound: scanned,
      readBytes,
      repeat,
      firstScanSeconds: firstScan,
      dirtyPagesFound: dirtyPages,
      baselineSecondsPerGiB: median(base),
      baselineOtherReadBytes: otherRead,
      baselineOtherSecondsPerGiB: median(other),
      scanSecondsPerGiB: median(scan),
      scanPagesPerSecond: GiB / PAGE / median(scan),
      scanOverBaseline: median(scan) / median(base),
      hashOnlySecondsPerGiB: hashSecPerGiB,
      loadAverage: loadavg(),
      cpus: cpus().length,
    };
    if (json) {
      process.stdout.write(JSON.stringify(result, null, 2) + '\n');
    } else {
      const f = (s: number) => `${s.toFixed(3)} s/GiB (${(1 / s).toFixed(2)} GiB/s)`;
      process.stdout.write(
        [
          `hash-scan: writer ${w.label}, ${(bytes / GiB).toFixed(2)} GiB touched; ${(scanned / GiB).toFixed(3)} GiB read per scan; medians of ${repeat}`,
          `  baseline, plain /proc/PID/mem read, ${readBytes / 2 ** 20} MiB reads: ${f(result.baselineSecondsPerGiB)}`,
          `  baseline, plain /proc/PID/mem read, ${otherRead / 2 ** 20} MiB reads: ${f(result.baselineOtherSecondsPerGiB)}`,
          `  hash scan (collectDirty, ${readBytes / 2 ** 20} MiB reads):        ${f(result.scanSecondsPerGiB)}, ${(result.scanPagesPerSecond / 1e6).toFixed(2)} M pages/s`,
          `  scan / baseline: ${result.scanOverBaseline.toFixed(2)}x`,
          `  xxh64 alone (in-process buffer): ${f(hashSecPerGiB)}`,
          `  first scan (starts tracking): ${firstScan.toFixed(3)} s; dirty pages found in idle rounds: ${dirtyPages}`,
          `  load average ${result.loadAverage.map((x) => x.toFixed(2)).join(' ')} on ${result.cpus} CPUs (other work skews these numbers)`,
          '',
        ].join('\n'),
      );
    }
  } finally {
    mem.close();
  }
} finally {
  await w.stop();
}
