import type { Predictor, RoundObservation } from './types.ts';
import { popcount } from '../util/bitmap.ts';

export interface LearnOptions {
  /** Weight of the past in the count tables: every round, what they counted before counts this much less. */
  decay: number;
  /** Most pages of one round a table cell counts: pages of the same round are not independent samples. */
  cap: number;
  /** Pages sampled per round as training examples for the mixer. */
  sample: number;
  /** The mixer's learning rate (stochastic gradient descent on the log loss). */
  rate: number;
  /** Seeds the choice of the mixer's examples. */
  seed: number;
}

export const LEARN_DEFAULTS: LearnOptions = { decay: 0.95, cap: 64, sample: 512, rate: 0.0005, seed: 1 };

/** Rounds of history kept per page, one bit each. */
const HISTORY = 32;
/** The longest horizon with its own tables (the history must hold the round and the horizon after it). */
const MAX_HORIZON = HISTORY / 2;
/** Distances to the nearest dirty page are counted up to FAR pages. */
const FAR = 64;
/** Bucket of a distance in pages: 1, 2, 3-4, 5-8, ..., 33-64, farther or none (7). */
const DIST = new Uint8Array(FAR + 2);
for (let d = 1; d <= FAR + 1; d++) DIST[d] = d > FAR ? 7 : Math.ceil(Math.log2(d));
/** Pages on each side of a page in its density window. */
const HALF = 32;
/** Bucket of a count 0..65: 0, 1, 2, 3-4, 5-8, 9-16, 17-32, 33 or more. */
const COUNT = new Uint8Array(2 * HALF + 2);
for (let c = 1; c < COUNT.length; c++) COUNT[c] = Math.min(7, Math.ceil(Math.log2(c)) + 1);
/** Bucket of a page's writes in the last 16 rounds: 0, 1, 2, 3-4, 5-8, 9-12, 13-16. */
const POP16 = [0, 1, 2, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6];
/** Bucket of a page's writes over its life: 0, 1, 2, 3-4, 5-8, 9-16, 17 or more. */
const LIFE_COUNT = new Uint8Array(18);
for (let c = 1; c < 18; c++) LIFE_COUNT[c] = Math.min(6, Math.ceil(Math.log2(c)) + 1);
/** A dirty page's weight in a round's packed count per cell (pages count 1; fewer than 2^26 pages per round). */
const ROUND_DIRTY = 2 ** 26;
/** Pages per block of the block table. */
const BLOCK_SHIFT = 5;

/**
 * The contexts: small integers computed from the history bits of the page and of its neighbours. Each has a table
 * of counts learning how often a page in that context was dirty in the next round (or rounds, for a horizon above
 * 1). Every context includes the page's last two rounds (x & 3), which also choose the mixer's weights.
 */
const TABLES = [
  /** The page's last 16 rounds. */
  { name: 'own16', size: 1 << 16 },
  /** The page's last 8 rounds. */
  { name: 'own8', size: 256 },
  /** Last 2 rounds x distance to the nearest dirty page on the left in the last round, and in the one before. */
  { name: 'left', size: 4 * 8 * 8 },
  /** The same on the right. */
  { name: 'right', size: 4 * 8 * 8 },
  /** Last 2 rounds x dirty pages within +-32 in the last round and the one before x own writes in 16 rounds. */
  { name: 'dense', size: 4 * 8 * 8 * 7 },
  /** Rounds since the last write (log; the last 2 rounds) x share of the rounds so far dirty x writes so far. */
  { name: 'life', size: 10 * 11 * 7 },
  /** Last 2 rounds x share of all pages dirty in the last round and in the one before. */
  { name: 'global', size: 4 * 8 * 8 },
] as const;
/** Inputs of the mixer: the tables above, the block table (per 32 pages x last 2 rounds, sized by memory), a bias. */
const K = TABLES.length + 1;
const INPUTS = K + 1;
const GATES = 4;
const OFFSET: number[] = [];
let FIXED = 0;
for (const t of TABLES) {
  OFFSET.push(FIXED);
  FIXED += t.size;
}
OFFSET.push(FIXED);
/** Share of the way the mixer's weights go back to the prior after each round's pass. */
const PULL = 0.05;
/** Smoothing of a cell towards its prior, in pages. */
const A = 2;

const ctz = (x: number): number => 31 - Math.clz32(x & -x);
/** Bucket of a share of pages: 0, < 1 %, < 3 %, < 10 %, < 25 %, < 50 %, < 75 %, more. */
const shareBucket = (f: number): number =>
  f <= 0 ? 0 : f < 0.01 ? 1 : f < 0.03 ? 2 : f < 0.1 ? 3 : f < 0.25 ? 4 : f < 0.5 ? 5 : f < 0.75 ? 6 : 7;
/** 1 / (1 + e^-z) from a table, interpolated (z in [-16, 16], steps of 1/32). */
const SIG = new Float32Array(1025);
for (let i = 0; i <= 1024; i++) SIG[i] = 1 / (1 + Math.exp(-(i / 32 - 16)));
const sigmoid = (z: number): number => {
  if (z <= -16) return SIG[0];
  if (z >= 16) return SIG[1024];
  const f = (z + 16) * 32;
  const i = f | 0;
  return i >= 1024 ? SIG[1024] : SIG[i] + (SIG[i + 1] - SIG[i]) * (f - i);
};
const logit = (p: number): number => {
  const q = p < 1e-4 ? 1e-4 : p > 1 - 1e-4 ? 1 - 1e-4 : p;
  return Math.log(q / (1 - q));
};

/** One horizon's model: the count tables (all in one array) and the mixer's weights. */
class Head {
  readonly horizon: number;
  /** Pages and dirty ones counted per cell, scaled: the true (decayed) counts are these times `scale`. */
  readonly n: Float32Array;
  readonly k: Float32Array;
  scale = 1;
  /**
   * Logit of each cell's rate, smoothed towards the base rate; recomputed for the cells a round counted pages in
   * (a cell without new pages keeps its estimate); 0, no information, for a cell never seen.
   */
  readonly st: Float32Array;
  /** Decayed counts of all pages and of the dirty ones: the base rate the cells are smoothed towards. */
  baseN = 0;
  baseK = 0;
  trained = 0;
  /** Mixer weights per gate: one per table, then the bias. */
  readonly w = new Float32Array(GATES * INPUTS);
  /** Ring buffer of the mixer's examples: inputs (table logits and 1), gate, label. */
  readonly bufX: Float32Array;
  readonly bufG: Uint8Array;
  readonly bufY: Uint8Array;
  bufLen = 0;
  bufAt = 0;
  readonly capacity: number;

  constructor(horizon: number, cells: number, sample: number) {
    this.horizon = horizon;
    this.n = new Float32Array(cells);
    this.k = new Float32Array(cells);
    this.st = new Float32Array(cells);
    for (let g = 0; g < GATES; g++) for (let i = 0; i < K; i++) this.w[g * INPUTS + i] = 1 / K;
    this.capacity = sample * 3;
    this.bufX = new Float32Array(this.capacity * INPUTS);
    this.bufG = new Uint8Array(this.capacity);
    this.bufY = new Uint8Array(this.capacity);
  }
}

/**
 * Learns online from the program's own rounds; nothing is trained offline. After each round, every page's contexts
 * of the round before are labelled by whether the page was dirtied in it and counted in a table per context; a
 * logistic mixer of the tables' rates, gated by the page's last two rounds, is trained on a sample of pages. Horizons
 * above 1 get their own tables and mixer, trained on the history kept when first asked for. See docs/predictors.md.
 */
export class LearnPredictor implements Predictor {
  readonly name = 'learn';
  readonly pageCount: number;
  private readonly o: LearnOptions;
  /** Last 32 rounds per page, most recent in bit 0. */
  private readonly hist: Uint32Array;
  /** Rounds each page was dirty in, and the last of them that has left the history (0: none). */
  private readonly count: Uint32Array;
  private readonly beyond: Uint32Array;
  /** Share of the pages dirty in each of the last 64 rounds, by round number mod 64. */
  private readonly shares = new Float64Array(64);
  private rounds = 0;
  private readonly heads = new Map<number, Head>();
  /** Cells of a head's tables: the fixed ones and the block table. */
  private readonly cells: number;
  /** Every page's cells (K per page) and gate, as of round ctxRound. */
  private readonly ctx: Uint32Array;
  private readonly gate: Uint8Array;
  private ctxRound = -1;
  /** Scratch: distances (bucketed) to the nearest dirty page on the right in a round (x 8) and the one before. */
  private readonly right: Uint8Array;
  /** Scratch: a round's pages (+ 1) and dirty ones (+ 2^26) per cell, and the cells it touched. */
  private readonly roundCount: Float64Array;
  private readonly touched: Int32Array;
  private rng: number;

  constructor(pageCount: number, options: Partial<LearnOptions> = {}) {
    if (pageCount >= ROUND_DIRTY)
      throw new RangeError(
        `the learn predictor takes fewer than 2^26 pages (256 GiB of 4 KiB pages), not ${pageCount}`,
      );
    this.pageCount = pageCount;
    this.o = { ...LEARN_DEFAULTS, ...options };
    this.hist = new Uint32Array(pageCount);
    this.count = new Uint32Array(pageCount);
    this.beyond = new Uint32Array(pageCount);
    this.cells = FIXED + (((Math.max(1, pageCount) - 1) >>> BLOCK_SHIFT) + 1) * 4;
    this.ctx = new Uint32Array(pageCount * K);
    this.gate = new Uint8Array(pageCount);
    this.right = new Uint8Array(pageCount);
    this.roundCount = new Float64Array(this.cells);
    this.touched = new Int32Array(this.cells);
    this.rng = (this.o.seed ^ 0x9e3779b9) >>> 0 || 1;
  }

  observe(o: RoundObservation): void {
    this.rounds++;
    const w = o.dirty.words;
    const h = this.hist;
    let dirty = 0;
    for (let p = 0; p < this.pageCount; p++) {
      const x = h[p];
      // A write about to leave the history is remembered as the last one beyond it.
      if (x >>> 31) this.beyond[p] = this.rounds - HISTORY;
      const b = (w[p >>> 5] >>> (p & 31)) & 1;
      h[p] = (x << 1) | b;
      dirty += b;
      this.count[p] += b;
    }
    this.shares[this.rounds & 63] = this.pageCount > 0 ? dirty / this.pageCount : 0;
    for (const head of this.heads.values()) if (this.rounds > head.horizon) this.train(head, head.horizon);
  }

  predict(out: Float32Array, horizon = 1): void {
    const N = this.pageCount;
    if (this.rounds === 0) {
      out.fill(0, 0, N);
      return;
    }
    // Horizons beyond MAX_HORIZON: from that one's, as 1 - (1 - p)^(horizon / MAX_HORIZON).
    if (horizon > MAX_HORIZON) {
      this.predict(out, MAX_HORIZON);
      const e = horizon / MAX_HORIZON;
      for (let p = 0; p < N; p++) out[p] = 1 - Math.pow(1 - out[p], e);
      return;
    }
    horizon = Math.max(1, Math.round(horizon));
    let head = this.heads.get(horizon);
    if (!head) {
      head = new Head(horizon, this.cells, this.o.sample);
      this.heads.set(horizon, head);
      // Catch up on the rounds the history still holds, oldest first.
      for (let lag = Math.min(HISTORY / 2, this.rounds - 1); lag >= horizon; lag--) this.train(head, lag);
    }
    if (head.trained === 0) {
      // Nothing labelled yet: the pages written lately, the more recently the likelier, all below 0.5.
      for (let p = 0; p < N; p++) {
        const x = this.hist[p];
        out[p] = x === 0 ? 0 : 0.4 / (1 + ctz(x));
      }
      return;
    }
    this.contexts(0);
    const ctx = this.ctx;
    const gate = this.gate;
    const st = head.st;
    const w = head.w;
    for (let p = 0, j = 0; p < N; p++) {
      const g = gate[p] * INPUTS;
      let z = w[g + K];
      for (let i = 0; i < K; i++, j++) z += w[g + i] * st[ctx[j]];
      out[p] = sigmoid(z);
    }
  }

  /**
   * Trains a head on the round `lag` rounds back: the pages' contexts then, labelled by whether the page was dirtied
   * in any of the `horizon` rounds after it.
   */
  private train(head: Head, lag: number): void {
    const N = this.pageCount;
    this.contexts(lag);
    const ctx = this.ctx;
    const gate = this.gate;
    const h = this.hist;
    const mask = (1 << head.horizon) - 1;
    const shift = lag - head.horizon;
    // The mixer's examples first, from the tables as they were before this round: each page with chance sample/N,
    // drawn as geometric skips.
    const chance = Math.min(1, this.o.sample / N);
    const logSkip = chance < 1 ? 1 / Math.log(1 - chance) : 0;
    let rng = this.rng;
    const skip = (): number => {
      if (chance >= 1) return 1;
      rng ^= rng << 13;
      rng ^= rng >>> 17;
      rng ^= rng << 5;
      rng >>>= 0;
      return 1 + Math.floor(Math.log((rng + 1) / 4294967297) * logSkip);
    };
    for (let p = skip() - 1; p < N; p += skip()) {
      const at = head.bufAt * INPUTS;
      for (let i = 0; i < K; i++) head.bufX[at + i] = head.st[ctx[p * K + i]];
      head.bufX[at + K] = 1;
      head.bufG[head.bufAt] = gate[p];
      head.bufY[head.bufAt] = (h[p] >>> shift) & mask ? 1 : 0;
      head.bufAt = (head.bufAt + 1) % head.capacity;
      if (head.bufLen < head.capacity) head.bufLen++;
    }
    this.rng = rng;
    // The round's pages and dirty ones per cell.
    const rc = this.roundCount;
    const touched = this.touched;
    let t = 0;
    let pos = 0;
    for (let p = 0, j = 0; p < N; p++) {
      const y = (h[p] >>> shift) & mask ? 1 : 0;
      pos += y;
      const add = y ? 1 + ROUND_DIRTY : 1;
      for (let i = 0; i < K; i++, j++) {
        const c = ctx[j];
        const v = rc[c];
        if (v === 0) touched[t++] = c;
        rc[c] = v + add;
      }
    }
    // Into the tables: every cell decays by `decay` per round (done by counting new pages 1/decay more each round),
    // and a cell counts at most `cap` pages of a round.
    const d = this.o.decay;
    const inc = 1 / (head.scale * d);
    const cap = this.o.cap;
    const n = head.n;
    const k = head.k;
    for (let i = 0; i < t; i++) {
      const c = touched[i];
      const v = rc[c];
      const dirty = Math.floor(v / ROUND_DIRTY);
      const m = v - dirty * ROUND_DIRTY;
      const wt = m > cap ? (inc * cap) / m : inc;
      n[c] += m * wt;
      k[c] += dirty * wt;
      rc[c] = 0;
    }
    head.scale *= d;
    if (head.scale < 1e-20) {
      for (let c = 0; c < n.length; c++) {
        n[c] *= head.scale;
        k[c] *= head.scale;
      }
      head.scale = 1;
    }
    head.baseN = head.baseN * d + N;
    head.baseK = head.baseK * d + pos;
    const base = (head.baseK + 0.5) / (head.baseN + 1);
    const s = head.scale;
    const st = head.st;
    for (let i = 0; i < t; i++) {
      const c = touched[i];
      st[c] = logit((k[c] * s + A * base) / (n[c] * s + A));
    }
    if (head.trained > 0) this.fitMixer(head);
    head.trained++;
  }

  /** One pass of stochastic gradient descent on the log loss over the buffered examples. */
  private fitMixer(head: Head): void {
    const lr = this.o.rate;
    const w = head.w;
    const x = head.bufX;
    for (let j = 0; j < head.bufLen; j++) {
      const g = head.bufG[j] * INPUTS;
      const at = j * INPUTS;
      let z = 0;
      for (let i = 0; i < INPUTS; i++) z += w[g + i] * x[at + i];
      const err = head.bufY[j] - 1 / (1 + Math.exp(-z));
      for (let i = 0; i < INPUTS; i++) w[g + i] += lr * err * x[at + i];
    }
    // A pull towards the prior (equal weights, no bias) after each pass, so that a round that misled every table
    // (a phase change) does not leave the mixer distrusting them; and no table weighs against its own estimate.
    for (let at = 0; at < GATES * INPUTS; at++) {
      const i = at % INPUTS;
      w[at] += PULL * ((i < K ? 1 / K : 0) - w[at]);
      if (i < K && w[at] < 0) w[at] = 0;
    }
  }

  /** Fills ctx and gate with every page's cells as of `lag` rounds ago, unless they hold that round already. */
  private contexts(lag: number): void {
    const round = this.rounds - lag;
    if (this.ctxRound === round) return;
    this.ctxRound = round;
    const N = this.pageCount;
    const h = this.hist;
    const ctx = this.ctx;
    const right = this.right;
    // Distances to the nearest dirty page on the right, in the round and the one before.
    let n0 = FAR + 1;
    let n1 = FAR + 1;
    for (let p = N - 1; p >= 0; p--) {
      right[p] = DIST[n0] * 8 + DIST[n1];
      const x = h[p] >>> lag;
      n0 = x & 1 ? 1 : n0 > FAR ? n0 : n0 + 1;
      n1 = x & 2 ? 1 : n1 > FAR ? n1 : n1 + 1;
    }
    // Dirty pages within +-HALF in the round (c0) and the one before (c1); distances to the left (l0, l1).
    let c0 = 0;
    let c1 = 0;
    for (let q = 0; q < HALF && q < N; q++) {
      const x = h[q] >>> lag;
      c0 += x & 1;
      c1 += (x >>> 1) & 1;
    }
    let l0 = FAR + 1;
    let l1 = FAR + 1;
    const count = this.count;
    const beyond = this.beyond;
    const lowMask = lag >= 32 ? 0xffffffff : 2 ** lag - 1;
    const globalAt =
      OFFSET[6] +
      shareBucket(this.shares[round & 63]) * 8 +
      shareBucket(round > 1 ? this.shares[(round - 1) & 63] : 0);
    const gate = this.gate;
    // Share of the rounds until then a page was dirty in, by its count, in tenths.
    const lifeShare = new Uint8Array(round + 1);
    for (let c = 0; c <= round; c++) lifeShare[c] = Math.round((10 * c) / round);
    for (let p = 0, j = 0; p < N; p++, j += K) {
      const inQ = p + HALF;
      if (inQ < N) {
        const v = h[inQ] >>> lag;
        c0 += v & 1;
        c1 += (v >>> 1) & 1;
      }
      const x = h[p] >>> lag;
      const g = x & 3;
      gate[p] = g;
      ctx[j] = x & 0xffff;
      ctx[j + 1] = OFFSET[1] + (x & 0xff);
      ctx[j + 2] = OFFSET[2] + (g * 8 + DIST[l0]) * 8 + DIST[l1];
      ctx[j + 3] = OFFSET[3] + (g << 6) + right[p];
      ctx[j + 4] = OFFSET[4] + ((g * 8 + COUNT[c0]) * 8 + COUNT[c1]) * 7 + POP16[popcount(x & 0xffff)];
      // Writes over the page's life until then, and rounds since the last.
      const cnt = lag === 0 ? count[p] : count[p] - popcount(h[p] & lowMask);
      let since: number;
      if (g !== 0) since = g === 3 ? 0 : g === 1 ? 1 : 2;
      else if (x !== 0)
        since = Math.min(7, 33 - Math.clz32(ctz(x))); // 2-3: 3, 4-7: 4, ..., 16-31: 6
      else if (beyond[p] !== 0) since = round - beyond[p] >= 64 ? 8 : 7;
      else since = 9;
      ctx[j + 5] = OFFSET[5] + (since * 11 + lifeShare[cnt]) * 7 + LIFE_COUNT[cnt > 17 ? 17 : cnt];
      ctx[j + 6] = globalAt + g * 64;
      ctx[j + 7] = OFFSET[7] + (((p >>> BLOCK_SHIFT) << 2) | g);
      // Slide: the left distances and the density window.
      l0 = x & 1 ? 1 : l0 > FAR ? l0 : l0 + 1;
      l1 = x & 2 ? 1 : l1 > FAR ? l1 : l1 + 1;
      const outQ = p - HALF;
      if (outQ >= 0) {
        const v = h[outQ] >>> lag;
        c0 -= v & 1;
        c1 -= (v >>> 1) & 1;
      }
    }
  }
}
