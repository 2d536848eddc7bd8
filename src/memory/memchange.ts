import { Prng } from '../util/prng.ts';
import type { ContentPool } from './content.ts';
import type { Workload } from './workload.ts';

/** Rate range in bytes/s (whole pages dirtied per second x page size), drawn anew every second, and write size. */
export interface Pace {
  rateMin: number;
  rateMax: number;
  /** Bytes changed per page write (page size: the whole page is rewritten). */
  touch: number;
}

/** Writes at a paced rate; subclasses choose the page of each write. */
abstract class PacedWrites implements Workload {
  abstract readonly name: string;
  time = 0;
  page = 0;
  readonly write = true;
  protected readonly prng: Prng;
  private readonly pace: Pace;
  private readonly pool: ContentPool;
  private seq = 0;
  private rate = 0;
  private segmentEnd = 1;

  constructor(pace: Pace, pool: ContentPool, seed: number) {
    this.pace = pace;
    this.pool = pool;
    this.prng = new Prng(seed);
  }

  /** Called by subclasses once their own fields are set: draws the first rate and the first write. */
  protected start(): void {
    this.rate = this.drawRate();
    this.time = this.pool.pageSize / this.rate;
    this.page = this.pick();
  }

  protected abstract pick(): number;

  private drawRate(): number {
    return this.pace.rateMin + (this.pace.rateMax - this.pace.rateMin) * this.prng.next();
  }

  apply(mem: Buffer): void {
    this.pool.write(mem, this.page, ++this.seq, this.pace.touch);
    const next = this.time + this.pool.pageSize / this.rate;
    if (next >= this.segmentEnd) {
      // The next write falls into a new second: the rate for the writes after it is drawn anew.
      this.rate = this.drawRate();
      this.segmentEnd = Math.floor(next) + 1;
    }
    this.time = next;
    this.page = this.pick();
  }
}

export type MemchangePattern = 'sequential' | 'random' | 'hotspot';

export interface MemchangeOptions extends Pace {
  /** First page and size in pages of the rewritten buffer. */
  bufferStart: number;
  bufferPages: number;
  pattern: MemchangePattern;
  /** hotspot: fraction of the buffer that is hot, and the share of writes that go there. */
  hotFraction: number;
  hotShare: number;
}

/**
 * The dirty-rate workload of the published research (MBDPC, U2CMigration): a contiguous buffer rewritten at a set rate, sequentially, at
 * random, or with a hot spot.
 */
export class MemchangeWorkload extends PacedWrites {
  readonly name = 'memchange';
  private readonly o: MemchangeOptions;
  private cursor = 0;

  constructor(o: MemchangeOptions, pool: ContentPool, seed: number) {
    super(o, pool, seed);
    this.o = o;
    this.start();
  }

  protected pick(): number {
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
}

export interface HotColdOptions extends Pace {
  pages: number;
  /** Zipf exponent: 0 is uniform, 1 is classic Zipf, larger is more skewed. */
  skew: number;
}

/**
 * Writes spread over all of memory with Zipf-like skew: a few pages take most writes. Hot pages are scattered
 * over the address space (rank -> page through a fixed permutation), as heap objects are.
 */
export class HotColdWorkload extends PacedWrites {
  readonly name = 'hotcold';
  private readonly o: HotColdOptions;
  private readonly stride: number;
  private readonly shift: number;

  constructor(o: HotColdOptions, pool: ContentPool, seed: number) {
    super(o, pool, seed);
    this.o = o;
    this.stride = coprimeStride(o.pages, this.prng);
    this.shift = this.prng.int(o.pages);
    this.start();
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

  protected pick(): number {
    return (this.rank() * this.stride + this.shift) % this.o.pages;
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
