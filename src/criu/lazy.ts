/**
 * Preparing a dump for a lazy restore (`criu restore --lazy-pages` with `criu lazy-pages` serving the pages from
 * the local images): CRIU restores eagerly every page whose pagemap entry lacks PE_LAZY, and leaves the PE_LAZY
 * ones to the daemon, which copies them in with userfaultfd when the restored task touches them and in the
 * background otherwise. A dump made without --lazy-pages has no PE_LAZY entries, so markLazy adds the flag where
 * CRIU's own dump would have put it (criu/mem.c): pages of private anonymous mappings, not the vDSO, vvar or
 * vsyscall areas, not locked, and not the page that holds a thread's stack pointer. The restorer writes to that
 * page before userfaultfd is armed, so a lazy copy of it would be refused later; we keep a few pages around it
 * eager as well (STACK_GUARD_PAGES), which costs nothing worth measuring. Entries in a parent image (PE_PARENT)
 * stay eager too (see splitEntry).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../util/errors.ts';
import { readImage } from './images.ts';
import {
  isPrivateAnonymous,
  PAGE_SIZE,
  PE_LAZY,
  PE_PARENT,
  PE_PRESENT,
  readPagemap,
  readVmas,
  writePagemapEntries,
  type VmaEntry,
} from './pages.ts';

/** mmap's MAP_LOCKED: CRIU never serves pages of locked mappings lazily. */
const MAP_LOCKED = 0x2000;
/** Pages kept eager on each side of a thread's stack pointer. */
const STACK_GUARD_PAGES = 4;
const PAGE = BigInt(PAGE_SIZE);

export interface LazyMarkResult {
  /** Pages flagged PE_LAZY, all tasks. */
  lazyPages: number;
  /** Pages left for the restorer to copy eagerly (file mappings, stacks, special areas). */
  eagerPages: number;
}

/** Whether CRIU would serve pages of this mapping lazily. */
export function canBeLazy(vma: VmaEntry): boolean {
  return isPrivateAnonymous(vma) && (vma.flags & MAP_LOCKED) === 0;
}

/** The stack pointers of a task's threads, from core-<tid>.img (x86_64 only: others return null). */
function stackPointers(dir: string, threads: readonly number[]): bigint[] | null {
  const out: bigint[] = [];
  for (const tid of threads) {
    const file = join(dir, `core-${tid}.img`);
    if (!existsSync(file))
      throw new InputError(`${file}: missing (a thread of pstree.img without its core image)`);
    const core = readImage(file).entries[0] as {
      thread_info?: { gpregs?: { sp?: bigint | number } };
    };
    const sp = core?.thread_info?.gpregs?.sp;
    if (sp === undefined) return null;
    out.push(BigInt(sp));
  }
  return out;
}

/** A task's pagemap entries as markLazy would write them. */
export interface LazyPlan {
  pid: number;
  pagesId: number;
  format: 'compat' | 'nr_pages64';
  entries: Entry[];
}

/**
 * The pagemap entries of every task in DIR with PE_LAZY added where CRIU allows it (entries split at the pages that
 * must stay eager), and the counts; nothing is written. Null for architectures whose registers precog does not
 * model, where the stack pages cannot be told. Throws an InputError when the images cannot be read.
 */
export function planLazy(
  dir: string,
  /** A task's pagemap entries when DIR has no pagemap images (a dump read back and removed: its runs). */
  entriesOf?: (pid: number) => readonly Entry[],
): { plans: LazyPlan[]; result: LazyMarkResult } | null {
  const pstree = readImage(join(dir, 'pstree.img'));
  const tasks = pstree.entries.map((e) => {
    const pid = Number(e.pid);
    const threads = ((e.threads as number[] | undefined) ?? [pid]).map(Number);
    return { pid, threads };
  });
  const plans: LazyPlan[] = [];
  const result: LazyMarkResult = { lazyPages: 0, eagerPages: 0 };
  for (const t of tasks) {
    const sps = stackPointers(dir, t.threads);
    if (!sps) return null;
    const guard = sps.map((sp) => {
      const page = (sp / PAGE) * PAGE;
      return {
        from: page - BigInt(STACK_GUARD_PAGES) * PAGE,
        to: page + BigInt(STACK_GUARD_PAGES + 1) * PAGE,
      };
    });
    const vmas = readVmas(dir, t.pid)
      .filter(canBeLazy)
      .sort((a, b) => (a.start < b.start ? -1 : 1));
    const entries: Entry[] = [];
    if (entriesOf) {
      for (const e of entriesOf(t.pid)) splitEntry(e.vaddr, e.nrPages, e.flags, vmas, guard, entries, result);
      plans.push({ pid: t.pid, pagesId: 0, format: 'nr_pages64', entries });
      continue;
    }
    const map = readPagemap(dir, t.pid);
    for (const e of map.entries) {
      const flags = e.flags ?? (e.in_parent ? PE_PARENT : PE_PRESENT);
      splitEntry(e.vaddr, e.nr_pages, flags, vmas, guard, entries, result);
    }
    plans.push({ pid: t.pid, pagesId: map.pagesId, format: map.format, entries });
  }
  return { plans, result };
}

/**
 * Adds PE_LAZY to the pagemap entries of every task in DIR where CRIU allows it (planLazy). The pages files are
 * untouched (splitting an entry keeps its pages in order). Throws an InputError when the images cannot be read;
 * returns null (and changes nothing) where the stack pages cannot be told.
 */
export function markLazy(dir: string): LazyMarkResult | null {
  const planned = planLazy(dir);
  if (!planned) return null;
  // Written only once every task could be planned: a failure leaves the images as they were.
  for (const p of planned.plans)
    writePagemapEntries(dir, p.pid, p.entries, { pagesId: p.pagesId, format: p.format });
  return planned.result;
}

/**
 * The pages a lazy restore of DIR restores eagerly (their data must be in the images when criu restore runs): per
 * task (its PID in the dump), the runs with data of this image that markLazy leaves without PE_LAZY. Null where the
 * stack pages cannot be told (then every page is eager).
 */
export function eagerRuns(
  dir: string,
  entriesOf?: (pid: number) => readonly Entry[],
): Map<number, { vaddr: bigint; nrPages: number }[]> | null {
  const planned = planLazy(dir, entriesOf);
  if (!planned) return null;
  const out = new Map<number, { vaddr: bigint; nrPages: number }[]>();
  for (const p of planned.plans)
    out.set(
      p.pid,
      p.entries
        .filter((e) => e.flags & PE_PRESENT && !(e.flags & (PE_LAZY | PE_PARENT)))
        .map((e) => ({ vaddr: e.vaddr, nrPages: e.nrPages })),
    );
  return out;
}

export interface Entry {
  vaddr: bigint;
  nrPages: number;
  flags: number;
}

/** Appends the entry's pieces to out: PE_LAZY where every page may be lazy, as it was elsewhere. */
function splitEntry(
  vaddr: bigint,
  nrPages: number,
  flags: number,
  lazyVmas: readonly VmaEntry[],
  guard: readonly { from: bigint; to: bigint }[],
  out: Entry[],
  count: LazyMarkResult,
): void {
  const end = vaddr + BigInt(nrPages) * PAGE;
  if (!(flags & PE_PRESENT) || flags & PE_PARENT) {
    // Only pages of this image can be lazy: the daemon never completes a fault from a parent image (its read
    // of the parent finishes without the copy into the process, which then waits forever).
    out.push({ vaddr, nrPages, flags });
    return;
  }
  const lazyAt = (a: bigint): bigint => {
    // The end of the lazy stretch starting at a (a itself when a page at a must stay eager).
    const vma = lazyVmas.find((v) => v.start <= a && a < v.end);
    if (!vma) return a;
    let stop = vma.end < end ? vma.end : end;
    for (const g of guard) {
      if (g.from <= a && a < g.to) return a;
      if (g.from > a && g.from < stop) stop = g.from;
    }
    return stop;
  };
  const eagerAt = (a: bigint): bigint => {
    // The end of the eager stretch starting at a.
    let b = a + PAGE;
    while (b < end && lazyAt(b) === b) b += PAGE;
    return b;
  };
  let at = vaddr;
  while (at < end) {
    const lz = lazyAt(at);
    const stop = lz > at ? lz : eagerAt(at);
    const n = Number((stop - at) / PAGE);
    const piece = { vaddr: at, nrPages: n, flags: lz > at ? flags | PE_LAZY : flags & ~PE_LAZY };
    if (piece.flags & PE_LAZY) count.lazyPages += n;
    else count.eagerPages += n;
    const last = out[out.length - 1];
    if (last && last.flags === piece.flags && last.vaddr + BigInt(last.nrPages) * PAGE === at)
      last.nrPages += n;
    else out.push(piece);
    at = stop;
  }
}
