/**
 * Trains the attention model (U2CMigration's phase 2) with tfjs on recorded and emulated traces, writes
 * models/attention.json, then evaluates attention, u2c and baselines on the held-out traces (docs/u2c.md).
 *
 *   npm run traces:u2c -- emulated && sudo npm run traces:u2c -- live     # the traces, once
 *   npm run train:attention                                              # train, write the model, evaluate
 *   npm run train:attention -- --eval                                    # evaluate the shipped model only
 *   npm run train:attention -- --epochs 30 --out /tmp/a.json
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { loadTrace, type Trace } from '../src/memory/trace.ts';
import {
  AttentionPredictor,
  DEFAULT_ATTENTION_MODEL,
  KEYS,
  LONG_ROUNDS,
  loadAttentionModel,
  longClass,
  STEP_INPUTS,
  validateAttentionModel,
  type AttentionModel,
} from '../src/predict/attention.ts';
import { DataShiftPredictor } from '../src/predict/datashift.ts';
import { emulatedSystemFeatures, SYSTEM_FEATURE_COUNT, SYSTEM_FEATURES } from '../src/predict/features.ts';
import { MarkovPredictor } from '../src/predict/markov.ts';
import type { Predictor } from '../src/predict/types.ts';
import { U2CPredictor } from '../src/predict/u2c.ts';
import { Bitmap } from '../src/util/bitmap.ts';
import { forwardLogits, initWeights, tf, tfReady, toModel, type Shape } from './attention-tf.ts';
import { sidecarPath, U2C_TRACES, type SystemSidecar } from './u2c-traces.ts';

const ROOT = new URL('../', import.meta.url).pathname;
const NPB = new URL('../test/data/npb-cg-B-dirty.json.gz', import.meta.url).pathname;

/** Training traces: emulated workloads and two live programs. */
export const TRAIN = [
  'emu-memchange-high-seq',
  'emu-memchange-low-seq',
  'emu-memchange-high-random',
  'emu-hotcold-1',
  'live-python',
  'live-sqlite',
].map((n) => `${U2C_TRACES}${n}.trace.gz`);

/** Held out: other emulated workloads, other live programs, redis (testbed), and the public npb-cg-B trace. */
export const HELD_OUT = [
  ...['emu-memchange-hotspot', 'emu-hotcold-1.5', 'live-gcc', 'live-xz'].map(
    (n) => `${U2C_TRACES}${n}.trace.gz`,
  ),
  `${ROOT}traces/redis-benchmark.trace.gz`,
  NPB,
];

const SHAPE: Shape = {
  m: 8,
  longEdges: [0, 1, 2, 3, 5, 9, 13, 21],
  d: 8,
  hidden: 16,
  horizons: [1, 2, 3, 4],
};

/** Extra weight of the pages phase 1 leaves to phase 2 (last two rounds differ). */
const UNSTABLE_WEIGHT = 2;

interface Loaded {
  name: string;
  trace: Trace;
  /** SYSTEM_FEATURES per sample. */
  system: Float32Array[];
  /** Whether the system features were sampled live (else emulated). */
  live: boolean;
}

export function shortName(path: string): string {
  return path
    .replace(/^.*\//, '')
    .replace(/(\.trace)?(\.gz)?$/, '')
    .replace(/\.json$/, '');
}

function dirtyCount(bytes: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < bytes.length; i++) for (let b = bytes[i]; b; b &= b - 1) n++;
  return n;
}

/** A trace with its per-sample system features: recorded ones from the sidecar, else emulated. */
export function loadWithSystem(path: string): Loaded {
  const trace = loadTrace(path);
  const side = sidecarPath(path);
  const seconds = trace.intervalMs / 1000;
  const system = trace.dirty.map((d) => emulatedSystemFeatures(dirtyCount(d), trace.pageCount, seconds));
  let live = false;
  if (side !== path && existsSync(side)) {
    const s = JSON.parse(readFileSync(side, 'utf8')) as SystemSidecar;
    if (s.features.join(',') !== SYSTEM_FEATURES.join(','))
      throw new Error(`${side}: features differ from SYSTEM_FEATURES; record the trace again`);
    // Aligned on the end; samples before the sidecar's first keep emulated host features.
    const off = trace.samples - s.samples.length;
    for (let i = Math.max(0, off); i < trace.samples; i++) {
      const v = system[i];
      const rec = s.samples[i - off];
      // dirty-share and dirty-rate (0 and 1) come from the trace; the host-wide ones from the sidecar.
      for (let f = 2; f < SYSTEM_FEATURE_COUNT; f++) v[f] = rec[f];
    }
    live = true;
  }
  return { name: shortName(path), trace, system, live };
}

/** The trace's samples as Bitmaps (Bitmap words are little-endian 32-bit views of the trace's bytes). */
export function bitmaps(t: Trace, which: 'dirty' | 'accessed'): Bitmap[] {
  const src = which === 'dirty' ? t.dirty : t.accessed;
  if (!src) return [];
  return src.map((bytes) => {
    const b = new Bitmap(t.pageCount);
    new Uint8Array(b.words.buffer).set(bytes.subarray(0, Math.min(bytes.length, b.words.byteLength)));
    return b;
  });
}

function bit(bytes: Uint8Array, p: number): number {
  return (bytes[p >>> 3] >>> (p & 7)) & 1;
}

/**
 * Training rows of one trace, grouped: pages of a round with the same history key share their inputs, so a row is
 * (round, key) with the share of its pages written within each horizon and its page count as the weight. Exact:
 * the loss over rows equals the loss over every page of every round.
 */
function rows(
  l: Loaded,
  s: Shape,
): {
  x: Float32Array;
  long: Int32Array;
  y: Float32Array;
  w: Float32Array;
  n: number;
  accessedDiffers: boolean;
} {
  const { trace: t, system } = l;
  const { m, horizons } = s;
  const K = horizons.length;
  const maxH = horizons[K - 1];
  const N = t.pageCount;
  const hist = new Uint16Array(N);
  const long = new Uint32Array(N);
  const dirtyCount = new Uint8Array(N);
  const classOf = Uint8Array.from({ length: LONG_ROUNDS + 1 }, (_, c) => longClass(s, c));
  const keyOf = new Uint32Array(N);
  const acc = t.accessed ?? t.dirty;
  const buckets = maxH + 1;
  const count = new Uint32Array(KEYS * buckets);
  const xs: number[] = [];
  const ls: number[] = [];
  const ys: number[] = [];
  const ws: number[] = [];
  const rounds = t.samples - maxH;
  for (let r = 0; r < t.samples; r++) {
    const d = t.dirty[r];
    const a = acc[r];
    for (let p = 0; p < N; p++) {
      const db = bit(d, p);
      hist[p] = ((hist[p] << 1) & 0xfefe) | db | ((bit(a, p) | db) << 8);
      dirtyCount[p] += db - (long[p] >>> 31);
      long[p] = (long[p] << 1) | db;
      keyOf[p] = hist[p] | (classOf[dirtyCount[p]] << 16);
    }
    if (r >= rounds) continue;
    count.fill(0);
    for (let p = 0; p < N; p++) {
      let dist = maxH;
      for (let j = 1; j <= maxH; j++) {
        if (bit(t.dirty[r + j], p)) {
          dist = j - 1;
          break;
        }
      }
      // Bucket j < maxH: first written j + 1 rounds later; bucket maxH: not written within maxH rounds.
      count[keyOf[p] * buckets + dist]++;
    }
    for (let key = 0; key < KEYS; key++) {
      let n = 0;
      for (let b = 0; b < buckets; b++) n += count[key * buckets + b];
      if (n === 0) continue;
      ls.push(key >>> 16);
      for (let st = 0; st < m; st++) {
        const age = m - 1 - st;
        const sample = r - age;
        if (sample < 0) {
          for (let i = 0; i < STEP_INPUTS; i++) xs.push(0);
          continue;
        }
        xs.push((key >> age) & 1, (key >> (8 + age)) & 1);
        for (let i = 0; i < SYSTEM_FEATURE_COUNT; i++) xs.push(system[sample][i]);
      }
      for (const h of horizons) {
        let pos = 0;
        for (let b = 0; b < h; b++) pos += count[key * buckets + b];
        ys.push(pos / n);
      }
      const unstable = r >= 1 && ((key ^ (key >> 1)) & 1) === 1;
      ws.push((n / (N * rounds)) * (unstable ? UNSTABLE_WEIGHT : 1));
    }
  }
  const accessedDiffers =
    t.accessed !== null && t.accessed.some((a, i) => !a.every((b, j) => b === t.dirty[i][j]));
  return {
    x: Float32Array.from(xs),
    long: Int32Array.from(ls),
    y: Float32Array.from(ys),
    w: Float32Array.from(ws),
    n: ws.length,
    accessedDiffers,
  };
}

async function train(paths: string[], epochs: number, seed: number): Promise<AttentionModel> {
  const backend = await tfReady();
  const s = SHAPE;
  const K = s.horizons.length;
  const parts = paths.map((p) => {
    const l = loadWithSystem(p);
    const r = rows(l, s);
    console.log(
      `  ${l.name}: ${l.trace.pageCount} pages x ${l.trace.samples} samples -> ${r.n} rows (system features ${l.live ? 'recorded' : 'emulated'})`,
    );
    return r;
  });
  const n = parts.reduce((a, r) => a + r.n, 0);
  const X = new Float32Array(n * s.m * STEP_INPUTS);
  const Lc = new Int32Array(n);
  const Y = new Float32Array(n * K);
  const W = new Float32Array(n);
  let at = 0;
  for (const r of parts) {
    X.set(r.x, at * s.m * STEP_INPUTS);
    Lc.set(r.long, at);
    Y.set(r.y, at * K);
    W.set(r.w, at);
    at += r.n;
  }
  // Weights average 1 over the rows.
  const wsum = W.reduce((a, b) => a + b, 0);
  for (let i = 0; i < n; i++) W[i] *= n / wsum;

  const w = initWeights(s, seed);
  const opt = tf.train.adam(0.01);
  const batch = 1024;
  let rng = seed >>> 0 || 1;
  const rand = () => (rng = (Math.imul(rng, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const order = Int32Array.from({ length: n }, (_, i) => i);
  const t0 = performance.now();
  let last = 0;
  for (let e = 0; e < epochs; e++) {
    // tfjs reads learningRate at every step; it is protected only in its typings.
    if (e === Math.floor(epochs * 0.7)) (opt as unknown as { learningRate: number }).learningRate = 0.003;
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    let sum = 0;
    for (let b = 0; b < n; b += batch) {
      const idx = order.subarray(b, Math.min(n, b + batch));
      const B = idx.length;
      const xb = new Float32Array(B * s.m * STEP_INPUTS);
      const yb = new Float32Array(B * K);
      const wb = new Float32Array(B);
      const lb = new Int32Array(B);
      idx.forEach((row, i) => {
        xb.set(X.subarray(row * s.m * STEP_INPUTS, (row + 1) * s.m * STEP_INPUTS), i * s.m * STEP_INPUTS);
        yb.set(Y.subarray(row * K, (row + 1) * K), i * K);
        wb[i] = W[row];
        lb[i] = Lc[row];
      });
      const loss = tf.tidy(() => {
        const x = tf.tensor3d(xb, [B, s.m, STEP_INPUTS]);
        const y = tf.tensor2d(yb, [B, K]);
        const wt = tf.tensor2d(wb, [B, 1]);
        const lt = tf.cast(tf.oneHot(tf.tensor1d(lb, 'int32'), s.longEdges.length), 'float32') as tf.Tensor2D;
        return opt.minimize(() => {
          const l = forwardLogits(w, x, lt, s);
          // Binary cross-entropy on logits, stable form: max(l, 0) - l y + log(1 + exp(-|l|)).
          const bce = tf.add(tf.sub(tf.relu(l), tf.mul(l, y)), tf.log1p(tf.exp(tf.neg(tf.abs(l)))));
          return tf.div(tf.sum(tf.mul(bce, wt)), B * K) as tf.Scalar;
        }, true)!;
      });
      sum += loss.dataSync()[0] * B;
      loss.dispose();
    }
    last = sum / n;
    if (e % 10 === 0 || e === epochs - 1)
      console.log(`  epoch ${e + 1}/${epochs}: weighted loss ${last.toFixed(5)}`);
  }
  // Accessed bits count as trained only when some training trace has accessed bits that differ from its dirty bits.
  const accessed = parts.some((r) => r.accessedDiffers);
  const model = toModel(w, s, accessed, {
    backend,
    traces: paths.map(shortName),
    rows: n,
    epochs,
    seed,
    batch,
    optimizer: 'adam 0.01, 0.003 after 70% of the epochs',
    unstableWeight: UNSTABLE_WEIGHT,
    finalLoss: Number(last.toFixed(5)),
    seconds: Math.round((performance.now() - t0) / 100) / 10,
  });
  for (const v of Object.values(w)) v.dispose();
  return validateAttentionModel(model, 'trained');
}

/** AUC (ties count half) from scores binned to 2^20 levels, and F1 at threshold 0.5. */
export class Metrics {
  private readonly pos = new Float64Array(1 << 20);
  private readonly neg = new Float64Array(1 << 20);
  tp = 0;
  fp = 0;
  fn = 0;
  n = 0;

  add(score: number, label: number): void {
    const b = Math.min((1 << 20) - 1, Math.max(0, Math.round(score * ((1 << 20) - 1))));
    if (label) this.pos[b]++;
    else this.neg[b]++;
    this.n++;
    const yes = score >= 0.5;
    if (yes && label) this.tp++;
    else if (yes) this.fp++;
    else if (label) this.fn++;
  }

  auc(): number {
    let below = 0;
    let sum = 0;
    let P = 0;
    for (let b = 0; b < this.pos.length; b++) {
      sum += this.pos[b] * (below + this.neg[b] / 2);
      below += this.neg[b];
      P += this.pos[b];
    }
    return P === 0 || below === 0 ? NaN : sum / (P * below);
  }

  f1(): number {
    const d = 2 * this.tp + this.fp + this.fn;
    return d === 0 ? NaN : (2 * this.tp) / d;
  }

  get positives(): number {
    return this.tp + this.fn;
  }
}

type Make = (pages: number) => Predictor;

/**
 * Replays a trace through a predictor: after each sample r (from the first on), predicts with the given horizon and
 * scores against "written within samples r+1..r+h". onlyUnstable restricts the scoring to the pages datashift
 * (defaults) calls unstable.
 */
export function evaluate(l: Loaded, make: Make, horizon: number, onlyUnstable = false): Metrics {
  const t = l.trace;
  const dirty = bitmaps(t, 'dirty');
  const accessed = t.accessed ? bitmaps(t, 'accessed') : null;
  const p = make(t.pageCount);
  const ds = onlyUnstable ? new DataShiftPredictor(t.pageCount) : null;
  const mask = new Uint8Array(t.pageCount);
  const out = new Float32Array(t.pageCount);
  const M = new Metrics();
  for (let r = 0; r + horizon < t.samples; r++) {
    const o = { round: r + 1, dirty: dirty[r], accessed: accessed?.[r], system: l.system[r] };
    p.observe(o);
    ds?.observe(o);
    p.predict(out, horizon);
    if (ds) ds.stable(mask);
    for (let q = 0; q < t.pageCount; q++) {
      if (ds && mask[q]) continue;
      let y = 0;
      for (let j = 1; j <= horizon && !y; j++) y = bit(t.dirty[r + j], q);
      M.add(out[q], y);
    }
  }
  return M;
}

/** "Written in the last sample": the trivial baseline. */
class LastRound implements Predictor {
  readonly name = 'last';
  readonly pageCount: number;
  private last: Bitmap | null = null;
  constructor(n: number) {
    this.pageCount = n;
  }
  observe(o: { dirty: Bitmap }): void {
    this.last = o.dirty;
  }
  predict(out: Float32Array): void {
    for (let p = 0; p < this.pageCount; p++) out[p] = this.last?.get(p) ? 1 : 0;
  }
}

/** The attention's AUC in each round on its own (horizon 1), and its mean score on dirty and clean pages. */
function perRoundAuc(model: AttentionModel, l: Loaded): void {
  const t = l.trace;
  const dirty = bitmaps(t, 'dirty');
  const p = new AttentionPredictor(t.pageCount, model);
  const out = new Float32Array(t.pageCount);
  console.log(`${l.name}: attention, horizon 1, each round on its own`);
  console.log('| after sample | dirty in it | AUC | mean score, dirty next | mean score, clean next |');
  console.log('|---:|---:|---:|---:|---:|');
  for (let r = 0; r + 1 < t.samples; r++) {
    p.observe({ round: r + 1, dirty: dirty[r], system: l.system[r] });
    p.predict(out, 1);
    const M = new Metrics();
    let sd = 0;
    let sc = 0;
    for (let q = 0; q < t.pageCount; q++) {
      const y = dirty[r + 1].get(q) ? 1 : 0;
      M.add(out[q], y);
      if (y) sd += out[q];
      else sc += out[q];
    }
    const nd = M.positives;
    console.log(
      `| ${r + 1} | ${dirty[r].count()} | ${fmt(M.auc())} | ${fmt(sd / nd)} | ${fmt(sc / (M.n - nd))} |`,
    );
  }
}

function fmt(x: number): string {
  return Number.isNaN(x) ? '–' : x.toFixed(3);
}

export function evaluateAll(model: AttentionModel, paths: string[], horizons: number[]): void {
  const makers: [string, Make][] = [
    ['last', (n) => new LastRound(n)],
    ['markov', (n) => new MarkovPredictor(n)],
    ['datashift', (n) => new DataShiftPredictor(n)],
    ['attention', (n) => new AttentionPredictor(n, model)],
    ['u2c', (n) => new U2CPredictor(n, model)],
    ['u2c:stable=held', (n) => new U2CPredictor(n, model, { stable: 'held' })],
  ];
  for (const h of horizons) {
    console.log(
      `\nhorizon ${h} (label: written within the next ${h} sample${h > 1 ? 's' : ''}); AUC / F1 at 0.5`,
    );
    console.log(
      `| trace | pages x rounds | dirty share | ${makers.map(([n]) => n).join(' | ')} | attention on unstable pages (share) |`,
    );
    console.log(`|---|---|---|${makers.map(() => '---').join('|')}|---|`);
    for (const path of paths) {
      const l = loadWithSystem(path);
      const cells = makers.map(([, make]) => evaluate(l, make, h));
      const base = cells[0];
      const un = evaluate(l, (n) => new AttentionPredictor(n, model), h, true);
      console.log(
        `| ${l.name} | ${l.trace.pageCount} x ${l.trace.samples - h} | ${(base.positives / base.n).toFixed(4)} | ${cells
          .map((c) => `${fmt(c.auc())} / ${fmt(c.f1())}`)
          .join(' | ')} | ${fmt(un.auc())} / ${fmt(un.f1())} (${(un.n / base.n).toFixed(3)}) |`,
      );
    }
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: {
      out: { type: 'string', default: DEFAULT_ATTENTION_MODEL },
      epochs: { type: 'string', default: '60' },
      seed: { type: 'string', default: '1' },
      eval: { type: 'boolean', default: false },
      'per-round': { type: 'string' },
    },
  });
  const epochs = Number(values.epochs);
  if (!(Number.isInteger(epochs) && epochs >= 1)) {
    console.error(`--epochs ${values.epochs} must be a whole number >= 1`);
    process.exit(2);
  }
  const missing = [...TRAIN, ...HELD_OUT].filter((p) => !existsSync(p));
  if (missing.length > 0) {
    console.error(
      `missing traces: ${missing.join(', ')}\nwrite them with npm run traces:u2c -- emulated and (root) npm run traces:u2c -- live`,
    );
    process.exit(2);
  }
  let model: AttentionModel;
  if (values.eval) model = loadAttentionModel(values.out);
  else {
    console.log(
      `training on ${TRAIN.length} traces (m ${SHAPE.m}, d ${SHAPE.d}, hidden ${SHAPE.hidden}, horizons ${SHAPE.horizons.join(',')})`,
    );
    model = await train(TRAIN, epochs, Number(values.seed));
    writeFileSync(values.out, JSON.stringify(model) + '\n');
    console.log(
      `wrote ${values.out} (${readFileSync(values.out).length} bytes, ${model.training?.seconds} s of training)`,
    );
  }
  const perRound = values['per-round'];
  if (perRound) {
    const path = [...TRAIN, ...HELD_OUT].find((p) => shortName(p) === perRound);
    if (!path) {
      console.error(
        `--per-round ${perRound}: no such trace; one of ${[...TRAIN, ...HELD_OUT].map(shortName).join(', ')}`,
      );
      process.exit(2);
    }
    perRoundAuc(model, loadWithSystem(path));
    process.exit(0);
  }
  console.log('\nheld-out traces');
  evaluateAll(model, HELD_OUT, [1, 3]);
  console.log('\ntraining traces');
  evaluateAll(model, TRAIN, [1, 3]);
}
