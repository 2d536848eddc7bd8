/**
 * Process memory in CRIU images: pagemap-<id>.img + pages-<pages_id>.img.
 *
 * pagemap-<id>.img (id: the task's PID in the dump) holds a pagemap_head { pages_id } and then pagemap_entry
 * { vaddr, nr_pages, flags } records in ascending address order. pages-<pages_id>.img is raw data without a
 * magic: the contents of the pages of every entry flagged PE_PRESENT, back to back in entry order. Entries without
 * PE_PRESENT (PE_PARENT: the pages are in the parent dump of an incremental chain; PE_LAZY alone: served by the
 * lazy-pages daemon) take no room in it. Images older than the flags field have `in_parent` instead: CRIU reads an
 * entry without flags as PE_PARENT when in_parent is set, else as PE_PRESENT (pagemapFlags below).
 *
 * Addresses absent from the pagemap are restored as zero pages in private anonymous mappings and as the file's
 * contents in private file mappings (CRIU itself never dumps pages that were never touched).
 */
import { closeSync, fstatSync, openSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../util/errors.ts';
import type { Message } from './codec.ts';
import { readImage, writeImage } from './images.ts';

export const PAGE_SIZE = 4096;
/** pagemap_entry.flags bits (criu/include/pagemap.h). */
export const PE_PARENT = 1 << 0;
export const PE_LAZY = 1 << 1;
export const PE_PRESENT = 1 << 2;

/** vma_entry.flags (mmap flags) and vma_entry.status bits used here. */
export const MAP_PRIVATE = 0x2;
export const MAP_ANONYMOUS = 0x20;
export const VMA_ANON_PRIVATE = 1 << 9;
/** VMA_AREA_VSYSCALL | VMA_AREA_VDSO | VMA_AREA_VVAR. */
const VMA_SPECIAL = (1 << 2) | (1 << 3) | (1 << 12);

export interface PagemapEntry {
  vaddr: bigint;
  nr_pages: number;
  in_parent?: boolean;
  flags?: number;
}

export interface VmaEntry {
  start: bigint;
  end: bigint;
  pgoff: bigint;
  shmid: bigint;
  prot: number;
  flags: number;
  status: number;
  fd: bigint;
  madv?: bigint;
  fdflags?: number;
}

export interface Pagemap {
  file: string;
  pagesId: number;
  entries: PagemapEntry[];
}

/** The flags CRIU acts on for an entry (old images: in_parent -> PE_PARENT, no flags -> PE_PRESENT). */
export function pagemapFlags(e: PagemapEntry): number {
  let flags = e.flags ?? 0;
  if (e.in_parent) flags |= PE_PARENT;
  else if (e.flags === undefined) flags = PE_PRESENT;
  return flags;
}

export function pagemapFile(dir: string, id: number | bigint): string {
  return join(dir, `pagemap-${id}.img`);
}

export function pagesFile(dir: string, pagesId: number): string {
  return join(dir, `pages-${pagesId}.img`);
}

/** Reads pagemap-<id>.img and checks what CRIU relies on: a head, then entries in ascending, disjoint order. */
export function readPagemap(dir: string, id: number | bigint): Pagemap {
  const file = pagemapFile(dir, id);
  const image = readImage(file);
  if (image.magic !== 'PAGEMAP')
    throw new InputError(`${file}: at offset 0: expected a PAGEMAP image, got ${image.magic}`);
  if (image.entries.length === 0)
    throw new InputError(`${file}: at offset 8: expected a pagemap_head entry, none`);
  const pagesId = image.entries[0].pages_id as number;
  const entries = image.entries.slice(1) as unknown as PagemapEntry[];
  let end = 0n;
  entries.forEach((e, i) => {
    const at = image.offsets[i + 1];
    if (e.vaddr % BigInt(PAGE_SIZE) !== 0n)
      throw new InputError(
        `${file}: at offset ${at}: entry ${i + 1}: vaddr 0x${e.vaddr.toString(16)} is not page-aligned`,
      );
    if (e.vaddr < end)
      throw new InputError(
        `${file}: at offset ${at}: entry ${i + 1}: vaddr 0x${e.vaddr.toString(16)} overlaps or precedes the previous ` +
          `entry (which ends at 0x${end.toString(16)}); entries must be in ascending order`,
      );
    end = e.vaddr + BigInt(e.nr_pages) * BigInt(PAGE_SIZE);
  });
  return { file, pagesId, entries };
}

export interface PagemapRun {
  vaddr: bigint;
  nrPages: number;
  /** Effective flags (pagemapFlags). */
  flags: number;
  /** The pages' contents (nrPages * PAGE_SIZE bytes) when PE_PRESENT, else null. */
  data: Buffer | null;
}

/**
 * The memory of one task of a dump: every pagemap entry of pagemap-<id>.img in order, with its page data read from
 * pages-<pages_id>.img (the pages id comes from the pagemap's head). Entries that are not PE_PRESENT come with
 * data null. A pages file shorter than the pagemap says is an InputError naming the file and offset.
 */
export function* readPages(dir: string, id: number | bigint): Generator<PagemapRun> {
  const map = readPagemap(dir, id);
  const file = pagesFile(dir, map.pagesId);
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    let pos = 0;
    for (const [i, e] of map.entries.entries()) {
      const flags = pagemapFlags(e);
      if (!(flags & PE_PRESENT)) {
        yield { vaddr: e.vaddr, nrPages: e.nr_pages, flags, data: null };
        continue;
      }
      const len = e.nr_pages * PAGE_SIZE;
      if (pos + len > size)
        throw new InputError(
          `${file}: at offset ${pos}: expected ${len} bytes for pagemap entry ${i + 1} ` +
            `(vaddr 0x${e.vaddr.toString(16)}, ${e.nr_pages} pages), the file has ${size} bytes`,
        );
      const data = Buffer.allocUnsafe(len);
      let got = 0;
      while (got < len) {
        const n = readSync(fd, data, got, len - got, pos + got);
        if (n === 0) throw new InputError(`${file}: at offset ${pos + got}: unexpected end of file`);
        got += n;
      }
      pos += len;
      yield { vaddr: e.vaddr, nrPages: e.nr_pages, flags, data };
    }
  } finally {
    closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Writing

/** A run of consecutive pages to put in a pagemap. */
export interface PageRun {
  vaddr: bigint;
  /** Contents of present pages: a non-empty multiple of PAGE_SIZE bytes. */
  data?: Buffer;
  /** Page count of a run without data (pages in the parent dump, or served lazily). */
  nrPages?: number;
  /** pagemap flags; default PE_PRESENT. PE_PRESENT runs need data, others must have none. */
  flags?: number;
}

function checkRuns(runs: readonly PageRun[]): { run: PageRun; nrPages: number; flags: number }[] {
  const out = runs.map((run) => {
    const flags = run.flags ?? PE_PRESENT;
    const where = `page run at 0x${run.vaddr.toString(16)}`;
    if (run.vaddr < 0n || run.vaddr % BigInt(PAGE_SIZE) !== 0n)
      throw new RangeError(`${where}: not page-aligned`);
    let nrPages: number;
    if (flags & PE_PRESENT) {
      if (!run.data || run.data.length === 0 || run.data.length % PAGE_SIZE !== 0)
        throw new RangeError(
          `${where}: present pages need data of a non-zero multiple of ${PAGE_SIZE} bytes`,
        );
      nrPages = run.data.length / PAGE_SIZE;
      if (run.nrPages !== undefined && run.nrPages !== nrPages)
        throw new RangeError(`${where}: nrPages ${run.nrPages} but ${nrPages} pages of data`);
    } else {
      if (run.data) throw new RangeError(`${where}: data given for pages that are not PE_PRESENT`);
      nrPages = run.nrPages ?? 0;
      if (!Number.isInteger(nrPages) || nrPages <= 0) throw new RangeError(`${where}: needs nrPages > 0`);
    }
    return { run, nrPages, flags };
  });
  out.sort((a, b) => (a.run.vaddr < b.run.vaddr ? -1 : a.run.vaddr > b.run.vaddr ? 1 : 0));
  for (let i = 1; i < out.length; i++) {
    const prev = out[i - 1];
    if (prev.run.vaddr + BigInt(prev.nrPages * PAGE_SIZE) > out[i].run.vaddr)
      throw new RangeError(
        `page runs at 0x${prev.run.vaddr.toString(16)} (${prev.nrPages} pages) and 0x${out[i].run.vaddr.toString(16)} overlap`,
      );
  }
  return out;
}

function pagemapEntries(
  runs: { run: PageRun; nrPages: number; flags: number }[],
  pagesId: number,
): Message[] {
  return [
    { pages_id: pagesId },
    ...runs.map(({ run, nrPages, flags }) => ({ vaddr: run.vaddr, nr_pages: nrPages, flags })),
  ];
}

/**
 * Encodes a pagemap image and its pages data from runs of pages (any order; they must not overlap): one
 * pagemap_entry per run, in address order, pages data in the same order.
 */
export function encodePagemap(
  runs: readonly PageRun[],
  pagesId: number,
): { pagemap: Buffer; pages: Buffer; entries: PagemapEntry[] } {
  const sorted = checkRuns(runs);
  const entries = pagemapEntries(sorted, pagesId);
  const pages = Buffer.concat(sorted.filter((r) => r.flags & PE_PRESENT).map((r) => r.run.data as Buffer));
  return {
    pagemap: writeImage('PAGEMAP', entries),
    pages,
    entries: entries.slice(1) as unknown as PagemapEntry[],
  };
}

export interface WrittenPagemap {
  pagemapFile: string;
  pagesFile: string;
  entries: number;
  pages: number;
  pagesBytes: number;
}

/**
 * Writes pagemap-<id>.img and pages-<pagesId>.img into `dir` from runs of pages (what a destination does to rebuild
 * an image directory from its page store). The page data is written run by run, never gathered in one buffer.
 */
export function writePagemap(
  dir: string,
  id: number | bigint,
  runs: readonly PageRun[],
  opts: { pagesId: number },
): WrittenPagemap {
  const sorted = checkRuns(runs);
  const out: WrittenPagemap = {
    pagemapFile: pagemapFile(dir, id),
    pagesFile: pagesFile(dir, opts.pagesId),
    entries: sorted.length,
    pages: 0,
    pagesBytes: 0,
  };
  const fd = openSync(out.pagesFile, 'w', 0o600);
  try {
    for (const r of sorted) {
      out.pages += r.nrPages;
      if (!(r.flags & PE_PRESENT)) continue;
      const data = r.run.data as Buffer;
      let done = 0;
      while (done < data.length) done += writeSync(fd, data, done, data.length - done);
      out.pagesBytes += data.length;
    }
  } finally {
    closeSync(fd);
  }
  writeFileSync(out.pagemapFile, writeImage('PAGEMAP', pagemapEntries(sorted, opts.pagesId)), {
    mode: 0o600,
  });
  return out;
}

const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);

export interface PageRunOptions {
  /** The task's VMAs (mm_entry.vmas): runs never cross a VMA boundary, as in CRIU's own dumps. */
  vmas?: readonly VmaEntry[];
  /** Longest run, in pages (default: unlimited). */
  maxPages?: number;
  /**
   * Leave out pages that are all zeros in private anonymous VMAs (needs vmas): restore maps those as fresh zero
   * pages anyway. Zero pages of file mappings are kept (the file's contents would show through otherwise).
   */
  dropZeroPages?: boolean;
}

/** A private anonymous mapping (not the vDSO, vvar or vsyscall areas): restore maps it as zero-filled memory. */
export function isPrivateAnonymous(vma: VmaEntry): boolean {
  return (
    (vma.status & VMA_ANON_PRIVATE) !== 0 &&
    (vma.status & VMA_SPECIAL) === 0 &&
    (vma.flags & (MAP_ANONYMOUS | MAP_PRIVATE)) === (MAP_ANONYMOUS | MAP_PRIVATE)
  );
}

/**
 * Groups single pages (vaddr, PAGE_SIZE bytes; any order, no duplicates) into PE_PRESENT runs of consecutive pages
 * for writePagemap.
 */
export function pageRuns(
  pages: Iterable<{ vaddr: bigint; data: Buffer }>,
  opts: PageRunOptions = {},
): { runs: PageRun[]; droppedZeroPages: number } {
  if (opts.dropZeroPages && !opts.vmas) throw new TypeError('dropZeroPages needs the VMAs');
  const list = [...pages].sort((a, b) => (a.vaddr < b.vaddr ? -1 : a.vaddr > b.vaddr ? 1 : 0));
  const vmas = [...(opts.vmas ?? [])].sort((a, b) => (a.start < b.start ? -1 : 1));
  const maxPages = opts.maxPages ?? Infinity;
  const runs: PageRun[] = [];
  let dropped = 0;
  let current: { vaddr: bigint; parts: Buffer[]; vmaEnd: bigint } | null = null;
  const flush = () => {
    if (current) runs.push({ vaddr: current.vaddr, data: Buffer.concat(current.parts), flags: PE_PRESENT });
    current = null;
  };
  let v = 0;
  for (const page of list) {
    if (page.data.length !== PAGE_SIZE)
      throw new RangeError(
        `page at 0x${page.vaddr.toString(16)}: ${page.data.length} bytes, expected ${PAGE_SIZE}`,
      );
    let vma: VmaEntry | undefined;
    if (vmas.length) {
      while (v < vmas.length && vmas[v].end <= page.vaddr) v++;
      vma = v < vmas.length && vmas[v].start <= page.vaddr ? vmas[v] : undefined;
      if (!vma) throw new RangeError(`page at 0x${page.vaddr.toString(16)} lies outside every VMA`);
    }
    if (opts.dropZeroPages && vma && isPrivateAnonymous(vma) && page.data.equals(ZERO_PAGE)) {
      dropped++;
      flush();
      continue;
    }
    const c: { vaddr: bigint; parts: Buffer[]; vmaEnd: bigint } | null = current;
    if (
      c &&
      c.vaddr + BigInt(c.parts.length * PAGE_SIZE) === page.vaddr &&
      c.parts.length < maxPages &&
      page.vaddr < c.vmaEnd
    ) {
      c.parts.push(page.data);
      continue;
    }
    flush();
    current = { vaddr: page.vaddr, parts: [page.data], vmaEnd: vma ? vma.end : 1n << 64n };
  }
  flush();
  return { runs, droppedZeroPages: dropped };
}

/** The VMAs of a task, from mm-<id>.img. */
export function readVmas(dir: string, id: number | bigint): VmaEntry[] {
  const file = join(dir, `mm-${id}.img`);
  const image = readImage(file);
  if (image.magic !== 'MM' || image.entries.length !== 1)
    throw new InputError(`${file}: at offset 0: expected an MM image with one entry`);
  return (image.entries[0].vmas ?? []) as unknown as VmaEntry[];
}
