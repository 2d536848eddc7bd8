import type { Predictor, RoundObservation } from './types.ts';
import { popcount } from '../util/bitmap.ts';

export interface DataShiftOptions {
  /** Rounds looked back (1..32). */
  window: number;
  /** A page is stable when one state (dirty or clean) held in more than this share of the window. */
  share: number;
}

export const DATASHIFT_DEFAULTS: DataShiftOptions = { window: 2, share: 0.5 };

/** A predictor that is sure about some pages only (for predict-eval's coverage and the u2c strategy's phases). */
export interface StabilityAware {
  /** Sets out[p] to 1 for the pages it is sure about, 0 for the others; returns how many it is sure about. */
  stable(out: Uint8Array): number;
}

export function isStabilityAware(p: object): p is StabilityAware {
  return typeof (p as Partial<StabilityAware>).stable === 'function';
}

/**
 * U2CMigration's phase 1, "data shift": a page whose last state (dirty or clean) held in more than `share` of the
 * last `window` rounds is stable, and that state is predicted to hold (probability 1 or 0, for any horizon).
 * Unstable pages get the share of dirty rounds in the window: 0.5 for the default window of 2. Until `window`
 * rounds have been observed no page is stable and every page gets its dirty share so far.
 */
export class DataShiftPredictor implements Predictor, StabilityAware {
  readonly name = 'datashift';
  readonly pageCount: number;
  private readonly o: DataShiftOptions;
  /** Last rounds of each page, most recent in bit 0. */
  private readonly hist: Uint32Array;
  private rounds = 0;

  constructor(pageCount: number, options: Partial<DataShiftOptions> = {}) {
    this.pageCount = pageCount;
    this.o = { ...DATASHIFT_DEFAULTS, ...options };
    if (!(Number.isInteger(this.o.window) && this.o.window >= 1 && this.o.window <= 32))
      throw new RangeError(`datashift window ${this.o.window} must be a whole number of rounds 1..32`);
    this.hist = new Uint32Array(pageCount);
  }

  observe(o: RoundObservation): void {
    this.rounds++;
    const w = o.dirty.words;
    const h = this.hist;
    for (let p = 0; p < this.pageCount; p++) h[p] = (h[p] << 1) | ((w[p >>> 5] >>> (p & 31)) & 1);
  }

  /** Rounds in the window the last state must have held in (more than share x window). */
  private get needed(): number {
    return Math.floor(this.o.share * this.o.window) + 1;
  }

  private get mask(): number {
    return this.o.window === 32 ? 0xffffffff : (1 << this.o.window) - 1;
  }

  predict(out: Float32Array, _horizon = 1): void {
    if (this.rounds === 0) {
      out.fill(0, 0, this.pageCount);
      return;
    }
    const seen = Math.min(this.rounds, this.o.window);
    const full = this.rounds >= this.o.window;
    const mask = this.mask;
    const need = this.needed;
    const inv = 1 / seen;
    for (let p = 0; p < this.pageCount; p++) {
      const h = this.hist[p];
      const d = popcount(h & mask);
      if (full && (h & 1 ? d : seen - d) >= need) out[p] = h & 1;
      else out[p] = d * inv;
    }
  }

  stable(out: Uint8Array): number {
    if (this.rounds < this.o.window) {
      out.fill(0, 0, this.pageCount);
      return 0;
    }
    const mask = this.mask;
    const need = this.needed;
    const w = this.o.window;
    let n = 0;
    for (let p = 0; p < this.pageCount; p++) {
      const h = this.hist[p];
      const d = popcount(h & mask);
      const s = (h & 1 ? d : w - d) >= need ? 1 : 0;
      out[p] = s;
      n += s;
    }
    return n;
  }
}
