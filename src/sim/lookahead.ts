import { Bitmap } from '../util/bitmap.ts';
import { ContentPool } from '../memory/content.ts';
import type { Workload } from '../memory/workload.ts';
import type { WorkloadPlan } from '../memory/workloads.ts';
import type { Clock } from '../util/interfaces.ts';
import type { Lookahead } from '../policy/index.ts';

/** Content that is never written: a clone of a workload only has to say which pages it would write, and when. */
class NoContent extends ContentPool {
  override fillPage(): void {}
  override write(): void {}
}

const NOWHERE = Buffer.alloc(0);

/**
 * The future of an emulated workload, for the oracle: a second instance of the workload made from the same plan
 * and seed (so it makes the very same accesses at the very same times), stepped ahead of the clock without
 * touching memory. Traces replay the same way, so this covers them too. Valid while the workload runs on the
 * clock's time (the live rounds, before any freeze).
 */
export class WorkloadLookahead implements Lookahead {
  readonly rate: number;
  private readonly clone: Workload;
  private readonly clock: Clock;
  private readonly pageCount: number;
  /** Writes the clone made after the clock's time of the last call, in time order: [head, tail). */
  private times = new Float64Array(4096);
  private pages = new Uint32Array(4096);
  private head = 0;
  private tail = 0;

  constructor(plan: WorkloadPlan, seed: number, clock: Clock, rate: number) {
    this.clone = plan.create(new NoContent(0, plan.layout.pageSize), seed);
    this.clock = clock;
    this.rate = rate;
    this.pageCount = plan.layout.pageCount;
  }

  written(seconds: number): Bitmap {
    const from = this.clock.now();
    const until = from + Math.max(0, seconds);
    while (this.head < this.tail && this.times[this.head] <= from) this.head++;
    const w = this.clone;
    while (w.time <= until) {
      if (w.write && w.time > from) this.push(w.time, w.page);
      w.apply(NOWHERE);
    }
    const out = new Bitmap(this.pageCount);
    for (let i = this.head; i < this.tail && this.times[i] <= until; i++) out.set(this.pages[i]);
    return out;
  }

  private push(t: number, page: number): void {
    if (this.tail === this.times.length) {
      const live = this.tail - this.head;
      if (this.head >= live) {
        this.times.copyWithin(0, this.head, this.tail);
        this.pages.copyWithin(0, this.head, this.tail);
      } else {
        const times = new Float64Array(this.times.length * 2);
        const pages = new Uint32Array(this.pages.length * 2);
        times.set(this.times.subarray(this.head, this.tail));
        pages.set(this.pages.subarray(this.head, this.tail));
        this.times = times;
        this.pages = pages;
      }
      this.head = 0;
      this.tail = live;
    }
    this.times[this.tail] = t;
    this.pages[this.tail++] = page;
  }
}

/** Passes a workload through, recording every page it reads or writes (the accessed bits of a round). */
export class AccessRecorder implements Workload {
  private readonly inner: Workload;
  private readonly accessed: Bitmap;

  constructor(inner: Workload, pageCount: number) {
    this.inner = inner;
    this.accessed = new Bitmap(pageCount);
  }

  get name(): string {
    return this.inner.name;
  }
  get time(): number {
    return this.inner.time;
  }
  get page(): number {
    return this.inner.page;
  }
  get write(): boolean {
    return this.inner.write;
  }

  apply(mem: Buffer): void {
    this.accessed.set(this.inner.page);
    this.inner.apply(mem);
  }

  /** Pages accessed since the previous call. */
  take(): Bitmap {
    const out = this.accessed.clone();
    this.accessed.clearAll();
    return out;
  }
}
