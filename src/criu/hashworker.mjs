// A worker of HashPool (src/criu/hashpool.ts): hashes (xxh64) every page of a range of a process's memory, read
// from /proc/PID/mem, or of a range of a file (a dump's pages image). Plain JavaScript, so that it starts without
// the TypeScript loader.
import { closeSync, openSync, readSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { xxh64 } from '@node-rs/xxhash';

const PAGE = 4096;
const CHUNK = 4 << 20;
const buf = Buffer.allocUnsafe(CHUNK);
const fds = new Map();

// Warm up at start (before the stop): the first hashes of a cold worker run unoptimized.
for (let at = 0, n = 0; n < 16384; n++, at = (at + PAGE) % CHUNK) xxh64(buf.subarray(at, at + PAGE));

parentPort.on('message', (job) => {
  if (job.close) {
    for (const fd of fds.values()) closeSync(fd);
    fds.clear();
    return;
  }
  const { seq, pid, file, pages } = job;
  // A process's memory at vaddr, or a file at offset.
  const path = file ?? `/proc/${pid}/mem`;
  const vaddr = file ? job.offset : job.vaddr;
  try {
    let fd = fds.get(path);
    if (fd === undefined) {
      fd = openSync(path, 'r');
      fds.set(path, fd);
    }
    const hashes = new BigUint64Array(pages);
    const len = pages * PAGE;
    for (let done = 0; done < len;) {
      const n = Math.min(CHUNK, len - done);
      for (let got = 0; got < n;) {
        const r = readSync(fd, buf, got, n - got, vaddr + done + got);
        if (r === 0) throw new Error(`end of file at 0x${(vaddr + done + got).toString(16)}`);
        got += r;
      }
      for (let at = 0; at < n; at += PAGE) hashes[(done + at) / PAGE] = xxh64(buf.subarray(at, at + PAGE));
      done += n;
    }
    parentPort.postMessage({ seq, hashes }, [hashes.buffer]);
  } catch (err) {
    parentPort.postMessage({
      seq,
      error: file
        ? `reading ${file} at ${vaddr}: ${err.message}`
        : `reading the memory of PID ${pid} at 0x${vaddr.toString(16)}: ${err.message}`,
    });
  }
});
