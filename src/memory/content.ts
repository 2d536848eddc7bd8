import { Prng } from '../util/prng.ts';

const POOL_BYTES = 1 << 20;

/**
 * Deterministic page contents without generating fresh random bytes for every write: a seeded pool of random
 * bytes, from which each page or write copies a window chosen by a hash of its identity, then stamps that identity
 * into the first 8 bytes so that no two writes leave the same content.
 */
export class ContentPool {
  readonly pool: Buffer;
  readonly pageSize: number;

  constructor(seed: number, pageSize: number) {
    this.pageSize = pageSize;
    this.pool = Buffer.allocUnsafe(POOL_BYTES + pageSize);
    new Prng(seed).fill(this.pool);
  }

  private offset(key: number): number {
    let h = Math.imul(key ^ 0x9e3779b9, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    return ((h ^ (h >>> 16)) >>> 0) & (POOL_BYTES - 8);
  }

  /** Fills a whole page with content identified by key. */
  fillPage(mem: Buffer, page: number, key: number): void {
    const at = page * this.pageSize;
    const from = this.offset(key);
    this.pool.copy(mem, at, from, from + this.pageSize);
    mem.writeUInt32LE(key >>> 0, at);
    mem.writeUInt32LE(page >>> 0, at + 4);
  }

  /**
   * One write of `touch` bytes into a page (a whole page when touch >= pageSize), at an offset chosen by key.
   * The first 8 bytes of the written run carry key and page so that the write always changes the page.
   */
  write(mem: Buffer, page: number, key: number, touch: number): void {
    if (touch >= this.pageSize) {
      this.fillPage(mem, page, key);
      return;
    }
    const len = Math.max(8, touch & ~7);
    const within = (this.offset(key ^ 0x5bd1e995) % (this.pageSize - len + 1)) & ~7;
    const at = page * this.pageSize + within;
    const from = this.offset(key);
    this.pool.copy(mem, at, from, from + len);
    mem.writeUInt32LE(key >>> 0, at);
    mem.writeUInt32LE(page >>> 0, at + 4);
  }
}
