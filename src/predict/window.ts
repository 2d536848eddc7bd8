/**
 * The forest's features: a temporal x spatial locality window over per-page dirty bits (MBDPC: the last m rounds of
 * the page and of its neighbours), plus five bits of the page's longer history. Every feature is one bit, so a
 * page's features are one or two 32-bit words, and a tree split is a bit test.
 *
 * Bit layout (documented in docs/predictors.md and fixed by the model file's "window"):
 *   bit k*m + a       page p + k - (n-1)/2 was dirty `a` rounds before the last observed one (k in 0..n-1,
 *                     a in 0..m-1); pages outside memory count as clean
 *   bit n*m           page p was dirty at least once in the last l rounds
 *   bit n*m + 1..4    ... and in at least 1/8, 1/4, 1/2, 3/4 of the last l rounds (of the rounds observed, when
 *                     fewer)
 */
import { popcount } from '../util/bitmap.ts';
export interface WindowSpec {
  /** Rounds per page (1..8). */
  m: number;
  /** Pages, centred on the page: the page and (n-1)/2 neighbours on each side (odd; n x m + 5 <= 64). */
  n: number;
  /** Rounds of the longer history (m..32). */
  l: number;
}

export const WINDOW_DEFAULTS: WindowSpec = { m: 5, n: 5, l: 16 };

/** Shares of the last l rounds the longer-history bits test (after the "dirty at least once" bit). */
export const SHARE_THRESHOLDS = [1 / 8, 1 / 4, 1 / 2, 3 / 4];

export const EXTRA_FEATURES = 1 + SHARE_THRESHOLDS.length;

/** Number of feature bits. */
export function featureCount(s: WindowSpec): number {
  return s.n * s.m + EXTRA_FEATURES;
}

/** 32-bit words per page (1 or 2). */
export function featureWords(s: WindowSpec): number {
  return featureCount(s) <= 32 ? 1 : 2;
}

/** Why a window spec cannot be used, or null. */
export function checkWindow(s: WindowSpec): string | null {
  if (!(Number.isInteger(s.m) && s.m >= 1 && s.m <= 8))
    return `m = ${s.m} must be a whole number of rounds 1..8`;
  if (!(Number.isInteger(s.n) && s.n >= 1 && s.n % 2 === 1))
    return `n = ${s.n} must be an odd whole number of pages (the page and as many neighbours on each side)`;
  if (featureCount(s) > 64)
    return `m x n = ${s.m * s.n} is too large: m x n + ${EXTRA_FEATURES} feature bits must fit in 64`;
  if (!(Number.isInteger(s.l) && s.l >= s.m && s.l <= 32))
    return `l = ${s.l} must be a whole number of rounds between m (${s.m}) and 32`;
  return null;
}

/** A readable name for feature bit i, e.g. "page-1@t-0" (left neighbour, last round) or "share>=1/4". */
export function featureName(s: WindowSpec, i: number): string {
  const h = (s.n - 1) / 2;
  if (i < s.n * s.m) {
    const k = Math.floor(i / s.m) - h;
    const a = i % s.m;
    return `page${k === 0 ? '' : k > 0 ? `+${k}` : k}@t-${a}`;
  }
  const j = i - s.n * s.m;
  return j === 0 ? 'dirty-in-l' : `share>=${SHARE_THRESHOLDS[j - 1]}`;
}

/** Keeps the last 32 rounds of every page and computes the feature words of all pages. */
export class LocalityWindow {
  readonly spec: WindowSpec;
  readonly pageCount: number;
  readonly words: number;
  /** Last 32 rounds per page, most recent in bit 0. */
  private readonly hist: Uint32Array;
  private readonly win: Uint8Array;
  rounds = 0;

  constructor(pageCount: number, spec: WindowSpec) {
    const bad = checkWindow(spec);
    if (bad) throw new RangeError(`locality window: ${bad}`);
    this.spec = spec;
    this.pageCount = pageCount;
    this.words = featureWords(spec);
    this.hist = new Uint32Array(pageCount);
    this.win = new Uint8Array(pageCount);
  }

  /** Adds a round: bitmap words, bit p of word p>>5 set when page p was dirty. */
  observe(dirty: Uint32Array): void {
    this.rounds++;
    const h = this.hist;
    for (let p = 0; p < this.pageCount; p++) h[p] = (h[p] << 1) | ((dirty[p >>> 5] >>> (p & 31)) & 1);
  }

  /** Writes the feature words of every page: out[p * words + j]. */
  features(out: Uint32Array): void {
    const { m, n, l } = this.spec;
    const N = this.pageCount;
    const hist = this.hist;
    const win = this.win;
    const mmask = (1 << m) - 1;
    const lmask = l === 32 ? 0xffffffff : 2 ** l - 1;
    const seen = Math.min(this.rounds, l);
    for (let p = 0; p < N; p++) win[p] = hist[p] & mmask;
    // The longer-history bits by number of dirty rounds in the last l.
    const extra = new Uint8Array(33);
    for (let c = 1; c <= 32; c++) {
      let x = 1;
      SHARE_THRESHOLDS.forEach((t, j) => {
        if (c >= t * seen) x |= 2 << j;
      });
      extra[c] = x;
    }
    const half = (n - 1) >> 1;
    const extraAt = n * m;
    if (this.words === 1) {
      // The spatial bits of page p+1 are those of page p shifted down one page, with page p+1+half on top.
      const top = (n - 1) * m;
      let s = 0;
      for (let k = 0; k < n; k++) {
        const q = k - half;
        if (q >= 0 && q < N) s |= win[q] << (k * m);
      }
      for (let p = 0; p < N; p++) {
        const c = popcount(hist[p] & lmask);
        const x = extra[c];
        out[p] = s | (x << extraAt);
        const q = p + 1 + half;
        s = (s >>> m) | (q < N ? win[q] << top : 0);
      }
      return;
    }
    for (let p = 0; p < N; p++) {
      const c = popcount(hist[p] & lmask);
      const x = extra[c];
      let lo = 0;
      let hi = 0;
      for (let k = 0; k <= n; k++) {
        // k = n is the extra bits, placed like one more window entry.
        let v: number;
        if (k === n) v = x;
        else {
          const q = p - half + k;
          v = q >= 0 && q < N ? win[q] : 0;
        }
        if (v === 0) continue;
        const at = k * m;
        if (at >= 32) hi |= v << (at - 32);
        else {
          lo |= v << at;
          if (at + 8 > 32) hi |= v >>> (32 - at);
        }
      }
      out[2 * p] = lo;
      out[2 * p + 1] = hi;
    }
  }
}
