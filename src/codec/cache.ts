/**
 * The source's copies of pages as last sent, the bases of delta records: bounded, with segmented LRU eviction.
 *
 * Pre-copy sends every page once in round 1, and most are never sent again; the pages that are sent again are the
 * ones the workload keeps writing, and having been resent once is the best sign a page will be resent again. So a
 * page enters the probation segment on its first send and moves to the protected segment when it is sent a
 * second time (counted even if its copy was evicted in between: one byte per page of memory). Eviction takes the
 * least recently sent page of probation first, and touches the protected segment only when probation is empty;
 * protected may hold at most 80 % of the cache, so that newly written pages still get in. Round 1's flood of
 * pages that are sent once thus passes through probation without pushing out the working set, which plain LRU
 * would lose entirely whenever memory is larger than the cache.
 */
const SLAB_PAGES = 256;
const PROBATION = 0;
const PROTECTED = 1;
const NONE = -1;

export interface CacheStats {
  hits: number;
  misses: number;
  evictions: number;
}

export class LastSentCache {
  /** Pages the cache can hold. */
  readonly capacity: number;
  readonly pageSize: number;
  readonly stats: CacheStats = { hits: 0, misses: 0, evictions: 0 };
  private readonly protectedCap: number;
  private readonly slotOf = new Map<number, number>();
  private readonly pageOf: Int32Array;
  private readonly prev: Int32Array;
  private readonly next: Int32Array;
  private readonly segment: Uint8Array;
  private readonly head = [NONE, NONE];
  private readonly tail = [NONE, NONE];
  private readonly length = [0, 0];
  private readonly slabs: Uint8Array[] = [];
  /** One view per slot, made once. */
  private readonly views: Uint8Array[] = [];
  private used = 0;
  /** Sends per page id, saturating at 255; grows with the largest id seen. */
  private sends = new Uint8Array(0);

  constructor(bytes: number, pageSize: number) {
    this.pageSize = pageSize;
    this.capacity = Math.max(0, Math.floor(bytes / pageSize));
    this.protectedCap = Math.floor(this.capacity * 0.8);
    this.pageOf = new Int32Array(this.capacity).fill(NONE);
    this.prev = new Int32Array(this.capacity);
    this.next = new Int32Array(this.capacity);
    this.segment = new Uint8Array(this.capacity);
  }

  /** Pages held now. */
  get size(): number {
    return this.slotOf.size;
  }

  /** Bytes of page copies allocated (grows in slabs of 256 pages up to the capacity). */
  get allocatedBytes(): number {
    return this.slabs.reduce((a, s) => a + s.length, 0);
  }

  /** The last-sent copy of page id (a view valid until the next put), or undefined. Counts a hit or a miss. */
  get(id: number): Uint8Array | undefined {
    const slot = this.slotOf.get(id);
    if (slot === undefined) {
      this.stats.misses++;
      return undefined;
    }
    this.stats.hits++;
    return this.view(slot);
  }

  /** Whether page id has been put at least twice (resent), whether or not its copy is still here. */
  resent(id: number): boolean {
    return id < this.sends.length && this.sends[id] >= 2;
  }

  /** Records that page id was sent with these bytes. */
  put(id: number, page: Uint8Array): void {
    if (this.capacity === 0) return;
    if (id >= this.sends.length) {
      const grown = new Uint8Array(Math.max(id + 1, this.sends.length * 2, 1024));
      grown.set(this.sends);
      this.sends = grown;
    }
    if (this.sends[id] < 255) this.sends[id]++;
    const seg = this.sends[id] >= 2 ? PROTECTED : PROBATION;
    let slot = this.slotOf.get(id);
    if (slot !== undefined) this.unlink(slot);
    else {
      slot = this.used < this.capacity ? this.used++ : this.evict();
      this.slotOf.set(id, slot);
      this.pageOf[slot] = id;
    }
    this.view(slot).set(page);
    this.pushFront(slot, seg);
    if (this.length[PROTECTED] > this.protectedCap) {
      const demoted = this.tail[PROTECTED];
      this.unlink(demoted);
      this.pushFront(demoted, PROBATION);
    }
  }

  private view(slot: number): Uint8Array {
    const v = this.views[slot];
    if (v) return v;
    const slab = Math.floor(slot / SLAB_PAGES);
    while (this.slabs.length <= slab) {
      const pages = Math.min(SLAB_PAGES, this.capacity - this.slabs.length * SLAB_PAGES);
      this.slabs.push(new Uint8Array(pages * this.pageSize));
    }
    const at = (slot % SLAB_PAGES) * this.pageSize;
    return (this.views[slot] = this.slabs[slab].subarray(at, at + this.pageSize));
  }

  private evict(): number {
    const seg = this.length[PROBATION] > 0 ? PROBATION : PROTECTED;
    const slot = this.tail[seg];
    this.unlink(slot);
    this.slotOf.delete(this.pageOf[slot]);
    this.stats.evictions++;
    return slot;
  }

  private unlink(slot: number): void {
    const seg = this.segment[slot];
    const p = this.prev[slot];
    const n = this.next[slot];
    if (p === NONE) this.head[seg] = n;
    else this.next[p] = n;
    if (n === NONE) this.tail[seg] = p;
    else this.prev[n] = p;
    this.length[seg]--;
  }

  private pushFront(slot: number, seg: number): void {
    this.segment[slot] = seg;
    this.prev[slot] = NONE;
    this.next[slot] = this.head[seg];
    if (this.head[seg] !== NONE) this.prev[this.head[seg]] = slot;
    this.head[seg] = slot;
    if (this.tail[seg] === NONE) this.tail[seg] = slot;
    this.length[seg]++;
  }
}
