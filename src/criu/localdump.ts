/**
 * A dump written to an image directory (`criu dump` without --page-server), read back as if it had come through
 * precog's page server in keepOnlyChanged mode: per task, the pages the destination lacks (copied out) and a count
 * of those it holds; shared memory whole. The pages and pagemap images are removed afterwards: what the migration
 * needs of them is in the result, and the rest of the directory is the state.
 *
 * Why: CRIU writes a local dump about five times faster than it streams one to a page server on this machine (the
 * socket path pays a kernel copy into the socket and one out of it, and two processes share two CPUs), and
 * classifying pages read back from the page cache costs less than the difference. The price is disk space for one
 * full dump on the source, for the seconds the stop lasts.
 */
import { closeSync, openSync, readdirSync, readSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../util/errors.ts';
import { PAGE_SIZE, pagemapFlags, pagesFile, PE_PRESENT, readPagemap } from './pages.ts';
import {
  classify,
  type HavePredicate,
  type PageCounts,
  type PagemapKind,
  type ReceivedDump,
  type ReceivedMemory,
  type ReceivedPage,
  type ReceivedRun,
} from './pageserver.ts';

/** CRIU's memory images (pagemap-*.img, pages-*.img): what a dump's state leaves out. */
export const isPageImage = (name: string): boolean => /^(pagemap-(shmem-)?\d+|pages-\d+)\.img$/.test(name);

/** Bytes read from a pages image at a time. */
const CHUNK = 4 << 20;

export function receiveFromImages(
  dir: string,
  have: HavePredicate,
  opts: { keep?: boolean } = {},
): ReceivedDump {
  const tasks = new Map<number, ReceivedMemory>();
  const shmem = new Map<number, ReceivedMemory>();
  const total: PageCounts = { pages: 0, changed: 0, unchanged: 0, absent: 0 };
  const names = readdirSync(dir);
  let bytes = 0;
  /** The iov layout a page-server stream of this CRIU would have had (32: CRIU >= 4.2, 64-bit page counts). */
  let layout: 24 | 32 = 32;
  for (const name of names) {
    const m = /^pagemap-(shmem-)?(\d+)\.img$/.exec(name);
    if (!m) continue;
    const kind: PagemapKind = m[1] ? 'shmem' : 'pid';
    const id = Number(m[2]);
    const map = readPagemap(dir, m[1] ? `shmem-${id}` : id);
    if (map.format === 'compat') layout = 24;
    const runs: ReceivedRun[] = [];
    const file = pagesFile(dir, map.pagesId);
    const fd = openSync(file, 'r');
    try {
      let pos = 0;
      const buf = Buffer.allocUnsafe(CHUNK);
      let slab = Buffer.allocUnsafe(0);
      let slabUsed = 0;
      for (const e of map.entries) {
        const flags = pagemapFlags(e);
        const run: ReceivedRun = { vaddr: e.vaddr, nrPages: e.nr_pages, flags, data: null, offset: pos };
        runs.push(run);
        if (!(flags & PE_PRESENT)) continue;
        const len = e.nr_pages * PAGE_SIZE;
        bytes += len;
        if (kind === 'shmem') {
          run.data = Buffer.allocUnsafe(len);
          readFully(fd, run.data, 0, len, pos, file);
          pos += len;
          continue;
        }
        run.changed = [];
        run.unchanged = 0;
        for (let done = 0; done < len;) {
          const n = Math.min(CHUNK, len - done);
          readFully(fd, buf, 0, n, pos + done, file);
          for (let at = 0; at < n; at += PAGE_SIZE) {
            const page = buf.subarray(at, at + PAGE_SIZE);
            const vaddr = e.vaddr + BigInt(done + at);
            if (have(id, vaddr, page, kind)) {
              run.unchanged++;
              continue;
            }
            if (slabUsed === slab.length) {
              slab = Buffer.allocUnsafe(256 * PAGE_SIZE);
              slabUsed = 0;
            }
            const copy = slab.subarray(slabUsed, slabUsed + PAGE_SIZE);
            page.copy(copy);
            slabUsed += PAGE_SIZE;
            run.changed.push({ vaddr, bytes: copy } satisfies ReceivedPage);
          }
          done += n;
        }
        pos += len;
      }
    } finally {
      closeSync(fd);
    }
    const mem = classify(kind, id, runs);
    for (const k of ['pages', 'changed', 'unchanged', 'absent'] as const) total[k] += mem.counts[k];
    (kind === 'pid' ? tasks : shmem).set(id, mem);
  }
  if (tasks.size === 0) throw new InputError(`${dir}: no pagemap-<pid>.img: not the images of a dump`);
  // keep: the images belong to someone else (a runtime's own checkpoint, kept for its rollback).
  for (const name of opts.keep ? [] : names) if (isPageImage(name)) rmSync(join(dir, name), { force: true });
  return { tasks, shmem, counts: total, bytes, commands: {}, layout };
}

function readFully(fd: number, buf: Buffer, at: number, len: number, pos: number, file: string): void {
  let got = 0;
  while (got < len) {
    const n = readSync(fd, buf, at + got, len - got, pos + got);
    if (n === 0) throw new InputError(`${file}: at offset ${pos + got}: unexpected end of file`);
    got += n;
  }
}
