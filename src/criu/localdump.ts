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
import { PAGE_SIZE, pagemapFlags, pagesFile, PE_LAZY, PE_PRESENT, readPagemap } from './pages.ts';
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

/**
 * A test on every page of a task's run of N pages from VADDR at once: 1 for each page it holds for, 0 otherwise. A
 * run at a time, not a page: the stop asks it of every page of the container's memory (a GiB is 262,144 pages).
 */
export type RunTest = (id: number, vaddr: bigint, n: number) => Uint8Array;

/** A RunTest from a test on one page (for small dumps and tests). */
export const pageWise =
  (test: (id: number, vaddr: bigint) => boolean): RunTest =>
  (id, vaddr, n) => {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = test(id, vaddr + BigInt(i * PAGE_SIZE)) ? 1 : 0;
    return out;
  };

/**
 * The xxh64 of every page of a run, by task and first address, and which pages of a run the destination holds, given
 * their hashes (1: it holds the same bytes).
 */
export interface RunHashes {
  of: (id: number, vaddr: bigint) => BigUint64Array | undefined;
  have: (id: number, vaddr: bigint, hashes: BigUint64Array) => Uint8Array;
}

/** RunHashes for RUNS from HASHES (one array per run, in the same order: HashPool.hash's answer). */
export function runHashes(
  runs: readonly { id: number; vaddr: bigint }[],
  hashes: readonly BigUint64Array[],
  have: RunHashes['have'],
): RunHashes {
  const byRun = new Map(runs.map((r, i) => [`${r.id}:${r.vaddr}`, hashes[i]]));
  return { of: (id, vaddr) => byRun.get(`${id}:${vaddr}`), have };
}

export function receiveFromImages(
  dir: string,
  have: HavePredicate,
  opts: {
    keep?: boolean;
    /**
     * A lazy dump's (src/criu/lazydump.ts): fills out[0, len) with a task's memory at vaddr, for the runs its pagemap
     * flags PE_LAZY (CRIU left them in the stopped task). They are then classified like the runs of the pages file
     * and become PE_PRESENT | PE_LAZY runs of the result, as in a full dump.
     */
    readLazy?: (id: number, vaddr: bigint, out: Buffer, len: number) => void;
    /**
     * The xxh64 of every page of a lazy run (hashed beforehand, see lazyRuns and src/criu/hashpool.ts), and the
     * `have` test on a hash: then only the pages whose hash differs are read (with readLazy).
     */
    lazyHashes?: RunHashes;
    /**
     * Pages of lazy runs not to read at all (a post-copy's pages the destination never had: precog reads them from
     * the frozen tasks when it sends them). They stay in their run, neither changed nor unchanged.
     */
    deferLazy?: RunTest;
    /**
     * Pages of a task's runs in the pages file not to read now (a cold move's or a post-copy's pages the destination
     * never had): listed in their run's `deferred`, read from the file when sent. Only with `keep` (the file must
     * outlive the move).
     */
    deferPresent?: RunTest;
    /**
     * The xxh64 of every page of a task's present run (hashed beforehand from the pages file, see presentRuns and
     * src/criu/hashpool.ts), and the `have` test on a hash: then only the pages whose hash differs are read.
     */
    presentHashes?: RunHashes;
  } = {},
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
      /** A page of memory for a changed page, from slabs of 256 (not one allocation per page). */
      const nextPage = (): Buffer => {
        if (slabUsed === slab.length) {
          slab = Buffer.allocUnsafe(256 * PAGE_SIZE);
          slabUsed = 0;
        }
        slabUsed += PAGE_SIZE;
        return slab.subarray(slabUsed - PAGE_SIZE, slabUsed);
      };
      for (const e of map.entries) {
        const flags = pagemapFlags(e);
        const run: ReceivedRun = { vaddr: e.vaddr, nrPages: e.nr_pages, flags, data: null, offset: pos };
        runs.push(run);
        const lazy = !(flags & PE_PRESENT) && (flags & PE_LAZY) !== 0;
        if (lazy && (kind !== 'pid' || !opts.readLazy))
          throw new InputError(
            `${dir}: pagemap-${kind === 'shmem' ? 'shmem-' : ''}${id}.img: pages left in the task (PE_LAZY) ` +
              'and no way to read them: not the images of a full dump',
          );
        if (!(flags & PE_PRESENT) && !lazy) continue;
        const len = e.nr_pages * PAGE_SIZE;
        bytes += len;
        if (lazy) run.flags = flags | PE_PRESENT; // as a full dump flags them: present, lazy-capable
        if (kind === 'shmem') {
          run.data = Buffer.allocUnsafe(len);
          readFully(fd, run.data, 0, len, pos, file);
          pos += len;
          continue;
        }
        run.changed = [];
        run.unchanged = 0;
        // Pages to skip (deferred: read later, or held by hash) and pages to read in stretches: from the task for
        // a lazy run (readLazy), from the pages file otherwise.
        const hashed = lazy ? opts.lazyHashes : opts.presentHashes;
        const known = hashed?.of(id, e.vaddr);
        if (known && known.length !== e.nr_pages)
          throw new Error(`pagemap-${id}: ${known.length} hashes for a run of ${e.nr_pages} pages`);
        const defer = lazy ? opts.deferLazy : opts.keep ? opts.deferPresent : undefined;
        if (defer || known) {
          const at = (i: number) => e.vaddr + BigInt(i * PAGE_SIZE);
          const later = defer?.(id, e.vaddr, e.nr_pages);
          const held = known ? hashed!.have(id, e.vaddr, known) : undefined;
          /** What a page needs: to be read (null), nothing yet (deferred), or nothing since it is held (by hash). */
          const skip = (i: number): 'deferred' | 'unchanged' | null =>
            later?.[i] ? 'deferred' : held?.[i] ? 'unchanged' : null;
          const read = (i: number, out: Buffer) =>
            lazy
              ? opts.readLazy!(id, at(i), out, out.length)
              : readFully(fd, out, 0, out.length, pos + i * PAGE_SIZE, file);
          // A deferred page of the pages file is listed with where it is; a lazy run's stays in the task (deferLazy).
          const deferred: bigint[] = [];
          // Consecutive pages to read are read together (a cold move: every page, in reads of up to 1 MiB).
          for (let i = 0; i < e.nr_pages;) {
            const why = skip(i);
            if (why) {
              if (why === 'unchanged') run.unchanged++;
              else if (!lazy) deferred.push(at(i));
              i++;
              continue;
            }
            let k = 1;
            while (i + k < e.nr_pages && k < 256 && skip(i + k) === null) k++;
            const stretch = Buffer.allocUnsafe(k * PAGE_SIZE);
            read(i, stretch);
            for (let j = 0; j < k; j++) {
              const bytes = stretch.subarray(j * PAGE_SIZE, (j + 1) * PAGE_SIZE);
              // With the hashes known, a page read is one whose hash differs: changed; else it is compared now.
              if (!known && have(id, at(i + j), bytes, kind)) run.unchanged++;
              else run.changed.push({ vaddr: at(i + j), bytes } satisfies ReceivedPage);
            }
            i += k;
          }
          if (deferred.length) {
            run.deferred = deferred;
            run.source = { file, offset: pos };
          }
          if (!lazy) pos += len;
          continue;
        }
        for (let done = 0; done < len;) {
          const n = Math.min(CHUNK, len - done);
          if (lazy) opts.readLazy!(id, e.vaddr + BigInt(done), buf, n);
          else readFully(fd, buf, 0, n, pos + done, file);
          for (let at = 0; at < n; at += PAGE_SIZE) {
            const page = buf.subarray(at, at + PAGE_SIZE);
            const vaddr = e.vaddr + BigInt(done + at);
            if (have(id, vaddr, page, kind)) {
              run.unchanged++;
              continue;
            }
            const copy = nextPage();
            page.copy(copy);
            run.changed.push({ vaddr, bytes: copy } satisfies ReceivedPage);
          }
          done += n;
        }
        if (!lazy) pos += len;
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
  if (!opts.keep) removePageImages(dir, names);
  return { tasks, shmem, counts: total, bytes, commands: {}, layout };
}

/**
 * The runs of the tasks' pages files in DIR (PE_PRESENT, not lazy): each with its pages file and the offset of its
 * first page there, for hashing them (HashPool) before receiveFromImages reads them.
 */
export function presentRuns(
  dir: string,
): { id: number; vaddr: bigint; nrPages: number; file: string; offset: number }[] {
  const out: { id: number; vaddr: bigint; nrPages: number; file: string; offset: number }[] = [];
  for (const name of readdirSync(dir)) {
    const m = /^pagemap-(\d+)\.img$/.exec(name);
    if (!m) continue;
    const id = Number(m[1]);
    const map = readPagemap(dir, id);
    const file = pagesFile(dir, map.pagesId);
    let pos = 0;
    for (const e of map.entries) {
      if (!(pagemapFlags(e) & PE_PRESENT)) continue;
      out.push({ id, vaddr: e.vaddr, nrPages: e.nr_pages, file, offset: pos });
      pos += e.nr_pages * PAGE_SIZE;
    }
  }
  return out;
}

/** The runs a lazy dump left in the tasks (PE_LAZY without PE_PRESENT), per task pagemap of DIR. */
export function lazyRuns(dir: string): { id: number; vaddr: bigint; nrPages: number }[] {
  const out: { id: number; vaddr: bigint; nrPages: number }[] = [];
  for (const name of readdirSync(dir)) {
    const m = /^pagemap-(\d+)\.img$/.exec(name);
    if (!m) continue;
    const id = Number(m[1]);
    for (const e of readPagemap(dir, id).entries) {
      const flags = pagemapFlags(e);
      if (!(flags & PE_PRESENT) && flags & PE_LAZY) out.push({ id, vaddr: e.vaddr, nrPages: e.nr_pages });
    }
  }
  return out;
}

/** Removes the memory images of DIR (what the migration needs of them is in its ReceivedDump). */
export function removePageImages(dir: string, names: readonly string[] = readdirSync(dir)): void {
  for (const name of names) if (isPageImage(name)) rmSync(join(dir, name), { force: true });
}

function readFully(fd: number, buf: Buffer, at: number, len: number, pos: number, file: string): void {
  let got = 0;
  while (got < len) {
    const n = readSync(fd, buf, at + got, len - got, pos + got);
    if (n === 0) throw new InputError(`${file}: at offset ${pos + got}: unexpected end of file`);
    got += n;
  }
}
