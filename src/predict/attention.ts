import { readFileSync } from 'node:fs';
import { InputError } from '../util/errors.ts';
import { emulatedSystemFeatures, SYSTEM_FEATURE_COUNT, SYSTEM_FEATURES } from './features.ts';
import type { Predictor, RoundObservation } from './types.ts';

export const ATTENTION_FORMAT = 'precog-attention/1';

/** The model shipped with precog (scripts/train-attention.ts writes it). */
export const DEFAULT_ATTENTION_MODEL = new URL('../../models/attention.json', import.meta.url).pathname;

/** Inputs per history step: the page's dirty bit, its accessed bit, then the round's system features. */
export const STEP_INPUTS = 2 + SYSTEM_FEATURE_COUNT;

/** Rounds of the page's longer history summarised by its long-term class. */
export const LONG_ROUNDS = 32;

/**
 * A trained single-head attention model (JSON; docs/u2c.md). Over the last m rounds of one page, oldest first:
 *   x_t = [dirty_t, accessed_t, system_t]                    (STEP_INPUTS)
 *   h_t = tanh(x_t We + be + pos_t)                           (d)
 *   q = h_{m-1} Wq,  k_t = h_t Wk,  v_t = h_t Wv,  a = softmax_t(q . k_t / sqrt(d))
 *   c = sum_t a_t v_t
 *   z = relu([c, h_{m-1}, onehot(long)] W1 + b1)              (hidden)
 *   y = sigmoid(z W2 + b2)                                    (one output per entry of horizons)
 * y_j is the probability that the page is written within the next horizons[j] rounds. long is the page's long-term
 * class: how many of the last LONG_ROUNDS rounds wrote it, binned by longEdges (the attention window alone forgets a
 * page rewritten every 10 rounds; the Markov chain's counts do not). Matrices are row-major, input-major (x W),
 * flattened.
 */
export interface AttentionModel {
  format: typeof ATTENTION_FORMAT;
  /** History steps (1..8). */
  m: number;
  /** Lower edges of the long-term classes over 0..LONG_ROUNDS dirty rounds: starts at 0, increasing, 1..8 classes. */
  longEdges: number[];
  d: number;
  hidden: number;
  horizons: number[];
  /**
   * Whether training saw accessed bits that differ from the dirty bits. When false the accessed input only ever
   * equalled the dirty one, and the predictor feeds it the dirty bits whatever the source reports.
   */
  accessed: boolean;
  /** SYSTEM_FEATURES at training time; must equal the current list. */
  features: string[];
  weights: AttentionWeights;
  /** How it was trained, for the record. */
  training?: Record<string, unknown>;
}

export interface AttentionWeights {
  We: number[];
  be: number[];
  pos: number[];
  Wq: number[];
  Wk: number[];
  Wv: number[];
  W1: number[];
  b1: number[];
  W2: number[];
  b2: number[];
}

/** Shapes of the weights as [rows, cols]. */
export function weightShapes(
  m: number,
  d: number,
  hidden: number,
  outputs: number,
  longClasses: number,
): Record<keyof AttentionWeights, [number, number]> {
  return {
    We: [STEP_INPUTS, d],
    be: [1, d],
    pos: [m, d],
    Wq: [d, d],
    Wk: [d, d],
    Wv: [d, d],
    W1: [2 * d + longClasses, hidden],
    b1: [1, hidden],
    W2: [hidden, outputs],
    b2: [1, outputs],
  };
}

/** Checks a parsed model file; throws InputError naming what is wrong. */
export function validateAttentionModel(obj: unknown, source: string): AttentionModel {
  const fail = (why: string): never => {
    throw new InputError(
      `attention model ${source}: ${why} (see docs/u2c.md; npm run train:attention writes one)`,
    );
  };
  if (!obj || typeof obj !== 'object') fail('not a JSON object');
  const a = obj as Partial<AttentionModel>;
  if (a.format !== ATTENTION_FORMAT)
    fail(`format is ${JSON.stringify(a.format)}, expected "${ATTENTION_FORMAT}"`);
  const whole = (v: unknown, lo: number, hi: number): boolean =>
    typeof v === 'number' && Number.isInteger(v) && v >= lo && v <= hi;
  if (!whole(a.m, 1, 8)) fail(`m = ${a.m} must be a whole number of rounds 1..8`);
  if (!whole(a.d, 1, 64)) fail(`d = ${a.d} must be a whole number 1..64`);
  if (!whole(a.hidden, 1, 256)) fail(`hidden = ${a.hidden} must be a whole number 1..256`);
  const e = a.longEdges;
  if (
    !Array.isArray(e) ||
    e.length < 1 ||
    e.length > 8 ||
    e[0] !== 0 ||
    !e.every((x, i) => whole(x, 0, LONG_ROUNDS) && (i === 0 || x > e[i - 1]))
  )
    fail(`longEdges must be 1..8 increasing whole numbers from 0 to ${LONG_ROUNDS}, starting at 0`);
  if (
    !Array.isArray(a.horizons) ||
    a.horizons.length === 0 ||
    !a.horizons.every((h, i) => whole(h, 1, 64) && (i === 0 || h > a.horizons![i - 1]))
  )
    fail('horizons must be increasing whole numbers of rounds >= 1');
  if (typeof a.accessed !== 'boolean')
    fail('accessed (whether training saw accessed bits) must be true or false');
  if (!Array.isArray(a.features) || a.features.join(',') !== SYSTEM_FEATURES.join(','))
    fail(
      `features ${JSON.stringify(a.features)} differ from this precog's system features (${SYSTEM_FEATURES.join(', ')}): retrain the model`,
    );
  if (!a.weights || typeof a.weights !== 'object') fail('weights are missing');
  const shapes = weightShapes(a.m!, a.d!, a.hidden!, a.horizons!.length, a.longEdges!.length);
  for (const [name, [r, c]] of Object.entries(shapes)) {
    const w = (a.weights as unknown as Record<string, unknown>)[name];
    if (!Array.isArray(w) || w.length !== r * c)
      fail(`weights.${name} must be ${r} x ${c} = ${r * c} numbers`);
    if (!(w as unknown[]).every((x) => typeof x === 'number' && Number.isFinite(x)))
      fail(`weights.${name} holds a value that is not a finite number`);
  }
  return a as AttentionModel;
}

const loaded = new Map<string, AttentionModel>();

/** Reads and checks a model file (cached per path). */
export function loadAttentionModel(path: string = DEFAULT_ATTENTION_MODEL): AttentionModel {
  const hit = loaded.get(path);
  if (hit) return hit;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new InputError(
      `cannot read attention model ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}; train one with npm run train:attention`,
    );
  }
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    throw new InputError(`attention model ${path} is not valid JSON: ${(e as Error).message}`);
  }
  const model = validateAttentionModel(obj, path);
  loaded.set(path, model);
  return model;
}

/** The weights as Float64Arrays, and the sizes. */
class Net {
  readonly m: number;
  readonly d: number;
  readonly H: number;
  readonly K: number;
  /** Long-term classes. */
  readonly L: number;
  readonly w: Record<keyof AttentionWeights, Float64Array>;

  constructor(model: AttentionModel) {
    this.m = model.m;
    this.d = model.d;
    this.H = model.hidden;
    this.K = model.horizons.length;
    this.L = model.longEdges.length;
    this.w = Object.fromEntries(
      Object.entries(model.weights).map(([k, v]) => [k, Float64Array.from(v as number[])]),
    ) as Record<keyof AttentionWeights, Float64Array>;
  }

  /** h = tanh(x We + be + pos_t) for one step. */
  embed(x: ArrayLike<number>, t: number, h: Float64Array): void {
    const { d } = this;
    const { We, be, pos } = this.w;
    for (let j = 0; j < d; j++) {
      let s = be[j] + pos[t * d + j];
      for (let i = 0; i < STEP_INPUTS; i++) s += x[i] * We[i * d + j];
      h[j] = Math.tanh(s);
    }
  }
}

/** y = x W for a 1 x r vector and an r x c matrix, into out (c). */
function vecMat(
  x: ArrayLike<number>,
  W: Float64Array,
  r: number,
  c: number,
  out: Float64Array,
  at = 0,
): void {
  for (let j = 0; j < c; j++) {
    let s = 0;
    for (let i = 0; i < r; i++) s += x[i] * W[i * c + j];
    out[at + j] = s;
  }
}

function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

/** The long-term class of a page written in `count` of the last LONG_ROUNDS rounds. */
export function longClass(model: Pick<AttentionModel, 'longEdges'>, count: number): number {
  const e = model.longEdges;
  let c = 0;
  while (c + 1 < e.length && count >= e[c + 1]) c++;
  return c;
}

/**
 * The model's forward pass for one page, written out step by step as in the model's definition (no tables, no
 * grouping): the reference the fast path and tfjs are tested against. steps is m x STEP_INPUTS, oldest step first;
 * long is the page's long-term class. Returns one probability per model horizon.
 */
export function attentionForward(
  model: AttentionModel,
  steps: ArrayLike<number>,
  long: number,
): Float64Array {
  const net = new Net(model);
  const { m, d, H, K, L, w } = net;
  if (steps.length !== m * STEP_INPUTS)
    throw new RangeError(`expected ${m} x ${STEP_INPUTS} inputs, got ${steps.length}`);
  if (!(Number.isInteger(long) && long >= 0 && long < L))
    throw new RangeError(`long-term class ${long} is not 0..${L - 1}`);
  const h = Array.from({ length: m }, () => new Float64Array(d));
  const x = new Float64Array(STEP_INPUTS);
  for (let t = 0; t < m; t++) {
    for (let i = 0; i < STEP_INPUTS; i++) x[i] = steps[t * STEP_INPUTS + i];
    net.embed(x, t, h[t]);
  }
  const q = new Float64Array(d);
  vecMat(h[m - 1], w.Wq, d, d, q);
  const k = new Float64Array(d);
  const v = Array.from({ length: m }, () => new Float64Array(d));
  const score = new Float64Array(m);
  const scale = 1 / Math.sqrt(d);
  for (let t = 0; t < m; t++) {
    vecMat(h[t], w.Wk, d, d, k);
    vecMat(h[t], w.Wv, d, d, v[t]);
    let s = 0;
    for (let j = 0; j < d; j++) s += q[j] * k[j];
    score[t] = s * scale;
  }
  const max = Math.max(...score);
  let sum = 0;
  for (let t = 0; t < m; t++) sum += score[t] = Math.exp(score[t] - max);
  const cat = new Float64Array(2 * d + L);
  for (let t = 0; t < m; t++) for (let j = 0; j < d; j++) cat[j] += (score[t] / sum) * v[t][j];
  cat.set(h[m - 1], d);
  cat[2 * d + long] = 1;
  const z = new Float64Array(H);
  vecMat(cat, w.W1, 2 * d + L, H, z);
  for (let j = 0; j < H; j++) z[j] = Math.max(0, z[j] + w.b1[j]);
  const y = new Float64Array(K);
  vecMat(z, w.W2, H, K, y);
  for (let o = 0; o < K; o++) y[o] = sigmoid(y[o] + w.b2[o]);
  return y;
}

/**
 * A page's inputs as one key: bit a (0..7) is "dirty a rounds before the last observed one", bit 8 + a "accessed a
 * rounds before", bits 16..18 the long-term class. Rounds before the first observation are 0.
 */
export function pageKey(historyBits: number, long: number): number {
  return (historyBits & 0xffff) | (long << 16);
}

/** Distinct keys: 16 history bits and 3 bits of long-term class. */
export const KEYS = 1 << 19;

/**
 * The forward pass over all pages of a round. Every page of a round shares the system features, and a step's own
 * inputs are two bits (dirty, accessed), so h_t takes one of 4 values per step: everything up to the weighted sum
 * is tabled per round (h, k, v W1 and the softmax numerators for each of the 4 codes of the last step), and a page
 * costs m lookups and an m x hidden sum. Pages with the same key share one evaluation per round.
 */
export class AttentionTables {
  private readonly net: Net;
  readonly K: number;
  /** exp(score) by [cl][t][c]: last step's code cl, step t, step code c. */
  private readonly ex: Float64Array;
  /** v_t W1[:d] by [t][c][j]. */
  private readonly u: Float64Array;
  /** h_{m-1} W1[d:2d] + W1[2d + long] + b1 by [cl][long][j]. */
  private readonly zb: Float64Array;
  private readonly z: Float64Array;

  constructor(model: AttentionModel) {
    this.net = new Net(model);
    const { m, H, L } = this.net;
    this.K = this.net.K;
    this.ex = new Float64Array(4 * m * 4);
    this.u = new Float64Array(m * 4 * H);
    this.zb = new Float64Array(4 * L * H);
    this.z = new Float64Array(H);
  }

  /** Builds the tables from the system features of the m steps (system[t * SYSTEM_FEATURE_COUNT + i], oldest first). */
  build(system: Float32Array): void {
    const { m, d, H, L, w } = this.net;
    const x = new Float64Array(STEP_INPUTS);
    const h = new Float64Array(m * 4 * d);
    const ht = new Float64Array(d);
    for (let t = 0; t < m; t++) {
      for (let i = 0; i < SYSTEM_FEATURE_COUNT; i++) x[2 + i] = system[t * SYSTEM_FEATURE_COUNT + i];
      for (let c = 0; c < 4; c++) {
        x[0] = c & 1;
        x[1] = c >> 1;
        this.net.embed(x, t, ht);
        h.set(ht, (t * 4 + c) * d);
      }
    }
    const k = new Float64Array(m * 4 * d);
    const v = new Float64Array(d);
    for (let tc = 0; tc < m * 4; tc++) {
      const hv = h.subarray(tc * d, tc * d + d);
      vecMat(hv, w.Wk, d, d, k, tc * d);
      vecMat(hv, w.Wv, d, d, v);
      // u = v W1[:d] (the first d rows of W1).
      vecMat(v, w.W1, d, H, this.u, tc * H);
    }
    const q = new Float64Array(d);
    const zl = new Float64Array(H);
    const scale = 1 / Math.sqrt(d);
    const W1h = w.W1.subarray(d * H, 2 * d * H);
    const score = new Float64Array(m * 4);
    for (let cl = 0; cl < 4; cl++) {
      const hl = h.subarray(((m - 1) * 4 + cl) * d, ((m - 1) * 4 + cl) * d + d);
      vecMat(hl, w.Wq, d, d, q);
      vecMat(hl, W1h, d, H, zl);
      for (let l = 0; l < L; l++) {
        const row = (2 * d + l) * H;
        for (let j = 0; j < H; j++) this.zb[(cl * L + l) * H + j] = zl[j] + w.W1[row + j] + w.b1[j];
      }
      let max = -Infinity;
      for (let tc = 0; tc < m * 4; tc++) {
        let s = 0;
        for (let j = 0; j < d; j++) s += q[j] * k[tc * d + j];
        score[tc] = s * scale;
        if (score[tc] > max) max = score[tc];
      }
      // Softmax is unchanged by a shift per cl; shifting by the largest score keeps exp() in range.
      for (let tc = 0; tc < m * 4; tc++) this.ex[cl * m * 4 + tc] = Math.exp(score[tc] - max);
    }
  }

  /** Probabilities for one key (pageKey), one per model horizon, into out[at..at+K). */
  evaluate(key: number, out: Float32Array, at: number): void {
    const { m, H, K, L, w } = this.net;
    const cl = (key & 1) | ((key >> 7) & 2);
    const long = key >>> 16;
    const exBase = cl * m * 4;
    const z = this.z;
    z.fill(0);
    let sum = 0;
    for (let t = 0; t < m; t++) {
      const a = m - 1 - t;
      const c = ((key >> a) & 1) | (((key >> (8 + a)) & 1) << 1);
      const tc = t * 4 + c;
      const e = this.ex[exBase + tc];
      sum += e;
      const u = tc * H;
      for (let j = 0; j < H; j++) z[j] += e * this.u[u + j];
    }
    const inv = 1 / sum;
    const zb = (cl * L + long) * H;
    for (let j = 0; j < H; j++) z[j] = Math.max(0, z[j] * inv + this.zb[zb + j]);
    for (let o = 0; o < K; o++) {
      let s = w.b2[o];
      for (let j = 0; j < H; j++) s += z[j] * w.W2[j * K + o];
      out[at + o] = sigmoid(s);
    }
  }
}

export interface AttentionOptions {
  /**
   * Length of a round in seconds, used only to emulate the system features (dirty rate) when observations carry
   * none.
   */
  roundSeconds: number;
}

export const ATTENTION_DEFAULTS: AttentionOptions = { roundSeconds: 1 };

/**
 * U2CMigration's phase 2 on its own: the attention model over each page's last m rounds of dirty and accessed bits
 * and the rounds' system features, plus its long-term class. Written pages count as accessed; without accessed bits
 * from the source (or with a model trained without them), accessed is dirty. Observations without system features
 * get emulated ones (src/predict/features.ts). A horizon the model was not trained for uses the largest trained one
 * below it (or the smallest) with p' = 1 - (1 - p)^(h / h0).
 */
export class AttentionPredictor implements Predictor {
  readonly name = 'attention';
  readonly pageCount: number;
  readonly model: AttentionModel;
  private readonly o: AttentionOptions;
  private readonly tables: AttentionTables;
  /** Per page: dirty bits in the low byte, accessed bits in the high byte, most recent round in bit 0 / bit 8. */
  private readonly hist: Uint16Array;
  /** Per page: dirty bits of the last LONG_ROUNDS rounds (most recent in bit 0), and how many are set. */
  private readonly long: Uint32Array;
  private readonly count: Uint8Array;
  /** Long-term class by count. */
  private readonly classOf: Uint8Array;
  /** System features of the last m rounds, oldest first. */
  private readonly system: Float32Array;
  private readonly scratch = new Float32Array(SYSTEM_FEATURE_COUNT);
  /** Per key: the round its values were computed for (0: never), and the values (K per key). */
  private readonly stamp = new Uint32Array(KEYS);
  private readonly values: Float32Array;
  private rounds = 0;
  private built = 0;

  constructor(pageCount: number, model: AttentionModel, options: Partial<AttentionOptions> = {}) {
    this.pageCount = pageCount;
    this.model = model;
    this.o = { ...ATTENTION_DEFAULTS, ...options };
    if (!(this.o.roundSeconds > 0)) throw new RangeError(`roundSeconds ${this.o.roundSeconds} must be > 0`);
    this.tables = new AttentionTables(model);
    this.hist = new Uint16Array(pageCount);
    this.long = new Uint32Array(pageCount);
    this.count = new Uint8Array(pageCount);
    this.classOf = Uint8Array.from({ length: LONG_ROUNDS + 1 }, (_, c) => longClass(model, c));
    this.system = new Float32Array(model.m * SYSTEM_FEATURE_COUNT);
    this.values = new Float32Array(KEYS * model.horizons.length);
  }

  get observed(): number {
    return this.rounds;
  }

  observe(o: RoundObservation): void {
    this.rounds++;
    const d = o.dirty.words;
    const a = (this.model.accessed ? o.accessed?.words : undefined) ?? d;
    const { hist, long, count } = this;
    const N = this.pageCount;
    for (let w = 0; w < d.length; w++) {
      const dw = d[w];
      // Accessed counts written pages too, whatever the source reports.
      const aw = a[w] | dw;
      const base = w << 5;
      const end = Math.min(32, N - base);
      for (let i = 0; i < end; i++) {
        const p = base + i;
        const bit = (dw >>> i) & 1;
        hist[p] = ((hist[p] << 1) & 0xfefe) | bit | (((aw >>> i) & 1) << 8);
        const l = long[p];
        count[p] += bit - (l >>> 31);
        long[p] = (l << 1) | bit;
      }
    }
    let sys = o.system;
    if (sys) {
      if (sys.length !== SYSTEM_FEATURE_COUNT)
        throw new RangeError(
          `system features have ${sys.length} values, expected ${SYSTEM_FEATURE_COUNT} (SYSTEM_FEATURES)`,
        );
    } else {
      sys = emulatedSystemFeatures(o.dirty.count(), this.pageCount, this.o.roundSeconds, this.scratch);
    }
    this.system.copyWithin(0, SYSTEM_FEATURE_COUNT);
    this.system.set(sys, (this.model.m - 1) * SYSTEM_FEATURE_COUNT);
  }

  private headFor(horizon: number): number {
    let best = 0;
    this.model.horizons.forEach((h, i) => {
      if (h <= horizon) best = i;
    });
    return best;
  }

  /**
   * Writes the probabilities of the pages whose skip[p] is 0 (all pages when skip is absent); pages with skip[p] set
   * are left as they are.
   */
  predict(out: Float32Array, horizon = 1, skip?: Uint8Array): void {
    const N = this.pageCount;
    if (this.rounds === 0) {
      for (let p = 0; p < N; p++) if (!skip || !skip[p]) out[p] = 0;
      return;
    }
    if (this.built !== this.rounds) {
      this.tables.build(this.system);
      this.built = this.rounds;
    }
    const K = this.tables.K;
    const head = this.headFor(horizon);
    const h0 = this.model.horizons[head];
    const { stamp, values, hist, count, classOf, tables } = this;
    const round = this.rounds;
    for (let p = 0; p < N; p++) {
      if (skip && skip[p]) continue;
      const key = hist[p] | (classOf[count[p]] << 16);
      if (stamp[key] !== round) {
        tables.evaluate(key, values, key * K);
        stamp[key] = round;
      }
      out[p] = values[key * K + head];
    }
    if (h0 !== horizon) {
      const e = horizon / h0;
      for (let p = 0; p < N; p++) if (!skip || !skip[p]) out[p] = 1 - Math.pow(1 - out[p], e);
    }
  }
}
