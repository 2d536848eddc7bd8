/**
 * How much of a post-copy's background push may be on its way at once.
 *
 * A page the resumed workload faults on is sent at once, but it travels behind every background byte already
 * queued: in the socket's buffers, in the kernel, in a shaper's queue on the way. Without a limit those queues hold
 * seconds' worth of pages at 100 Mbit/s, and each fault waits that long. The destination acknowledges every PAGES
 * frame of a post-copy (PAGES_ACK); the source keeps at most `window` unacknowledged background bytes out, in
 * batches of a quarter of the window, so that a fault waits behind about `targetDelay` of traffic.
 *
 * The window follows the link, as a delay-based congestion control does: each acknowledgement gives a round-trip
 * sample (the lowest is the path's own delay) and a delivery rate; the window becomes rate x (lowest round trip +
 * targetDelay), grown by at most the bytes just acknowledged (so it doubles per round trip at most) and never below
 * `minWindow`. While the link is not full the rate follows the window and it grows; once queues build up, the round
 * trip grows instead of the rate and the window stops where the queue holds about `targetDelay`.
 */
export interface PushWindowOptions {
  /** Seconds of queued traffic a fault may wait behind (default 0.01). */
  targetDelay?: number;
  /** Bytes (default 64 KiB). */
  minWindow?: number;
  /** Bytes (default 64 MiB). */
  maxWindow?: number;
}

export class PushWindow {
  readonly targetDelay: number;
  readonly minWindow: number;
  readonly maxWindow: number;
  /** Bytes that may be unacknowledged. */
  window: number;
  /** Bytes sent and not yet acknowledged. */
  inFlight = 0;
  /** Lowest round trip seen, seconds. */
  minRtt = Infinity;
  private readonly out: { bytes: number; at: number }[] = [];
  /** Acknowledgements of the last moments: (time, bytes acknowledged up to then), for the delivery rate. */
  private readonly acks: { at: number; total: number }[] = [];
  private ackedTotal = 0;

  constructor(o: PushWindowOptions = {}) {
    this.targetDelay = o.targetDelay ?? 0.01;
    this.minWindow = o.minWindow ?? 64 << 10;
    this.maxWindow = o.maxWindow ?? 64 << 20;
    this.window = this.minWindow;
  }

  /** A frame of `bytes` went out at `now` (seconds). */
  sent(bytes: number, now: number): void {
    this.out.push({ bytes, at: now });
    this.inFlight += bytes;
  }

  /** The destination acknowledged the oldest frame out; `now` in seconds. Extra acknowledgements are ignored. */
  acked(now: number): void {
    const f = this.out.shift();
    if (!f) return;
    this.inFlight -= f.bytes;
    this.minRtt = Math.min(this.minRtt, Math.max(0, now - f.at));
    this.ackedTotal += f.bytes;
    this.acks.push({ at: now, total: this.ackedTotal });
    while (this.acks.length > 16) this.acks.shift();
    const first = this.acks[0];
    const span = now - first.at;
    if (this.acks.length < 4 || span <= 0) return;
    const rate = (this.ackedTotal - first.total) / span;
    const want = rate * (this.minRtt + this.targetDelay);
    this.window = Math.max(this.minWindow, Math.min(this.maxWindow, want, this.window + f.bytes));
  }

  /** Whether another background batch may go now. */
  get room(): boolean {
    return this.inFlight < this.window;
  }

  /** Pages per background batch: a quarter of the window, between 1 and `most`. */
  batchPages(pageSize: number, most: number): number {
    return Math.max(1, Math.min(most, Math.floor(this.window / 4 / pageSize)));
  }
}
