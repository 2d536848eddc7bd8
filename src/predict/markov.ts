import type { Predictor, RoundObservation } from './types.ts';

export interface MarkovOptions {
  /**
   * Weight, in transitions, of the prior each page starts from: the transition rates pooled over all pages. 0 trusts
   * a page's own counts alone (a page seen dirty once is then predicted dirty for sure).
   */
  prior: number;
}

export const MARKOV_DEFAULTS: MarkovOptions = { prior: 1 };

/**
 * Per-page two-state Markov chain (clean, dirty). Each page counts its own transitions clean->dirty and
 * dirty->dirty; the probabilities are those counts shrunk towards the pooled rates of all pages by `prior`
 * transitions. For a horizon h the prediction is the chance of at least one dirty round among the next h:
 * 1 - P(clean next) * (1 - p_cd)^(h-1), where P(clean next) is 1 - p_dd from dirty and 1 - p_cd from clean.
 */
export class MarkovPredictor implements Predictor {
  readonly name = 'markov';
  readonly pageCount: number;
  private readonly o: MarkovOptions;
  /** Rounds each page left the clean state from, and how many of them led to dirty. */
  private readonly fromClean: Uint32Array;
  private readonly cleanToDirty: Uint32Array;
  private readonly fromDirty: Uint32Array;
  private readonly dirtyToDirty: Uint32Array;
  /** The page's state in the last observed round, as the bitmap words of that round. */
  private last: Uint32Array | null = null;
  private pooled = { fromClean: 0, cleanToDirty: 0, fromDirty: 0, dirtyToDirty: 0 };
  private lastDirtyShare = 0;

  constructor(pageCount: number, options: Partial<MarkovOptions> = {}) {
    this.pageCount = pageCount;
    this.o = { ...MARKOV_DEFAULTS, ...options };
    this.fromClean = new Uint32Array(pageCount);
    this.cleanToDirty = new Uint32Array(pageCount);
    this.fromDirty = new Uint32Array(pageCount);
    this.dirtyToDirty = new Uint32Array(pageCount);
  }

  observe(o: RoundObservation): void {
    const now = o.dirty.words;
    this.lastDirtyShare = this.pageCount > 0 ? o.dirty.count() / this.pageCount : 0;
    const prev = this.last;
    if (prev) {
      let fc = 0;
      let cd = 0;
      let fd = 0;
      let dd = 0;
      for (let p = 0; p < this.pageCount; p++) {
        const was = (prev[p >>> 5] >>> (p & 31)) & 1;
        const is = (now[p >>> 5] >>> (p & 31)) & 1;
        if (was) {
          this.fromDirty[p]++;
          this.dirtyToDirty[p] += is;
          fd++;
          dd += is;
        } else {
          this.fromClean[p]++;
          this.cleanToDirty[p] += is;
          fc++;
          cd += is;
        }
      }
      const g = this.pooled;
      g.fromClean += fc;
      g.cleanToDirty += cd;
      g.fromDirty += fd;
      g.dirtyToDirty += dd;
      prev.set(now);
    } else {
      this.last = now.slice();
    }
  }

  /**
   * Pooled transition rates, each starting from two pseudo-transitions: one at 1/2 and one at the share of pages
   * dirty in the last round (without evidence, a page is about as likely to be dirty next as the average page was).
   */
  pooledRates(): { cleanToDirty: number; dirtyToDirty: number } {
    const g = this.pooled;
    const f = this.lastDirtyShare + 0.5;
    return {
      cleanToDirty: (g.cleanToDirty + f) / (g.fromClean + 2),
      dirtyToDirty: (g.dirtyToDirty + f) / (g.fromDirty + 2),
    };
  }

  predict(out: Float32Array, horizon = 1): void {
    const last = this.last;
    if (!last) {
      out.fill(0, 0, this.pageCount);
      return;
    }
    const a = this.o.prior;
    const g = this.pooledRates();
    const priorCd = a * g.cleanToDirty;
    const priorDd = a * g.dirtyToDirty;
    const h1 = horizon - 1;
    for (let p = 0; p < this.pageCount; p++) {
      const nc = this.fromClean[p] + a;
      const nd = this.fromDirty[p] + a;
      // A page with no transitions from a state and no prior weight falls back to the pooled rate.
      const pcd = nc > 0 ? (this.cleanToDirty[p] + priorCd) / nc : g.cleanToDirty;
      const pdd = nd > 0 ? (this.dirtyToDirty[p] + priorDd) / nd : g.dirtyToDirty;
      const dirty = (last[p >>> 5] >>> (p & 31)) & 1;
      const cleanNext = dirty ? 1 - pdd : 1 - pcd;
      const stayClean = h1 === 0 ? cleanNext : cleanNext * Math.pow(1 - pcd, h1);
      out[p] = 1 - stayClean;
    }
  }
}
