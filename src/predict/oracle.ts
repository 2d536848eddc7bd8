import type { Bitmap } from '../util/bitmap.ts';
import type { Predictor, RoundObservation } from './types.ts';

/**
 * The future, as only the emulator or a recorded trace knows it: the pages written during the `horizon` rounds that
 * follow round `round` (rounds as counted by RoundObservation.round; round 0 is before the first observation).
 */
export type LookaheadFn = (round: number, horizon: number) => Bitmap;

/** Knows the future: 1 for the pages that will be written within the horizon, 0 for the others. The upper bound. */
export class OraclePredictor implements Predictor {
  readonly name = 'oracle';
  readonly pageCount: number;
  private readonly lookahead: LookaheadFn;
  private round = 0;

  constructor(pageCount: number, lookahead: LookaheadFn) {
    this.pageCount = pageCount;
    this.lookahead = lookahead;
  }

  observe(o: RoundObservation): void {
    this.round = o.round;
  }

  predict(out: Float32Array, horizon = 1): void {
    const future = this.lookahead(this.round, horizon);
    const w = future.words;
    for (let p = 0; p < this.pageCount; p++) out[p] = (w[p >>> 5] >>> (p & 31)) & 1;
  }
}
