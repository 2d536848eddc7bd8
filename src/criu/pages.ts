/**
 * Process memory in CRIU images: pagemap-<id>.img + pages-<pages_id>.img.
 *
 * pagemap-<id>.img (id: the task's PID in the dump) holds a pagemap_head { pages_id } and then pagemap_entry
 * { vaddr, page count, flags } records in ascending address order. pages-<pages_id>.img is raw data without a
 * magic: the contents of the pages of every entry flagged PE_PRESENT, back to back in entry order. Entries without
 * PE_PRESENT (PE_PARENT: the pages are in the parent dump of an incremental chain; PE_LAZY alone: served by the
 * lazy-pages daemon) take no room in it. Images older than the flags field have `in_parent` instead: CRIU reads an
 * entry without flags as PE_PARENT when in_parent is set, else as PE_PRESENT (pagemapFlags below).
 *
 * The page count has two homes (PagemapFormat): up to CRIU 4.1 the u32 field 2 (then named nr_pages, now
 * compat_nr_pages); CRIU 4.2 writes 0 there and the count in the u64 field 5 (nr_pages), and reads field 2 when
 * field 5 is absent. readPagemap hands out the count whichever field holds it; the writers put it in field 2 by
 * default, which every CRIU version reads, or where CRIU 4.2 puts it ({ format: 'nr_pages64' }).
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

/** A pagemap entry as readPagemap and encodePagemap hand it out: the page count whichever field held it. */
export interface PagemapEntry {
  vaddr: bigint;
  /** The page count: pagemap_entry.nr_pages (CRIU >= 4.2) when present, else compat_nr_pages. */
  nr_pages: number;
  in_parent?: boolean;
  flags?: number;
}

/** pagemap_entry as decoded from the image (the fields of src/criu/proto/pagemap.proto). */
export interface PagemapEntryMessage {
  vaddr: bigint;
  /** The page count up to CRIU 4.1; 0 in entries of CRIU >= 4.2. */
  compat_nr_pages: number;
  in_parent?: boolean;
  flags?: number;
  /** CRIU >= 4.2: the page count. */
  nr_pages?: bigint;
}

/**
 * Where a pagemap image keeps its entries' page counts:
 * - 'compat': in compat_nr_pages (field 2), as CRIU <= 4.1 writes it; read by every CRIU version (4.2 included);
 * - 'nr_pages64': compat_nr_pages 0 and the count in nr_pages (field 5), as CRIU >= 4.2 writes it; CRIU <= 4.1
 *   would read runs of 0 pages.
 */
export type PagemapFormat = 'compat' | 'nr_pages64';

/** Largest count compat_nr_pages holds; longer runs are written in the nr_pages64 form whatever the format. */
const U32_MAX = 0xffff_ffff;

/** The page count of a decoded pagemap_entry, as CRIU 4.2 takes it (nr_pages if present, else compat_nr_pages). */
export function pagemapEntryPages(m: PagemapEntryMessage): number {
  if (m.nr_pages === undefined) return m.compat_nr_pages;
  const n = Number(m.nr_pages);
  if (!Number.isSafeInteger(n)) throw new RangeError(`pagemap entry: nr_pages ${m.nr_pages} is too large`);
  return n;
}

/** The entry precog hands out for a decoded pagemap_entry (pagemapEntryPages as nr_pages). */
function pagemapEntry(m: PagemapEntryMessage): PagemapEntry {
  const e: PagemapEntry = { vaddr: m.vaddr, nr_pages: pagemapEntryPages(m) };
  if (m.in_parent !== undefined) e.in_parent = m.in_parent;
  if (m.flags !== undefined) e.flags = m.flags;
  return e;
}

/** The pagemap_entry message for a run, in the given format. */
function pagemapEntryMessage(
  vaddr: bigint,
  nrPages: number,
  flags: number,
  format: PagemapFormat,
): PagemapEntryMessage {
  if (format === 'compat' && nrPages <= U32_MAX) return { vaddr, compat_nr_pages: nrPages, flags };
  return { vaddr, compat_nr_pages: 0, flags, nr_pages: BigInt(nrPages) };
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
  /** 'nr_pages64' when any entry has nr_pages (CRIU >= 4.2 wrote it), else 'compat'. */
  format: PagemapFormat;
}

/** The flags CRIU acts on for an entry (old images: in_parent -> PE_PARENT, no flags -> PE_PRESENT). */
export function pagemapFlags(e: PagemapEntry): number {
  let flags = e.flags ?? 0;
  if (e.in_parent) flags |= PE_PARENT;
  else if (e.flags === undefined) flags = PE_PRESENT;
  return flags;
}

export function pagemapFile(dir: string, id: number | bigint | string): string {
  return join(dir, `pagemap-${id}.img`);
}

export function pagesFile(dir: string, pagesId: number): string {
  return join(dir, `pages-${pagesId}.img`);
}

/** Reads pagemap-<id>.img and checks what CRIU relies on: a head, then entries in ascending, disjoint order. */
export function readPagemap(dir: string, id: number | bigint | string): Pagemap {
  const file = pagemapFile(dir, id);
  const image = readImage(file);
  if (image.magic !== 'PAGEMAP')
    throw new InputError(`${file}: at offset 0: expected a PAGEMAP image, got ${image.magic}`);
  if (image.entries.length === 0)
    throw new InputError(`${file}: at offset 8: expected a pagemap_head entry, none`);
  const pagesId = image.entries[0].pages_id as number;
  const messages = image.entries.slice(1) as unknown as PagemapEntryMessage[];
  let end = 0n;
  const entries = messages.map((m, i) => {
    const at = image.offsets[i + 1];
    let e: PagemapEntry;
    try {
      e = pagemapEntry(m);
    } catch (err) {
      throw new InputError(`${file}: at offset ${at}: entry ${i + 1}: ${(err as Error).message}`);
    }
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
    return e;
  });
  const format = messages.some((m) => m.nr_pages !== undefined) ? 'nr_pages64' : 'compat';
  return { file, pagesId, entries, format };
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
  format: PagemapFormat,
): Message[] {
  return [
    { pages_id: pagesId },
    ...runs.map(
      ({ run, nrPages, flags }) =>
        pagemapEntryMessage(run.vaddr, nrPages, flags, format) as unknown as Message,
    ),
  ];
}

export interface PagemapWriteOptions {
  /** Where the entries keep their page counts; default 'compat' (read by every CRIU version). */
  format?: PagemapFormat;
}

/**
 * Encodes a pagemap image and its pages data from runs of pages (any order; they must not overlap): one
 * pagemap_entry per run, in address order, pages data in the same order.
 */
export function encodePagemap(
  runs: readonly PageRun[],
  pagesId: number,
  opts: PagemapWriteOptions = {},
): { pagemap: Buffer; pages: Buffer; entries: PagemapEntry[] } {
  const sorted = checkRuns(runs);
  const entries = pagemapEntries(sorted, pagesId, opts.format ?? 'compat');
  const pages = Buffer.concat(sorted.filter((r) => r.flags & PE_PRESENT).map((r) => r.run.data as Buffer));
  return {
    pagemap: writeImage('PAGEMAP', entries),
    pages,
    entries: (entries.slice(1) as unknown as PagemapEntryMessage[]).map(pagemapEntry),
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
  opts: { pagesId: number } & PagemapWriteOptions,
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
  writeFileSync(
    out.pagemapFile,
    writeImage('PAGEMAP', pagemapEntries(sorted, opts.pagesId, opts.format ?? 'compat')),
    {
      mode: 0o600,
    },
  );
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

/**
 * Writes only pagemap-<id>.img, for a pages-<pagesId>.img that exists already (a parent image whose pages were
 * written elsewhere): entries in ascending, disjoint order, their PE_PRESENT pages in that file in the same order.
 */
export function writePagemapEntries(
  dir: string,
  id: number | bigint | string,
  entries: readonly { vaddr: bigint; nrPages: number; flags: number }[],
  opts: { pagesId: number } & PagemapWriteOptions,
): string {
  const runs = entries.map((e) => ({ run: { vaddr: e.vaddr }, nrPages: e.nrPages, flags: e.flags }));
  for (let i = 1; i < runs.length; i++) {
    const p = runs[i - 1];
    if (p.run.vaddr + BigInt(p.nrPages * PAGE_SIZE) > runs[i].run.vaddr)
      throw new RangeError(
        `pagemap entries at 0x${p.run.vaddr.toString(16)} and after overlap or are out of order`,
      );
  }
  const file = pagemapFile(dir, id);
  writeFileSync(file, writeImage('PAGEMAP', pagemapEntries(runs, opts.pagesId, opts.format ?? 'compat')), {
    mode: 0o600,
  });
  return file;
}
