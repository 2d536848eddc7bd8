import { ProtocolError } from '../util/errors.ts';
import { closeSync, fdatasync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { Bitmap } from '../util/bitmap.ts';
import type { Layout } from '../util/interfaces.ts';

/** Where the destination keeps page bytes: memory, or a file once the migration is larger than a set size. */
export interface PageBacking {
  /** A buffer to decode page `id` into; the page counts once settle(id) is called. */
  slot(id: number): Buffer;
  settle(id: number): void;
  /** The bytes of page `id` (a view valid until the next call). */
  read(id: number): Buffer;
  /** The bytes of `count` consecutive pages from `first` (a view into memory, or a fresh buffer from the file). */
  readRun(first: number, count: number): Buffer;
  /** Writes out whatever settle() buffered (called after every batch). */
  flush(): void;
  /**
   * Starts writing the file's data back to disk in the background (after each round), so that work at the commit
   * (cutting a file, which first writes back what is dirty after the cut) finds little to do. Optional.
   */
  writeBack?(): void;
  /** The whole image in memory, when it is in memory. */
  readonly image: Buffer | null;
  close(): void;
}

export class MemoryBacking implements PageBacking {
  readonly image: Buffer;
  private readonly size: number;

  constructor(layout: Layout, image?: Buffer) {
    this.size = layout.pageSize;
    this.image = image ?? Buffer.alloc(layout.pageCount * layout.pageSize);
  }

  slot(id: number): Buffer {
    return this.image.subarray(id * this.size, (id + 1) * this.size);
  }

  settle(): void {}

  flush(): void {}

  read(id: number): Buffer {
    return this.slot(id);
  }

  readRun(first: number, count: number): Buffer {
    return this.image.subarray(first * this.size, (first + count) * this.size);
  }

  close(): void {}
}

/**
 * Pages in a (sparse) file, written at their offsets: bounded memory whatever the size of the migration. Runs of
 * consecutive pages are gathered and written with one call (up to 1 MiB).
 */
export class FileBacking implements PageBacking {
  readonly image = null;
  private readonly fd: number;
  private readonly size: number;
  private readonly run: Buffer;
  /** First page of the gathered run, and how many pages it holds. */
  private first = 0;
  private count = 0;

  constructor(layout: Layout, path: string) {
    this.size = layout.pageSize;
    // Up to 1 MiB, and no more than the file holds (a container's one-page processes each get one).
    this.run = Buffer.alloc(Math.max(1, Math.min(256, layout.pageCount)) * layout.pageSize);
    this.fd = openSync(path, 'w+', 0o600);
    ftruncateSync(this.fd, layout.pageCount * layout.pageSize);
  }

  slot(id: number): Buffer {
    if (this.count > 0 && (id !== this.first + this.count || this.count * this.size === this.run.length))
      this.flush();
    if (this.count === 0) this.first = id;
    return this.run.subarray(this.count * this.size, (this.count + 1) * this.size);
  }

  settle(): void {
    this.count++;
  }

  flush(): void {
    if (this.count === 0) return;
    writeSync(this.fd, this.run, 0, this.count * this.size, this.first * this.size);
    this.count = 0;
  }

  writeBack(): void {
    this.flush();
    // Fire and forget: an error (e.g. the file closed meanwhile) only means nothing was written back early.
    fdatasync(this.fd, () => {});
  }

  read(id: number): Buffer {
    this.flush();
    const page = this.run.subarray(0, this.size);
    readSync(this.fd, page, 0, this.size, id * this.size);
    return page;
  }

  readRun(first: number, count: number): Buffer {
    this.flush();
    const out = Buffer.allocUnsafe(count * this.size);
    let done = 0;
    while (done < out.length) {
      const n = readSync(this.fd, out, done, out.length - done, first * this.size + done);
      if (n === 0) throw new Error(`page file ends before page ${first + done / this.size}`);
      done += n;
    }
    return out;
  }

  close(): void {
    try {
      this.flush();
    } finally {
      closeSync(this.fd);
    }
  }
}

/** The destination's copy of the migrating memory: page bytes, which pages are here, and when each arrived. */
export class PageStore {
  readonly layout: Layout;
  readonly backing: PageBacking;
  readonly present: Bitmap;
  /** Arrival time of each page (Infinity while it is missing). */
  readonly arrival: Float64Array;
  /** Pages that arrived at least once (invalidate() keeps them): their bytes are the base of delta records. */
  readonly received: Bitmap;
  private baseCopy: Buffer | null = null;

  constructor(layout: Layout, backing?: PageBacking) {
    this.layout = layout;
    this.backing = backing ?? new MemoryBacking(layout);
    this.present = new Bitmap(layout.pageCount);
    this.arrival = new Float64Array(layout.pageCount).fill(Infinity);
    this.received = new Bitmap(layout.pageCount);
  }

  /**
   * A copy of page `id` as held here, the base a delta record decodes against (valid until the next call), or
   * undefined when the page never arrived. A copy, because the slot the page decodes into may share its memory.
   */
  base(id: number): Buffer | undefined {
    if (!this.received.get(id)) return undefined;
    this.baseCopy ??= Buffer.allocUnsafeSlow(this.layout.pageSize);
    this.backing.read(id).copy(this.baseCopy);
    return this.baseCopy;
  }

  /** The whole image, for stores held in memory (the emulator's); null for file-backed stores. */
  get image(): Buffer | null {
    return this.backing.image;
  }

  page(id: number): Buffer {
    return this.backing.read(id);
  }

  /** Marks pages as stale: they must come again before anyone may use them. */
  invalidate(pages: Bitmap): void {
    this.present.andNot(pages);
    pages.forEach((p) => {
      this.arrival[p] = Infinity;
    });
  }

  missing(): number {
    return this.layout.pageCount - this.present.count();
  }
}

/**
 * Pages of a process tree in one file per process (regions carry `pid`; a process's regions are consecutive in
 * the layout): file k holds the pages of the k-th process in layout order, so that at commit each file is, as it
 * stands, the pages image of that process (a CRIU parent image). Files are sparse: pages never written read as 0.
 */
export class ProcessFilesBacking implements PageBacking {
  readonly image = null;
  /** One entry per process: its pid, first global page, page count, file. */
  readonly processes: { pid: number; first: number; pages: number; path: string }[] = [];
  private readonly files: FileBacking[] = [];
  private readonly firsts: number[] = [];

  constructor(layout: Layout, pathOf: (k: number, pid: number) => string) {
    let g = 0;
    for (const r of layout.regions) {
      const pid = r.pid ?? 0;
      const last = this.processes[this.processes.length - 1];
      if (last && last.pid === pid) last.pages += r.pages;
      else {
        if (this.processes.some((p) => p.pid === pid))
          throw new ProtocolError(`layout: the regions of process ${pid} are not consecutive`);
        this.processes.push({ pid, first: g, pages: r.pages, path: '' });
      }
      g += r.pages;
    }
    this.processes.forEach((p, k) => {
      p.path = pathOf(k, p.pid);
      this.firsts.push(p.first);
      this.files.push(
        new FileBacking({ pageSize: layout.pageSize, pageCount: p.pages, regions: [] }, p.path),
      );
    });
  }

  private at(id: number): number {
    let lo = 0;
    let hi = this.firsts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.firsts[mid] <= id) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  slot(id: number): Buffer {
    const k = this.at(id);
    this.current = k;
    return this.files[k].slot(id - this.firsts[k]);
  }

  private current = 0;

  settle(): void {
    this.files[this.current].settle();
  }

  flush(): void {
    for (const f of this.files) f.flush();
  }

  writeBack(): void {
    for (const f of this.files) f.writeBack();
  }

  read(id: number): Buffer {
    const k = this.at(id);
    return this.files[k].read(id - this.firsts[k]);
  }

  readRun(first: number, count: number): Buffer {
    const k = this.at(first);
    return this.files[k].readRun(first - this.firsts[k], count);
  }

  close(): void {
    let first: unknown;
    for (const f of this.files) {
      try {
        f.close();
      } catch (e) {
        first ??= e;
      }
    }
    if (first) throw first;
  }
}
