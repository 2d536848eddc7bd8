import type { Clock } from './interfaces.ts';

/** The emulator's clock: time moves only when something (the link, mostly) advances it. */
export class VirtualClock implements Clock {
  private t = 0;

  now(): number {
    return this.t;
  }

  advance(seconds: number): void {
    if (seconds > 0) this.t += seconds;
  }

  advanceTo(t: number): void {
    if (t > this.t) this.t = t;
  }
}

/** Wall-clock time for real migrations. */
export class WallClock implements Clock {
  private readonly start = performance.now();

  now(): number {
    return (performance.now() - this.start) / 1000;
  }
}
