import { Bitmap } from '../util/bitmap.ts';
import { Prng } from '../util/prng.ts';
import type { Clock, Layout, MemorySource } from '../util/interfaces.ts';
import type { ContentPool } from './content.ts';
import type { Workload } from './workload.ts';

/**
 * Memory of an emulated process: real page bytes, written by a workload as the virtual clock advances. Every read
 * and every dirty collection first plays the workload up to the clock's now.
 */
export class EmulatedMemory implements MemorySource {
  readonly layout: Layout;
  readonly bytes: Buffer;
  private readonly clock: Clock;
  private readonly workload: Workload;
  private readonly dirty: Bitmap;
  private frozen = false;
  /** Workload time minus clock time; grows while frozen so that a thawed workload does not catch up in a burst. */
  private lag = 0;
  private frozenAt = 0;

  /** @param bytes memory of layout.pageCount pages (contents are overwritten); allocated when omitted. */
  constructor(
    layout: Layout,
    pool: ContentPool,
    workload: Workload,
    clock: Clock,
    zeroFraction: number,
    seed: number,
    bytes?: Buffer,
  ) {
    this.layout = layout;
    this.clock = clock;
    this.workload = workload;
    this.dirty = new Bitmap(layout.pageCount);
    this.bytes = bytes ?? Buffer.allocUnsafeSlow(layout.pageCount * layout.pageSize);
    const prng = new Prng(seed);
    for (let p = 0; p < layout.pageCount; p++) {
      if (zeroFraction > 0 && prng.next() < zeroFraction) {
        this.bytes.fill(0, p * layout.pageSize, (p + 1) * layout.pageSize);
      } else {
        pool.fillPage(this.bytes, p, 0x40000000 + p);
      }
    }
  }

  /** Plays the workload up to now. */
  private sync(): void {
    if (this.frozen) return;
    const until = this.clock.now() - this.lag;
    const w = this.workload;
    while (w.time <= until) {
      if (w.write) this.dirty.set(w.page);
      w.apply(this.bytes);
    }
  }

  collectDirty(): Bitmap {
    this.sync();
    const out = this.dirty.clone();
    this.dirty.clearAll();
    return out;
  }

  readPages(ids: ArrayLike<number>, out: Uint8Array): void {
    this.sync();
    const size = this.layout.pageSize;
    for (let k = 0; k < ids.length; k++) {
      const at = ids[k] * size;
      out.set(this.bytes.subarray(at, at + size), k * size);
    }
  }

  freeze(): void {
    this.sync();
    this.frozen = true;
    this.frozenAt = this.clock.now();
  }

  thaw(): void {
    if (!this.frozen) return;
    this.lag += this.clock.now() - this.frozenAt;
    this.frozen = false;
  }

  /**
   * The frozen workload, to continue at the destination from where it stopped, resuming at clock time `at`.
   * Returns it with the offset of the destination's clock over the workload's own.
   */
  handOver(at: number): { workload: Workload; lag: number } {
    return { workload: this.workload, lag: this.lag + (at - this.frozenAt) };
  }
}

export interface Fault {
  page: number;
  at: number;
}

/**
 * The workload continuing at the destination after a post-copy switchover. An access to a page that has not
 * arrived yet is a remote fault: the process stalls until the page arrives.
 */
export class ResumedProcess {
  private readonly workload: Workload;
  private readonly mem: Buffer;
  private readonly arrival: Float64Array;
  private readonly requested: Bitmap;
  private lag: number;
  readonly faultLatencies: number[] = [];
  private readonly faultAt = new Map<number, number>();
  faults = 0;

  /**
   * @param arrival per page, the time it is (or will be) present at the destination; Infinity when not yet sent.
   * @param lag clock time minus workload time at the moment of resume.
   */
  constructor(workload: Workload, mem: Buffer, arrival: Float64Array, lag: number) {
    this.workload = workload;
    this.mem = mem;
    this.arrival = arrival;
    this.lag = lag;
    this.requested = new Bitmap(arrival.length);
  }

  /** Runs until now; returns the new faults (pages to request from the source). */
  runUntil(now: number): Fault[] {
    const out: Fault[] = [];
    const w = this.workload;
    while (w.time + this.lag <= now) {
      const t = w.time + this.lag;
      const p = w.page;
      const ready = this.arrival[p];
      if (ready > t) {
        if (!this.requested.get(p)) {
          this.requested.set(p);
          this.faults++;
          // A page already on its way still stalls the process; its latency is known now.
          if (Number.isFinite(ready)) this.faultLatencies.push(ready - t);
          else this.faultAt.set(p, t);
          out.push({ page: p, at: t });
        }
        if (ready > now) break; // stalled: the page is not here yet
        this.lag += ready - t; // stalled until it arrived
        continue;
      }
      w.apply(this.mem);
    }
    return out;
  }

  /** Records the latency of a faulted page when it arrives. */
  arrived(page: number, at: number): void {
    const t = this.faultAt.get(page);
    if (t !== undefined) {
      this.faultLatencies.push(at - t);
      this.faultAt.delete(page);
    }
  }
}
