import { Prng } from '../util/prng.ts';
import { FOREST_FORMAT, type ForestModel, type HorizonForest, type TreeJson } from './forest.ts';
import { featureCount, featureWords, LocalityWindow, WINDOW_DEFAULTS, type WindowSpec } from './window.ts';

/** Per-page dirty bitmaps of one recorded or emulated run, as Bitmap words (bit p of word p>>5 is page p). */
export interface TrainingTrace {
  name: string;
  pageCount: number;
  samples: Uint32Array[];
}

export interface TrainOptions {
  window: WindowSpec;
  /** Horizons to train a forest for (rounds). */
  horizons: number[];
  trees: number;
  depth: number;
  /** Minimum weight (in rows) on each side of a split. */
  minLeaf: number;
  /** Features tried per split; 0 = ceil(sqrt(features)). */
  mtry: number;
  seed: number;
}

export const TRAIN_DEFAULTS: TrainOptions = {
  window: WINDOW_DEFAULTS,
  horizons: [1, 2, 3],
  trees: 16,
  depth: 8,
  minLeaf: 200,
  mtry: 0,
  seed: 1,
};

/**
 * Training rows, one per distinct (trace, feature words): features are bits, so the millions of (page, round) rows of
 * a trace collapse to the distinct windows with how often each was followed by a dirty round (pos) or not (neg).
 */
interface Rows {
  count: number;
  words: number;
  /** count x words feature words. */
  key: Uint32Array;
  trace: Uint32Array;
  /** Per horizon: rows followed by a dirty round within the horizon, and the others. */
  pos: Float64Array[];
  neg: Float64Array[];
}

/** Open-addressing table from feature words to per-horizon counts. */
class WordCounts {
  private cap = 1 << 12;
  size = 0;
  private readonly W: number;
  private readonly H: number;
  keys: Uint32Array;
  used: Uint8Array;
  counts: Float64Array;

  constructor(words: number, horizons: number) {
    this.W = words;
    this.H = horizons;
    this.keys = new Uint32Array(this.cap * words);
    this.used = new Uint8Array(this.cap);
    this.counts = new Float64Array(this.cap * 2 * horizons);
  }

  /** Slot of the key at words[at..at+W), inserted when new. */
  slot(words: Uint32Array, at: number): number {
    if (this.size * 2 >= this.cap) this.grow();
    const W = this.W;
    const lo = words[at];
    const hi = W === 2 ? words[at + 1] : 0;
    const mask = this.cap - 1;
    let s = (Math.imul(lo ^ Math.imul(hi, 0x9e3779b1), 0x85ebca6b) >>> 0) & mask;
    for (;;) {
      if (!this.used[s]) {
        this.used[s] = 1;
        this.keys[s * W] = lo;
        if (W === 2) this.keys[s * W + 1] = hi;
        this.size++;
        return s;
      }
      if (this.keys[s * W] === lo && (W === 1 || this.keys[s * W + 1] === hi)) return s;
      s = (s + 1) & mask;
    }
  }

  private grow(): void {
    const { keys, used, counts } = this;
    const old = this.cap;
    const W = this.W;
    const C = 2 * this.H;
    this.cap *= 2;
    this.keys = new Uint32Array(this.cap * W);
    this.used = new Uint8Array(this.cap);
    this.counts = new Float64Array(this.cap * C);
    this.size = 0;
    for (let s = 0; s < old; s++) {
      if (!used[s]) continue;
      const t = this.slot(keys, s * W);
      for (let c = 0; c < C; c++) this.counts[t * C + c] = counts[s * C + c];
    }
  }

  *entries(): Generator<number> {
    for (let s = 0; s < this.cap; s++) if (this.used[s]) yield s;
  }
}

/**
 * Replays each trace through the locality window: after observing sample t, every page's features are a row whose
 * label for horizon h is "dirty in one of samples t+1..t+h". Rows are counted per distinct feature words.
 */
export function buildRows(traces: TrainingTrace[], window: WindowSpec, horizons: number[]): Rows {
  const W = featureWords(window);
  const H = horizons.length;
  const parts: { table: WordCounts; trace: number }[] = [];
  traces.forEach((tr, ti) => {
    const table = new WordCounts(W, H);
    const win = new LocalityWindow(tr.pageCount, window);
    const feats = new Uint32Array(tr.pageCount * W);
    const future = new Uint32Array(tr.samples[0].length);
    const slots = new Uint32Array(tr.pageCount);
    for (let t = 0; t + 1 < tr.samples.length; t++) {
      win.observe(tr.samples[t]);
      win.features(feats);
      for (let p = 0; p < tr.pageCount; p++) slots[p] = table.slot(feats, p * W);
      const C = 2 * H;
      for (let hi = 0; hi < H; hi++) {
        const h = horizons[hi];
        if (t + h >= tr.samples.length) continue;
        future.fill(0);
        for (let k = 1; k <= h; k++) {
          const s = tr.samples[t + k];
          for (let i = 0; i < future.length; i++) future[i] |= s[i];
        }
        const counts = table.counts;
        for (let p = 0; p < tr.pageCount; p++) {
          const dirty = (future[p >>> 5] >>> (p & 31)) & 1;
          counts[slots[p] * C + 2 * hi + (dirty ? 0 : 1)]++;
        }
      }
    }
    parts.push({ table, trace: ti });
  });
  const count = parts.reduce((a, p) => a + p.table.size, 0);
  const rows: Rows = {
    count,
    words: W,
    key: new Uint32Array(count * W),
    trace: new Uint32Array(count),
    pos: horizons.map(() => new Float64Array(count)),
    neg: horizons.map(() => new Float64Array(count)),
  };
  let r = 0;
  for (const { table, trace } of parts) {
    const C = 2 * H;
    for (const s of table.entries()) {
      for (let j = 0; j < W; j++) rows.key[r * W + j] = table.keys[s * W + j];
      rows.trace[r] = trace;
      for (let hi = 0; hi < H; hi++) {
        rows.pos[hi][r] = table.counts[s * C + 2 * hi];
        rows.neg[hi][r] = table.counts[s * C + 2 * hi + 1];
      }
      r++;
    }
  }
  return rows;
}

/** Poisson(mean) draw: exact for small means, normal approximation above 30. */
function poisson(mean: number, prng: Prng): number {
  if (mean <= 0) return 0;
  if (mean < 30) {
    const limit = Math.exp(-mean);
    let k = 0;
    let prod = prng.next();
    while (prod > limit) {
      k++;
      prod *= prng.next();
    }
    return k;
  }
  // Box-Muller.
  const u = 1 - prng.next();
  const v = prng.next();
  const z = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  return Math.max(0, Math.round(mean + Math.sqrt(mean) * z));
}

/** Σ weight x impurity (Gini) of a node holding weights P (dirty) and N (clean). */
function impurity(P: number, N: number): number {
  const T = P + N;
  return T > 0 ? T - (P * P + N * N) / T : 0;
}

interface GrowContext {
  rows: Rows;
  wp: Float64Array;
  wn: Float64Array;
  F: number;
  mtry: number;
  depth: number;
  minLeaf: number;
  prng: Prng;
  tree: TreeJson;
  featurePool: Int32Array;
  p1: Float64Array;
  n1: Float64Array;
}

function rowBit(rows: Rows, r: number, f: number): number {
  return (rows.key[r * rows.words + (f >>> 5)] >>> (f & 31)) & 1;
}

/** Grows the subtree over idx[from..to) at the given depth, appending its nodes to the tree in preorder. */
function grow(c: GrowContext, idx: Uint32Array, from: number, to: number, depth: number): void {
  const { wp, wn, tree } = c;
  let P = 0;
  let N = 0;
  for (let k = from; k < to; k++) {
    P += wp[idx[k]];
    N += wn[idx[k]];
  }
  const node = tree.f.length;
  const leaf = (): void => {
    tree.f.push(-1);
    tree.r.push(0);
    tree.v.push(P + N > 0 ? Math.round((P / (P + N)) * 1e4) / 1e4 : 0);
  };
  if (depth >= c.depth || P === 0 || N === 0 || P + N < 2 * c.minLeaf || to - from < 2) return leaf();
  // Candidate features: a random subset of mtry (partial Fisher-Yates over the pool).
  const pool = c.featurePool;
  const m = Math.min(c.mtry, c.F);
  for (let j = 0; j < m; j++) {
    const k = j + c.prng.int(c.F - j);
    const t = pool[j];
    pool[j] = pool[k];
    pool[k] = t;
  }
  c.p1.fill(0, 0, m);
  c.n1.fill(0, 0, m);
  for (let k = from; k < to; k++) {
    const r = idx[k];
    const a = wp[r];
    const b = wn[r];
    for (let j = 0; j < m; j++) {
      if (rowBit(c.rows, r, pool[j])) {
        c.p1[j] += a;
        c.n1[j] += b;
      }
    }
  }
  const parent = impurity(P, N);
  let best = -1;
  let bestGain = 1e-9 * (P + N);
  for (let j = 0; j < m; j++) {
    const P1 = c.p1[j];
    const N1 = c.n1[j];
    const P0 = P - P1;
    const N0 = N - N1;
    if (P1 + N1 < c.minLeaf || P0 + N0 < c.minLeaf) continue;
    const gain = parent - impurity(P0, N0) - impurity(P1, N1);
    if (gain > bestGain) {
      bestGain = gain;
      best = pool[j];
    }
  }
  if (best < 0) return leaf();
  // Partition: bit-0 rows first.
  let i = from;
  let j = to - 1;
  while (i <= j) {
    if (rowBit(c.rows, idx[i], best) === 0) i++;
    else {
      const t = idx[i];
      idx[i] = idx[j];
      idx[j] = t;
      j--;
    }
  }
  tree.f.push(best);
  tree.r.push(0);
  tree.v.push(0);
  grow(c, idx, from, i, depth + 1);
  tree.r[node] = tree.f.length;
  grow(c, idx, i, to, depth + 1);
}

export interface TrainReport {
  model: ForestModel;
  rows: number;
  /** (page, round) pairs per horizon, and the share of them followed by a dirty round. */
  pairs: number[];
  positiveShare: number[];
  nodes: number;
}

/**
 * Trains one forest per horizon on the traces: bagging by Poisson(1) resampling of every (page, round) pair (drawn
 * per distinct row as Poisson(count)), each trace weighted to the same total so that a large trace does not drown
 * the others, Gini splits on ceil(sqrt(F)) random feature bits per node.
 */
export function trainForest(traces: TrainingTrace[], options: Partial<TrainOptions> = {}): TrainReport {
  const o: TrainOptions = { ...TRAIN_DEFAULTS, ...options };
  if (traces.length === 0) throw new RangeError('no training traces');
  const rows = buildRows(traces, o.window, o.horizons);
  const F = featureCount(o.window);
  const mtry = o.mtry > 0 ? o.mtry : Math.ceil(Math.sqrt(F));
  const prng = new Prng(o.seed);
  const forests: HorizonForest[] = [];
  const pairs: number[] = [];
  const positiveShare: number[] = [];
  let nodes = 0;
  o.horizons.forEach((h, hi) => {
    const pos = rows.pos[hi];
    const neg = rows.neg[hi];
    // Trace weights: every trace's pairs sum to the mean pairs per trace.
    const perTrace = new Float64Array(traces.length);
    for (let r = 0; r < rows.count; r++) perTrace[rows.trace[r]] += pos[r] + neg[r];
    const total = perTrace.reduce((a, b) => a + b, 0);
    const used = perTrace.filter((x) => x > 0).length;
    const weight = Array.from(perTrace, (x) => (x > 0 ? total / used / x : 0));
    let P = 0;
    for (let r = 0; r < rows.count; r++) P += pos[r];
    pairs.push(total);
    positiveShare.push(total > 0 ? P / total : 0);
    const trees: TreeJson[] = [];
    const wp = new Float64Array(rows.count);
    const wn = new Float64Array(rows.count);
    const idx = new Uint32Array(rows.count);
    for (let t = 0; t < o.trees; t++) {
      let n = 0;
      for (let r = 0; r < rows.count; r++) {
        const w = weight[rows.trace[r]];
        wp[r] = poisson(pos[r], prng) * w;
        wn[r] = poisson(neg[r], prng) * w;
        if (wp[r] + wn[r] > 0) idx[n++] = r;
      }
      const tree: TreeJson = { f: [], r: [], v: [] };
      grow(
        {
          rows,
          wp,
          wn,
          F,
          mtry,
          depth: o.depth,
          minLeaf: o.minLeaf,
          prng,
          tree,
          featurePool: Int32Array.from({ length: F }, (_, i) => i),
          p1: new Float64Array(F),
          n1: new Float64Array(F),
        },
        idx,
        0,
        n,
        0,
      );
      nodes += tree.f.length;
      trees.push(tree);
    }
    forests.push({ horizon: h, trees });
  });
  const model: ForestModel = {
    format: FOREST_FORMAT,
    window: o.window,
    forests,
    training: {
      traces: traces.map((t) => t.name),
      trees: o.trees,
      depth: o.depth,
      minLeaf: o.minLeaf,
      mtry,
      seed: o.seed,
      distinctRows: rows.count,
      pairs,
      positiveShare: positiveShare.map((x) => Math.round(x * 1e4) / 1e4),
    },
  };
  return { model, rows: rows.count, pairs, positiveShare, nodes };
}
