/**
 * Prediction quality over many (page, round) pairs: the exact ROC AUC (Mann-Whitney: the share of (dirty, clean)
 * pairs the scores order correctly, ties counting half) and the confusion counts at a threshold.
 */
export class ScoreCollector {
  readonly threshold: number;
  private pos: Float32Array<ArrayBuffer> = new Float32Array(1 << 16);
  private neg: Float32Array<ArrayBuffer> = new Float32Array(1 << 16);
  private np = 0;
  private nn = 0;
  tp = 0;
  fp = 0;
  fn = 0;
  tn = 0;

  /** Pages scoring at least `threshold` are predicted dirty. */
  constructor(threshold = 0.5) {
    this.threshold = threshold;
  }

  /** Adds one round: scores[p] and whether page p was dirty (bit p of labels[p >> 5]). */
  add(scores: Float32Array, labels: Uint32Array, count = scores.length): void {
    this.reserve(count);
    const t = this.threshold;
    for (let p = 0; p < count; p++) {
      const s = scores[p];
      const y = (labels[p >>> 5] >>> (p & 31)) & 1;
      if (y) {
        this.pos[this.np++] = s;
        if (s >= t) this.tp++;
        else this.fn++;
      } else {
        this.neg[this.nn++] = s;
        if (s >= t) this.fp++;
        else this.tn++;
      }
    }
  }

  private reserve(extra: number): void {
    const grow = (a: Float32Array<ArrayBuffer>, used: number): Float32Array<ArrayBuffer> => {
      if (used + extra <= a.length) return a;
      const b = new Float32Array(Math.max(a.length * 2, used + extra));
      b.set(a.subarray(0, used));
      return b;
    };
    this.pos = grow(this.pos, this.np);
    this.neg = grow(this.neg, this.nn);
  }

  get positives(): number {
    return this.np;
  }

  get pairs(): number {
    return this.np + this.nn;
  }

  auc(): number {
    return rocAuc(this.pos.subarray(0, this.np), this.neg.subarray(0, this.nn));
  }

  summary(): Quality {
    const { tp, fp, fn, tn } = this;
    const precision = tp + fp > 0 ? tp / (tp + fp) : NaN;
    const recall = tp + fn > 0 ? tp / (tp + fn) : NaN;
    return {
      auc: this.auc(),
      precision,
      recall,
      f1:
        precision + recall > 0 ? (2 * precision * recall) / (precision + recall) : tp + fp + fn > 0 ? 0 : NaN,
      accuracy: this.pairs > 0 ? (tp + tn) / this.pairs : NaN,
      tp,
      fp,
      fn,
      tn,
    };
  }
}

export interface Quality {
  /** NaN when there are no dirty or no clean pairs. */
  auc: number;
  /** NaN when nothing was predicted dirty. */
  precision: number;
  /** NaN when nothing was dirty. */
  recall: number;
  f1: number;
  accuracy: number;
  tp: number;
  fp: number;
  fn: number;
  tn: number;
}

/**
 * Exact ROC AUC from the scores of the positives and of the negatives: sorts both (the arrays are sorted in place)
 * and counts, for every positive, the negatives below it plus half of those equal to it.
 */
export function rocAuc(pos: Float32Array, neg: Float32Array): number {
  if (pos.length === 0 || neg.length === 0) return NaN;
  pos.sort();
  neg.sort();
  let u = 0;
  let below = 0; // negatives < current positive score
  let i = 0;
  while (i < pos.length) {
    const s = pos[i];
    while (below < neg.length && neg[below] < s) below++;
    let equal = below;
    while (equal < neg.length && neg[equal] === s) equal++;
    let k = i;
    while (k < pos.length && pos[k] === s) k++;
    u += (k - i) * (below + 0.5 * (equal - below));
    i = k;
  }
  return u / (pos.length * neg.length);
}
