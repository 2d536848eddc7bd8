import type { Predictor, RoundObservation } from './types.ts';

export interface PrOptions {
  /** A page is skipped when its modification probability (within the horizon) is at least this... */
  probability: number;
  /** ...and its recency score is at least this. */
  recency: number;
  /** Rounds after which the recency score of a page halves: 2^-(rounds since last dirty / halfLife). */
  halfLife: number;
}

export const PR_DEFAULTS: PrOptions = { probability: 0.5, recency: 0.5, halfLife: 1 };

/**
 * "Related dirty rate" (the PR baseline of the MBDP/MBDPC research): a page's modification probability (rounds it
 * was dirty / rounds observed) combined with its recency (rounds since it was last dirty). A page is predicted to be
 * dirtied again, and skipped, when both exceed their thresholds.
 *
 * The score written by predict() is probability-like and keeps that rule at 0.5: each of the two quantities is mapped
 * piecewise-linearly so that its threshold lands on 0.5 (0 -> 0, threshold -> 0.5, 1 -> 1), and the score is the
 * smaller of the two. For a horizon h the modification probability is 1 - (1 - rate)^h.
 */
export class PrPredictor implements Predictor {
  readonly name = 'pr';
  readonly pageCount: number;
  private readonly o: PrOptions;
  private readonly dirtyRounds: Uint32Array;
  /** Round each page was last dirty in; 0 = never. */
  private readonly lastDirty: Uint32Array;
  private rounds = 0;

  constructor(pageCount: number, options: Partial<PrOptions> = {}) {
    this.pageCount = pageCount;
    this.o = { ...PR_DEFAULTS, ...options };
    this.dirtyRounds = new Uint32Array(pageCount);
    this.lastDirty = new Uint32Array(pageCount);
  }

  observe(o: RoundObservation): void {
    this.rounds++;
    const w = o.dirty.words;
    const r = this.rounds;
    for (let i = 0; i < w.length; i++) {
      let x = w[i];
      while (x !== 0) {
        const low = x & -x;
        const p = (i << 5) + 31 - Math.clz32(low);
        x ^= low;
        if (p >= this.pageCount) break;
        this.dirtyRounds[p]++;
        this.lastDirty[p] = r;
      }
    }
  }

  /** Whether the rule skips page p for the coming round (the score at horizon 1 is at least 0.5). */
  skip(p: number): boolean {
    if (this.rounds === 0 || this.lastDirty[p] === 0) return false;
    const rate = this.dirtyRounds[p] / this.rounds;
    const recency = Math.pow(2, -(this.rounds - this.lastDirty[p]) / this.o.halfLife);
    return rate >= this.o.probability && recency >= this.o.recency;
  }

  predict(out: Float32Array, horizon = 1): void {
    if (this.rounds === 0) {
      out.fill(0, 0, this.pageCount);
      return;
    }
    const { probability: tp, recency: tr, halfLife } = this.o;
    // Recency depends only on rounds since the last dirty round: a table over the observed rounds.
    const recencyScore = new Float32Array(this.rounds + 1);
    for (let since = 0; since <= this.rounds; since++)
      recencyScore[since] = ramp(Math.pow(2, -since / halfLife), tr);
    const inv = 1 / this.rounds;
    for (let p = 0; p < this.pageCount; p++) {
      const last = this.lastDirty[p];
      if (last === 0) {
        out[p] = 0;
        continue;
      }
      const rate = this.dirtyRounds[p] * inv;
      const mp = horizon === 1 ? rate : 1 - Math.pow(1 - rate, horizon);
      const a = ramp(mp, tp);
      const b = recencyScore[this.rounds - last];
      out[p] = a < b ? a : b;
    }
  }
}

/** [0, 1] -> [0, 1], piecewise linear through (0, 0), (t, 0.5), (1, 1). */
function ramp(x: number, t: number): number {
  if (t <= 0) return 0.5 + 0.5 * x;
  if (t >= 1) return x >= 1 ? 1 : 0.5 * x;
  return x < t ? (0.5 * x) / t : 0.5 + (0.5 * (x - t)) / (1 - t);
}
