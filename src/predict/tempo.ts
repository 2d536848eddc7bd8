import type { Predictor, RoundObservation } from './types.ts';

export interface TempoOptions {
  /** Weight of the past in each page's write rate: every round, what came before counts this much less. */
  decay: number;
  /** Fewest pages a dirty run must have to count as the trail of a moving front. */
  minRun: number;
  /** How much further than its measured speed a front is expected to reach, as a share of its advance. */
  margin: number;
}

export const TEMPO_DEFAULTS: TempoOptions = { decay: 0.5, minRun: 64, margin: 0.25 };

/** A page's share of dirty rounds is read as at most this (a page dirty in every round has a finite rate). */
const F_MAX = 0.99;

/**
 * A region written by a front that moves up through it (a sequential sweep): [lo, hi) as seen so far, the page the
 * front reaches next (null while unknown: the whole region was written in the last round) and its speed in pages
 * per second (a lower bound while the front is unknown). `wrapped`: the front has been seen to come around from hi
 * to lo, so the region is all of it; before that, the front may go on past hi.
 */
interface Sweep {
  lo: number;
  hi: number;
  front: number | null;
  speed: number;
  wrapped: boolean;
  /**
   * The last run started where the front before it was: the front moves. Until then (a run seen once, or one
   * that stays where it was: a hot set, not a front), the region's pages are left to the rate model.
   */
  confirmed: boolean;
  /** Rounds in a row that wrote nothing in the region (it is forgotten after a few). */
  idle: number;
}

/**
 * Time-aware prediction of page writes. Rounds differ in length (they shrink as pre-copy converges), so what is
 * learned is a rate per second, and a prediction is for the window the round about to start is expected to last
 * (`window.seconds`, as the page selector sets it; else the last round's length):
 * - A moving front (a region rewritten in address order, wrapping around): the pages a round dirtied form one run
 *   that starts where the last one ended; its end is the front and its length over the round's time the speed.
 *   The pages ahead of the front, as far as it will get within the window, will be written; those behind it
 *   (written just now) will not, until it comes around again.
 * - Every other page: its share of dirty rounds (decayed) read as a Poisson write rate over the mean round
 *   length, and the chance of a write within the window from it: hot sets, random writes, phase changes (the decay
 *   forgets an old hot set within a few rounds).
 */
export class TempoPredictor implements Predictor {
  readonly name = 'tempo';
  readonly pageCount: number;
  private readonly o: TempoOptions;
  private readonly window: { seconds: number } | undefined;
  /** Decayed count of rounds each page was dirty in, and of rounds (same decay). */
  private readonly hits: Float32Array;
  private rounds = 0;
  /** Decayed mean length of a round, in seconds (1 when observations carry no time: a trace's samples). */
  private meanSeconds = 0;
  private lastSeconds = 1;
  private sweep: Sweep | null = null;

  constructor(pageCount: number, options: Partial<TempoOptions> = {}, window?: { seconds: number }) {
    this.pageCount = pageCount;
    this.o = { ...TEMPO_DEFAULTS, ...options };
    this.window = window;
    this.hits = new Float32Array(pageCount);
  }

  /** The front the predictor follows, if any (for tests and reports). */
  get front(): Readonly<Sweep> | null {
    return this.sweep;
  }

  observe(o: RoundObservation): void {
    const seconds = o.seconds !== undefined && o.seconds > 0 ? o.seconds : 1;
    const d = this.o.decay;
    const w = o.dirty.words;
    for (let p = 0; p < this.pageCount; p++)
      this.hits[p] = this.hits[p] * d + ((w[p >>> 5] >>> (p & 31)) & 1);
    this.rounds = this.rounds * d + 1;
    this.meanSeconds = this.meanSeconds * d + seconds;
    this.lastSeconds = seconds;
    this.followFront(w, seconds);
  }

  predict(out: Float32Array, horizon = 1): void {
    const windowSeconds =
      (this.window && this.window.seconds > 0 ? this.window.seconds : this.lastSeconds) * horizon;
    if (this.rounds === 0) {
      out.fill(0, 0, this.pageCount);
      return;
    }
    // Rate model: share f of (decayed) rounds dirty -> rate -ln(1 - f) per mean round -> P(write within window).
    const meanRound = this.meanSeconds / this.rounds;
    const k = windowSeconds / meanRound;
    for (let p = 0; p < this.pageCount; p++) {
      const f = Math.min(F_MAX, this.hits[p] / this.rounds);
      out[p] = f > 0 ? 1 - Math.pow(1 - f, k) : 0;
    }
    const s = this.sweep;
    if (!s) return;
    const len = s.hi - s.lo;
    if (s.front !== null && !s.confirmed) return;
    if (s.front === null) {
      // Every page of the region was written in the last round: at least `speed` pages/s. The rate model already
      // says at least as much; a longer window reaches every page.
      const q = 1 - Math.exp((-windowSeconds * s.speed) / len);
      for (let p = s.lo; p < s.hi; p++) if (out[p] < q) out[p] = q;
      return;
    }
    // The front: the pages it will reach within the window are written for sure, the others in the region not.
    const reach = Math.ceil(s.speed * windowSeconds * (1 + this.o.margin));
    for (let p = s.lo; p < s.hi; p++) out[p] = 0;
    if (s.wrapped)
      for (let i = 0; i < Math.min(len, reach); i++) out[s.lo + ((s.front - s.lo + i) % len)] = 1;
    else for (let p = s.front; p < Math.min(this.pageCount, s.front + reach); p++) out[p] = 1;
  }

  /** Finds or follows a moving front in the round's dirty pages (words of its bitmap). */
  private followFront(w: Uint32Array, seconds: number): void {
    const isDirty = (p: number): boolean => ((w[p >>> 5] >>> (p & 31)) & 1) === 1;
    const s = this.sweep;
    if (s) {
      // Not seen to wrap yet: a run going on from the front past hi grows the region.
      if (!s.wrapped && s.front !== null && s.front >= s.hi - 1) {
        let p = s.front;
        while (p < this.pageCount && isDirty(p)) p++;
        s.hi = Math.max(s.hi, p);
      }
      const len = s.hi - s.lo;
      const runs = cyclicRuns(isDirty, s.lo, s.hi);
      const dirty = runs.reduce((a, r) => a + r.length, 0);
      if (dirty === 0) {
        if (++s.idle >= 3) this.sweep = null;
        return;
      }
      s.idle = 0;
      if (dirty === len) {
        // The whole region in one round: the front goes around it (it is the whole region), somewhere unknown.
        s.front = null;
        s.confirmed = false;
        s.wrapped = true;
        s.speed = len / seconds;
        return;
      }
      const main = runs.reduce((a, r) => (r.length > a.length ? r : a));
      if (main.length >= dirty * 0.9) {
        // One run (small stray ones aside): the front moved through it to its end.
        const end = main.start + main.length;
        // It went on from hi at lo: within the run, or the last front was at hi and this run starts at lo.
        const slack = Math.max(8, Math.ceil(main.length * 0.02));
        if (end > s.hi || (s.front !== null && s.front >= s.hi - slack && main.start <= s.lo + slack))
          s.wrapped = true;
        s.confirmed = s.front !== null && near(main.start, s.front, s.lo, len, slack);
        s.front = s.wrapped ? s.lo + ((end - s.lo) % len) : end;
        s.speed = main.length / seconds;
        return;
      }
      this.sweep = null; // not a front (any more): look for one again below
    }
    // A new region: the longest dirty run, when long enough; its front is at its end until seen otherwise.
    const run = longestRun(isDirty, this.pageCount);
    if (run.length >= this.o.minRun)
      this.sweep = {
        lo: run.start,
        hi: run.start + run.length,
        front: run.start + run.length,
        speed: run.length / seconds,
        wrapped: false,
        confirmed: false,
        idle: 0,
      };
  }
}

/** Whether a run starting at `start` begins where the front was, within `slack` pages, in a region of `len`. */
function near(start: number, front: number, lo: number, len: number, slack: number): boolean {
  const ahead = (((start - front) % len) + len) % len;
  return ahead <= slack || len - ahead <= slack || Math.abs(start - front) <= slack;
}

/** The dirty runs of [lo, hi), a run that ends at hi and one that starts at lo joined (the region wraps). */
function cyclicRuns(
  isDirty: (p: number) => boolean,
  lo: number,
  hi: number,
): { start: number; length: number }[] {
  const runs: { start: number; length: number }[] = [];
  let start = -1;
  for (let p = lo; p < hi; p++) {
    if (isDirty(p)) {
      if (start < 0) start = p;
    } else if (start >= 0) {
      runs.push({ start, length: p - start });
      start = -1;
    }
  }
  if (start >= 0) runs.push({ start, length: hi - start });
  if (runs.length > 1 && runs[0].start === lo && runs.at(-1)!.start + runs.at(-1)!.length === hi) {
    const last = runs.pop()!;
    runs[0] = { start: last.start, length: last.length + runs[0].length };
  }
  return runs;
}

/** The longest run of dirty pages in [0, n). */
function longestRun(isDirty: (p: number) => boolean, n: number): { start: number; length: number } {
  let best = { start: 0, length: 0 };
  let start = -1;
  for (let p = 0; p <= n; p++) {
    if (p < n && isDirty(p)) {
      if (start < 0) start = p;
    } else if (start >= 0) {
      if (p - start > best.length) best = { start, length: p - start };
      start = -1;
    }
  }
  return best;
}
