import type { Trace } from '../memory/trace.ts';
import { Bitmap } from '../util/bitmap.ts';
import { isStabilityAware } from './datashift.ts';
import { rocAuc, ScoreCollector, type Quality } from './metrics.ts';
import type { LookaheadFn } from './oracle.ts';
import type { Predictor } from './types.ts';
import { median } from '../report/metrics.ts';

/** A trace's bitmaps (bytes, bit i of byte j = page 8j+i) as Bitmaps (32-bit words, little-endian: the same bits). */
export function traceBitmaps(trace: Trace, kind: 'dirty' | 'accessed' = 'dirty'): Bitmap[] {
  const src = kind === 'dirty' ? trace.dirty : trace.accessed;
  if (!src) return [];
  const tail = trace.pageCount & 31;
  return src.map((bytes) => {
    const b = new Bitmap(trace.pageCount);
    new Uint8Array(b.words.buffer).set(bytes.subarray(0, Math.min(bytes.length, b.words.length * 4)));
    // Padding bits past the last page are not pages.
    if (tail) b.words[b.words.length - 1] &= 2 ** tail - 1;
    return b;
  });
}

/** The future of a replayed trace: after round r (r samples observed), the pages dirty in samples r..r+h-1. */
export function traceLookahead(samples: Bitmap[]): LookaheadFn {
  const size = samples[0]?.size ?? 0;
  return (round, horizon) => {
    const out = new Bitmap(size);
    for (let s = round; s < round + horizon && s < samples.length; s++) out.or(samples[s]);
    return out;
  };
}

export interface EvalOptions {
  horizon: number;
  /** Scores at or above it count as "predicted dirty" for precision, recall, F1 and accuracy. */
  threshold: number;
  /** Samples observed before the first scored prediction (>= 1). */
  warmup: number;
}

export const EVAL_DEFAULTS: EvalOptions = { horizon: 1, threshold: 0.5, warmup: 1 };

export interface EvalResult extends Quality {
  predictor: string;
  /**
   * Mean over the scored rounds of each round's own AUC (rounds with both dirty and clean pages): how well the
   * predictor orders the pages of one round, which is what a hold decision uses. `auc` pools every round's pairs.
   */
  aucPerRound: number;
  /** Scored (page, round) pairs and how many of them were dirty within the horizon. */
  pairs: number;
  positives: number;
  rounds: number;
  /** Medians over the scored rounds, milliseconds per 100,000 pages. */
  predictMsPer100k: number;
  observeMsPer100k: number;
  /** For predictors sure of some pages only (datashift): share of pairs they were sure of, accuracy on those. */
  stable?: { coverage: number; accuracy: number };
}

/** What the trace gives besides the dirty pages, per sample, passed on to the predictors' observe(). */
export interface EvalInputs {
  accessed?: Bitmap[];
  system?: Float32Array[];
}

function roundAuc(scores: Float32Array, labels: Bitmap): number {
  const n = labels.count();
  const pos = new Float32Array(n);
  const neg = new Float32Array(scores.length - n);
  let i = 0;
  let j = 0;
  const w = labels.words;
  for (let p = 0; p < scores.length; p++) {
    if ((w[p >>> 5] >>> (p & 31)) & 1) pos[i++] = scores[p];
    else neg[j++] = scores[p];
  }
  return rocAuc(pos, neg);
}

/**
 * Replays the samples through each predictor: observe sample t, predict samples t+1..t+horizon, score the prediction
 * against them (a page is positive when it is dirty in at least one of them). Predictions are scored from sample
 * warmup - 1 on, while at least `horizon` samples follow.
 */
export function evaluatePredictors(
  samples: Bitmap[],
  predictors: Predictor[],
  options: Partial<EvalOptions> = {},
  inputs: EvalInputs = {},
): EvalResult[] {
  const o: EvalOptions = { ...EVAL_DEFAULTS, ...options };
  const pageCount = samples[0]?.size ?? 0;
  const future = traceLookahead(samples);
  const scores = new Float32Array(pageCount);
  const sure = new Uint8Array(pageCount);
  return predictors.map((pred) => {
    const sc = new ScoreCollector(o.threshold);
    const predictMs: number[] = [];
    const observeMs: number[] = [];
    let stableN = 0;
    let stableRight = 0;
    let rounds = 0;
    const roundAucs: number[] = [];
    for (let t = 0; t < samples.length; t++) {
      const t0 = performance.now();
      pred.observe({
        round: t + 1,
        dirty: samples[t],
        ...(inputs.accessed ? { accessed: inputs.accessed[t] } : {}),
        ...(inputs.system ? { system: inputs.system[t] } : {}),
      });
      const t1 = performance.now();
      if (t + 1 < o.warmup || t + o.horizon >= samples.length) continue;
      const t2 = performance.now();
      pred.predict(scores, o.horizon);
      const t3 = performance.now();
      observeMs.push(((t1 - t0) * 1e5) / pageCount);
      predictMs.push(((t3 - t2) * 1e5) / pageCount);
      const labels = future(t + 1, o.horizon);
      sc.add(scores, labels.words, pageCount);
      rounds++;
      const a = roundAuc(scores, labels);
      if (!Number.isNaN(a)) roundAucs.push(a);
      if (isStabilityAware(pred)) {
        stableN += pred.stable(sure);
        const w = labels.words;
        for (let p = 0; p < pageCount; p++) {
          if (!sure[p]) continue;
          const y = (w[p >>> 5] >>> (p & 31)) & 1;
          if (scores[p] >= 0.5 === (y === 1)) stableRight++;
        }
      }
    }
    const q = sc.summary();
    return {
      predictor: pred.name,
      ...q,
      aucPerRound: roundAucs.length > 0 ? roundAucs.reduce((x, y) => x + y, 0) / roundAucs.length : NaN,
      pairs: sc.pairs,
      positives: sc.positives,
      rounds,
      predictMsPer100k: median(predictMs),
      observeMsPer100k: median(observeMs),
      ...(isStabilityAware(pred)
        ? { stable: { coverage: sc.pairs > 0 ? stableN / sc.pairs : NaN, accuracy: stableRight / stableN } }
        : {}),
    };
  });
}
