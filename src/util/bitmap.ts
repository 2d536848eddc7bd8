/** A fixed-size set of page indexes, one bit per page. */
export class Bitmap {
  readonly size: number;
  readonly words: Uint32Array;

  constructor(size: number, words?: Uint32Array) {
    this.size = size;
    this.words = words ?? new Uint32Array((size + 31) >>> 5);
  }

  static full(size: number): Bitmap {
    const b = new Bitmap(size);
    b.words.fill(0xffffffff);
    b.trimTail();
    return b;
  }

  static from(size: number, indexes: Iterable<number>): Bitmap {
    const b = new Bitmap(size);
    for (const i of indexes) b.set(i);
    return b;
  }

  get(i: number): boolean {
    return (this.words[i >>> 5] & (1 << (i & 31))) !== 0;
  }

  set(i: number): void {
    this.words[i >>> 5] |= 1 << (i & 31);
  }

  clear(i: number): void {
    this.words[i >>> 5] &= ~(1 << (i & 31));
  }

  clearAll(): void {
    this.words.fill(0);
  }

  clone(): Bitmap {
    return new Bitmap(this.size, this.words.slice());
  }

  count(): number {
    let n = 0;
    for (let w = 0; w < this.words.length; w++) n += popcount(this.words[w]);
    return n;
  }

  isEmpty(): boolean {
    for (let w = 0; w < this.words.length; w++) if (this.words[w] !== 0) return false;
    return true;
  }

  /** this |= other */
  or(other: Bitmap): this {
    for (let w = 0; w < this.words.length; w++) this.words[w] |= other.words[w];
    return this;
  }

  /** this &= other */
  and(other: Bitmap): this {
    for (let w = 0; w < this.words.length; w++) this.words[w] &= other.words[w];
    return this;
  }

  /** this &= ~other */
  andNot(other: Bitmap): this {
    for (let w = 0; w < this.words.length; w++) this.words[w] &= ~other.words[w];
    return this;
  }

  /** Calls fn for every set index in ascending order. */
  forEach(fn: (i: number) => void): void {
    const words = this.words;
    for (let w = 0; w < words.length; w++) {
      let x = words[w];
      while (x !== 0) {
        const low = x & -x;
        fn((w << 5) + 31 - Math.clz32(low));
        x ^= low;
      }
    }
  }

  /** The set indexes in ascending order. */
  toArray(): Uint32Array {
    const out = new Uint32Array(this.count());
    let k = 0;
    this.forEach((i) => {
      out[k++] = i;
    });
    return out;
  }

  private trimTail(): void {
    const extra = this.words.length * 32 - this.size;
    if (extra > 0) this.words[this.words.length - 1] >>>= extra;
  }
}

/** Bits set in a 32-bit word. */
export function popcount(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  x = (x + (x >>> 4)) & 0x0f0f0f0f;
  return Math.imul(x, 0x01010101) >>> 24;
}
