import { Prng } from '../util/prng.ts';
import type { ContentPool } from './content.ts';
import type { Workload } from './workload.ts';

export type MemchangePattern = 'sequential' | 'random' | 'hotspot';

export interface MemchangeOptions {
  /** Dirty rate range in bytes/s (whole pages dirtied per second x page size); drawn anew every second. */
  rateMin: number;
  rateMax: number;
  /** First page and size in pages of the rewritten buffer. */
  bufferStart: number;
  bufferPages: number;
  pattern: MemchangePattern;
  /** Bytes changed per page write (page size: the whole page is rewritten). */
  touch: number;
  /** hotspot: fraction of the buffer that is hot, and the share of writes that go there. */
  hotFraction: number;
  hotShare: number;
}

/**
 * The dirty-rate workload of the seed research: a contiguous buffer rewritten at a set rate, sequentially, at
 * random, or with a hot spot.
 */
export class MemchangeWorkload implements Workload {
  readonly name = 'memchange';
  time = 0;
  page = 0;
  readonly write = true;
  private readonly o: MemchangeOptions;
  private readonly prng: Prng;
  private readonly pool: ContentPool;
  private seq = 0;
  private cursor = 0;
  private rate = 0;
  private segmentEnd = 0;

  constructor(o: MemchangeOptions, pool: ContentPool, seed: number) {
    this.o = o;
    this.pool = pool;
    this.prng = new Prng(seed);
    this.newSegment(0);
    this.time = pool.pageSize / this.rate;
    this.page = this.pick();
  }

  private newSegment(at: number): void {
    this.rate = this.o.rateMin + (this.o.rateMax - this.o.rateMin) * this.prng.next();
    this.segmentEnd = at + 1;
  }

  private pick(): number {
    const o = this.o;
    switch (o.pattern) {
      case 'sequential':
        this.cursor = (this.cursor + 1) % o.bufferPages;
        return o.bufferStart + this.cursor;
      case 'random':
        return o.bufferStart + this.prng.int(o.bufferPages);
      case 'hotspot': {
        const hot = Math.max(1, Math.floor(o.bufferPages * o.hotFraction));
        if (this.prng.next() < o.hotShare || hot >= o.bufferPages) return o.bufferStart + this.prng.int(hot);
        return o.bufferStart + hot + this.prng.int(o.bufferPages - hot);
      }
    }
  }

  apply(mem: Buffer): void {
    this.pool.write(mem, this.page, ++this.seq, this.o.touch);
    let next = this.time + this.pool.pageSize / this.rate;
    if (next >= this.segmentEnd) {
      this.newSegment(this.segmentEnd);
      next = Math.max(next, this.segmentEnd - 1);
    }
    this.time = next;
    this.page = this.pick();
  }
}

export interface HotColdOptions {
  rateMin: number;
  rateMax: number;
  pages: number;
  /** Zipf exponent: 0 is uniform, 1 is classic Zipf, larger is more skewed. */
  skew: number;
  touch: number;
}

/**
 * Writes spread over all of memory with Zipf-like skew: a few pages take most writes. Hot pages are scattered
 * over the address space (rank -> page through a fixed permutation), as heap objects are.
 */
export class HotColdWorkload implements Workload {
  readonly name = 'hotcold';
  time = 0;
  page = 0;
  readonly write = true;
  private readonly o: HotColdOptions;
  private readonly prng: Prng;
  private readonly pool: ContentPool;
  private readonly stride: number;
  private readonly shift: number;
  private seq = 0;
  private rate: number;
  private segmentEnd = 1;

  constructor(o: HotColdOptions, pool: ContentPool, seed: number) {
    this.o = o;
    this.pool = pool;
    this.prng = new Prng(seed);
    this.stride = coprimeStride(o.pages, this.prng);
    this.shift = this.prng.int(o.pages);
    this.rate = this.drawRate();
    this.time = pool.pageSize / this.rate;
    this.page = this.pick();
  }

  private drawRate(): number {
    return this.o.rateMin + (this.o.rateMax - this.o.rateMin) * this.prng.next();
  }

  /** Inverse CDF of the continuous Zipf approximation over ranks 1..n. */
  private rank(): number {
    const n = this.o.pages;
    const s = this.o.skew;
    const u = this.prng.next();
    const r =
      Math.abs(s - 1) < 1e-9 ? Math.pow(n, u) : Math.pow((Math.pow(n, 1 - s) - 1) * u + 1, 1 / (1 - s));
    return Math.min(n - 1, Math.max(0, Math.floor(r) - 1));
  }

  private pick(): number {
    return (this.rank() * this.stride + this.shift) % this.o.pages;
  }

  apply(mem: Buffer): void {
    this.pool.write(mem, this.page, ++this.seq, this.o.touch);
    let next = this.time + this.pool.pageSize / this.rate;
    if (next >= this.segmentEnd) {
      this.rate = this.drawRate();
      this.segmentEnd += 1;
      next = Math.max(next, this.segmentEnd - 1);
    }
    this.time = next;
    this.page = this.pick();
  }
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

function coprimeStride(n: number, prng: Prng): number {
  if (n <= 2) return 1;
  for (;;) {
    const s = 1 + prng.int(n - 1);
    if (gcd(s, n) === 1) return s;
  }
}
