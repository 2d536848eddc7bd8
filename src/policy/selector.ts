import { Bitmap } from '../util/bitmap.ts';
import type { Predictor, RoundObservation } from '../predict/types.ts';
import type { PageSelector, SelectorEnv, SelectorRound } from './types.ts';

/**
 * How long the round being predicted is expected to last, in seconds. A predictor counts in rounds; an oracle
 * that looks at the workload's future in time reads this to know how far a round reaches.
 */
export interface RoundWindow {
  seconds: number;
}

/** Makes the predictor of one migration. */
export type PredictorFactory = (env: SelectorEnv, window: RoundWindow) => Predictor;

export interface SelectorOptions {
  /** Hold a pending page when its predicted probability of being dirtied within `horizon` rounds is >= this. */
  threshold: number;
  /** Rounds the hold prediction looks ahead (1 for MBDP's "dirtied again", k for U2C's "clean for k rounds"). */
  horizon: number;
  /** Rounds forecast for the stop decision (0: no forecast). */
  forecastRounds: number;
  /**
   * Hold pages only while the predictor has proven itself: of the pending pages it predicted dirty one round ahead
   * (the last time it predicted any), the share the round did dirty must be at least this. 0 trusts it at once.
   */
  trust: number;
  /**
   * When holding would leave fewer pages than this to send, hold nothing this round: everything left is predicted
   * to be dirtied again, and sending it anyway is the only way left to shrink what the stop must carry.
   */
  minPages: number;
  /** The predictor reads the round window (an oracle): predict again once the held pages shorten the round. */
  refineWindow?: boolean;
  /**
   * The most of the memory one round may send (0 or absent: no limit); the pages over it with the highest
   * probabilities wait for the next round. Short rounds let a predictor that learns from them see the workload
   * before most of memory has gone: a first round of all memory is sent blind.
   */
  roundShare?: number;
}

/**
 * Probability kept below 1 so that a rate can be derived from it: a page certain to be written within a round is
 * read as written about 4.6 times per round, so a round a tenth as long still dirties it with probability 0.37.
 */
const Q_MAX = 0.99;

/** Bounds of the calibration factor of the forecast (what the last round dirtied over what was forecast). */
const SCALE_MIN = 0.05;
const SCALE_MAX = 20;

/** Rounds a predictor must have seen before its forecast is checked against a round. */
const WARMUP = 2;

/**
 * The page selector of every predictive strategy: one predictor, a threshold on its probabilities, and a forecast
 * of the pending set for the stop decision. Only the predictor differs between markov, pr, mbdp, u2c and oracle.
 */
export class PredictingSelector implements PageSelector {
  private readonly predictor: Predictor;
  private readonly o: SelectorOptions;
  private readonly prob: Float32Array;
  /** Horizon-1 probabilities (the same array when the hold prediction is for one round). */
  private readonly prob1: Float32Array;
  private readonly held: Bitmap;
  private readonly window: RoundWindow;
  private readonly linkGuess: number;
  /**
   * Pending pages predicted dirty one round ahead before the round now running (held or not: the ones a hold is
   * about), to check against what the round dirties.
   */
  private readonly predicted: Bitmap;
  /** Of the pages predicted dirty before the last round that had any, the share it dirtied (null: none yet). */
  precision: number | null = null;
  /** Whether the last hold() released its holds (see SelectorOptions.minPages). */
  released = false;
  /**
   * Calibration of the forecast: pages the recent rounds dirtied outside the held ones, over the number the
   * uncalibrated forecast expected. Per-page probabilities need not be calibrated; their sum over a round is
   * checked against every round.
   */
  scale = 1;
  /** Whether a forecast has been checked against a round yet: until then there is no forecast. */
  calibrated = false;
  /** The uncalibrated number of pages the forecast expects the round now running to dirty outside the held. */
  private expected = 0;
  /** Pages dirtied outside the held ones, and as many forecast, over the checked rounds (halved each round). */
  private dirtied = 0;
  private forecastDirty = 0;
  /** Whether the predictor was trusted when the round now running was planned. */
  private trustedNow = false;
  private observed = 0;

  constructor(env: SelectorEnv, factory: PredictorFactory, options: SelectorOptions) {
    this.o = options;
    this.window = { seconds: 0 };
    this.predictor = factory(env, this.window);
    this.prob = new Float32Array(env.pageCount);
    this.prob1 = options.horizon === 1 ? this.prob : new Float32Array(env.pageCount);
    this.held = new Bitmap(env.pageCount);
    this.linkGuess = env.lookahead?.rate ?? 0;
    this.predicted = new Bitmap(env.pageCount);
  }

  observe(o: RoundObservation): void {
    if (this.expected > 0) {
      const dirtied = o.dirty.clone().andNot(this.held).count();
      // Pooled over the recent rounds, weighted by their size: a short round that expected a handful of pages
      // must not swing the forecast of the long one after it.
      this.dirtied = this.dirtied / 2 + dirtied;
      this.forecastDirty = this.forecastDirty / 2 + this.expected;
      this.scale = Math.min(SCALE_MAX, Math.max(SCALE_MIN, this.dirtied / this.forecastDirty));
      this.calibrated = true;
    }
    this.expected = 0;
    const said = this.predicted.count();
    if (said > 0) this.precision = this.predicted.and(o.dirty).count() / said;
    this.predicted.clearAll();
    this.predictor.observe(o);
    this.observed++;
  }

  /** Whether holds are honoured now (see SelectorOptions.trust). */
  get trusted(): boolean {
    return this.o.trust === 0 || (this.precision !== null && this.precision >= this.o.trust);
  }

  hold(pending: Bitmap, r: SelectorRound): Bitmap {
    const rate = r.linkRate > 0 ? r.linkRate : this.linkGuess;
    const perPage = rate > 0 ? r.pageSize / rate : 0;
    const count = pending.count();
    const budget = this.o.roundShare
      ? Math.max(this.o.minPages, Math.ceil(this.prob.length * this.o.roundShare))
      : Infinity;
    // The coming round lasts as long as sending what is not held. An oracle reads the round's length: find the
    // length w at which the pages it then holds leave exactly w of sending (holding more shortens the round, which
    // makes it hold less), by bisection.
    this.window.seconds = Math.min(count, budget) * perPage;
    this.predictor.predict(this.prob, this.o.horizon);
    holdAbove(this.prob, pending, this.o.threshold, this.held);
    if (this.o.refineWindow && this.window.seconds > 0 && !this.held.isEmpty()) {
      let lo = 0;
      let hi = this.window.seconds;
      for (let i = 0; i < 16 && hi - lo > 1e-3; i++) {
        this.window.seconds = (lo + hi) / 2;
        this.predictor.predict(this.prob, this.o.horizon);
        const sending =
          Math.min(budget, count - holdAbove(this.prob, pending, this.o.threshold, this.held).count()) *
          perPage;
        if (sending > this.window.seconds) lo = this.window.seconds;
        else hi = this.window.seconds;
      }
      this.window.seconds = hi;
      this.predictor.predict(this.prob, this.o.horizon);
      holdAbove(this.prob, pending, this.o.threshold, this.held);
    }
    if (this.prob1 !== this.prob) this.predictor.predict(this.prob1, 1);
    holdAbove(this.prob1, pending, this.o.threshold, this.predicted);
    this.released = false;
    this.trustedNow = this.trusted;
    if (!this.trustedNow) this.held.clearAll();
    else if (count - this.held.count() < this.o.minPages && !this.held.isEmpty()) {
      this.held.clearAll();
      this.released = true;
    }
    if (count - this.held.count() > budget) {
      // Which pages go in a round too short for all: ranked by how long each is predicted to stay clean.
      const cleanFor = new Uint8Array(this.prob.length);
      const long = new Float32Array(this.prob.length);
      for (const h of RANK_HORIZONS) {
        this.predictor.predict(long, this.o.horizon * h);
        for (let p = 0; p < long.length; p++) if (long[p] < this.o.threshold) cleanFor[p]++;
      }
      holdOverBudget(cleanFor, pending, this.held, budget);
    }
    return this.held;
  }

  forecast(pending: Bitmap, held: Bitmap, r: SelectorRound): number[] | undefined {
    // An oracle's probabilities are for the window it was asked about; a predictor's for rounds like the last.
    const roundSeconds = this.o.refineWindow ? this.window.seconds : r.lastDuration;
    if (this.o.forecastRounds === 0 || this.observed === 0 || !(r.linkRate > 0) || !(roundSeconds > 0))
      return undefined;
    const args = [this.prob1, held, pending.count(), roundSeconds, r.pageSize / r.linkRate] as const;
    // Checked against every round once the predictor has seen two (its first predictions are priors).
    if (this.observed >= WARMUP) this.expected = forecastPending(...args, 1)[0] - held.count();
    return this.calibrated ? forecastPending(...args, this.o.forecastRounds, this.scale) : undefined;
  }
}

/** Horizons, in rounds like the one about to start, at which the pages over a round's budget are ranked. */
const RANK_HORIZONS = [2, 4, 8, 16, 32];

/**
 * Adds to `held` the pending pages beyond the `budget` that will be written soonest: a page's rank is the number of
 * RANK_HORIZONS within which it is still predicted clean (`cleanFor`), the highest ranks go first, then the lowest
 * addresses. What is never written again goes before what will be, what will be written late before what soon.
 */
export function holdOverBudget(cleanFor: Uint8Array, pending: Bitmap, held: Bitmap, budget: number): void {
  const free = pending.clone().andNot(held);
  const top = RANK_HORIZONS.length;
  const ranks = new Uint32Array(top + 1);
  free.forEach((p) => ranks[cleanFor[p]]++);
  // The rank where the budget runs out, and how many of its pages (lowest addresses first) still go.
  let left = budget;
  let last = top;
  while (last >= 0 && ranks[last] <= left) left -= ranks[last--];
  free.forEach((p) => {
    const r = cleanFor[p];
    if (r > last) return;
    if (r === last && left > 0) left--;
    else held.set(p);
  });
}

/** out = the pages of pending whose probability is >= threshold. */
export function holdAbove(prob: Float32Array, pending: Bitmap, threshold: number, out: Bitmap): Bitmap {
  const pw = pending.words;
  const ow = out.words;
  for (let w = 0; w < pw.length; w++) {
    let x = pw[w];
    let m = 0;
    const base = w << 5;
    while (x !== 0) {
      const low = x & -x;
      if (prob[base + 31 - Math.clz32(low)] >= threshold) m |= low;
      x ^= low;
    }
    ow[w] = m;
  }
  return out;
}

/**
 * Pending pages at the start of each of the next `rounds` rounds if the migration goes on holding `held`.
 * A page's probability q of being written within one round, learned over rounds of about `roundSeconds`, is
 * read as a write rate -ln(1-q)/roundSeconds; a round lasts as long as sending what is not held takes
 * (`secondsPerPage` each); the pages written during it (times `scale`, the calibration) join the held ones.
 */
export function forecastPending(
  prob: Float32Array,
  held: Bitmap,
  pending: number,
  roundSeconds: number,
  secondsPerPage: number,
  rounds: number,
  scale = 1,
): number[] {
  const heldCount = held.count();
  const rates: number[] = [];
  for (let p = 0; p < prob.length; p++) {
    const q = prob[p];
    if (q > 0 && !held.get(p)) rates.push(-Math.log1p(-Math.min(q, Q_MAX)) / roundSeconds);
  }
  const out: number[] = [];
  let send = pending - heldCount;
  for (let h = 0; h < rounds; h++) {
    const t = send * secondsPerPage;
    let dirty = 0;
    for (const lambda of rates) dirty += 1 - Math.exp(-lambda * t);
    dirty = Math.min(prob.length - heldCount, dirty * scale);
    out.push(heldCount + dirty);
    send = dirty;
  }
  return out;
}
