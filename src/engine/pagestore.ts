import { Bitmap } from '../util/bitmap.ts';
import type { Layout } from './types.ts';

/** The destination's copy of the migrating memory: page bytes, which pages are here, and when each arrived. */
export class PageStore {
  readonly layout: Layout;
  readonly image: Buffer;
  readonly present: Bitmap;
  /** Arrival time of each page (Infinity while it is missing). */
  readonly arrival: Float64Array;

  /** @param image memory for the pages (any contents: a page counts only once it arrives). */
  constructor(layout: Layout, image?: Buffer) {
    this.layout = layout;
    this.image = image ?? Buffer.alloc(layout.pageCount * layout.pageSize);
    this.present = new Bitmap(layout.pageCount);
    this.arrival = new Float64Array(layout.pageCount).fill(Infinity);
  }

  page(id: number): Buffer {
    const size = this.layout.pageSize;
    return this.image.subarray(id * size, (id + 1) * size);
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
