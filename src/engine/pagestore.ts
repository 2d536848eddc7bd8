import { closeSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { Bitmap } from '../util/bitmap.ts';
import type { Layout } from './types.ts';

/** Where the destination keeps page bytes: memory, or a file once the migration is larger than a set size. */
export interface PageBacking {
  /** A buffer to decode page `id` into; the page counts once settle(id) is called. */
  slot(id: number): Buffer;
  settle(id: number): void;
  /** The bytes of page `id` (a view valid until the next call). */
  read(id: number): Buffer;
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

  read(id: number): Buffer {
    return this.slot(id);
  }

  close(): void {}
}

/** Pages in a (sparse) file, written at their offsets: bounded memory whatever the size of the migration. */
export class FileBacking implements PageBacking {
  readonly image = null;
  private readonly fd: number;
  private readonly size: number;
  private readonly scratch: Buffer;

  constructor(layout: Layout, path: string) {
    this.size = layout.pageSize;
    this.scratch = Buffer.alloc(layout.pageSize);
    this.fd = openSync(path, 'w+', 0o600);
    ftruncateSync(this.fd, layout.pageCount * layout.pageSize);
  }

  slot(): Buffer {
    return this.scratch;
  }

  settle(id: number): void {
    writeSync(this.fd, this.scratch, 0, this.size, id * this.size);
  }

  read(id: number): Buffer {
    readSync(this.fd, this.scratch, 0, this.size, id * this.size);
    return this.scratch;
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** The destination's copy of the migrating memory: page bytes, which pages are here, and when each arrived. */
export class PageStore {
  readonly layout: Layout;
  readonly backing: PageBacking;
  readonly present: Bitmap;
  /** Arrival time of each page (Infinity while it is missing). */
  readonly arrival: Float64Array;

  constructor(layout: Layout, backing?: PageBacking) {
    this.layout = layout;
    this.backing = backing ?? new MemoryBacking(layout);
    this.present = new Bitmap(layout.pageCount);
    this.arrival = new Float64Array(layout.pageCount).fill(Infinity);
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
