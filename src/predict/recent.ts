import type { Predictor, RoundObservation } from './types.ts';

export const RECENT_DEFAULTS = { window: 5 };

/**
 * The frequency baseline a predictor has to beat: a page is predicted dirty when it was dirty in any of the last
 * `window` rounds, and the more recently the likelier (score (window - rounds since) / window, 0 beyond the window):
 * thresholded at any positive score, it is the rule "dirty in one of the last `window` samples".
 */
export class RecentPredictor implements Predictor {
  readonly name = 'recent';
  readonly pageCount: number;
  private readonly window: number;
  /** The round each page was last dirty in (0: never). */
  private readonly last: Uint32Array;
  private round = 0;

  constructor(pageCount: number, window = RECENT_DEFAULTS.window) {
    this.pageCount = pageCount;
    this.window = window;
    this.last = new Uint32Array(pageCount);
  }

  observe(o: RoundObservation): void {
    this.round++;
    const w = o.dirty.words;
    for (let p = 0; p < this.pageCount; p++) if ((w[p >>> 5] >>> (p & 31)) & 1) this.last[p] = this.round;
  }

  predict(out: Float32Array): void {
    for (let p = 0; p < this.pageCount; p++) {
      const since = this.last[p] ? this.round - this.last[p] : Infinity;
      out[p] = since < this.window ? (this.window - since) / this.window : 0;
    }
  }
}
