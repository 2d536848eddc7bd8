import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serializeTrace, type Trace } from '../src/memory/trace.ts';
import { DataShiftPredictor } from '../src/predict/datashift.ts';
import { evaluatePredictors, traceLookahead } from '../src/predict/evaluate.ts';
import {
  CompiledForest,
  ForestPredictor,
  validateForestModel,
  type ForestModel,
} from '../src/predict/forest.ts';
import { trainForest, type TrainingTrace } from '../src/predict/forest-train.ts';
import { createPredictor } from '../src/predict/index.ts';
import { MarkovPredictor } from '../src/predict/markov.ts';
import { rocAuc, ScoreCollector } from '../src/predict/metrics.ts';
import { OraclePredictor } from '../src/predict/oracle.ts';
import { PrPredictor } from '../src/predict/pr.ts';
import { LocalityWindow, featureCount, type WindowSpec } from '../src/predict/window.ts';
import { Bitmap } from '../src/util/bitmap.ts';
import { InputError, UsageError } from '../src/util/errors.ts';
import { Prng } from '../src/util/prng.ts';
import { precog } from './support/cli.ts';

const NPB = new URL('./data/npb-cg-B-dirty.json.gz', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'precog-predict-'));

/** Rounds from per-page strings of 0/1 ("1101" = dirty in rounds 1, 2 and 4): rounds[r] is a Bitmap. */
function rounds(pages: string[]): Bitmap[] {
  const n = pages[0].length;
  return Array.from({ length: n }, (_, r) =>
    Bitmap.from(
      pages.length,
      pages.flatMap((s, p) => (s[r] === '1' ? [p] : [])),
    ),
  );
}

function feed(pred: { observe: (o: { round: number; dirty: Bitmap }) => void }, rs: Bitmap[]): void {
  rs.forEach((dirty, i) => pred.observe({ round: i + 1, dirty }));
}

function predict(
  pred: { pageCount: number; predict: (o: Float32Array, h?: number) => void },
  h = 1,
): number[] {
  const out = new Float32Array(pred.pageCount);
  pred.predict(out, h);
  return Array.from(out);
}

test('every predictor writes zeros before its first observation (send everything)', () => {
  for (const name of ['markov', 'pr', 'forest', 'datashift', 'oracle']) {
    const pred = createPredictor(name, 100, { lookahead: () => Bitmap.full(100) });
    if (name === 'oracle') continue; // the oracle knows the future from round 0
    const out = new Float32Array(100).fill(0.7);
    pred.predict(out, 1);
    assert.ok(
      out.every((x) => x === 0),
      `${name} before any observation`,
    );
  }
});

test('markov: always-dirty page -> ~1, never-dirty -> ~0, alternating page follows its own transitions', () => {
  const always = '1'.repeat(20);
  const never = '0'.repeat(20);
  const alternating = '10'.repeat(10); // ends clean: next is dirty
  const alternating2 = '01'.repeat(10); // ends dirty: next is clean
  const rs = rounds([always, never, alternating, alternating2]);
  const exact = new MarkovPredictor(4, { prior: 0 });
  feed(exact, rs);
  assert.deepEqual(predict(exact), [1, 0, 1, 0]);
  // Horizon 2: the alternating pages are dirty within two rounds whatever their state; the clean one never.
  assert.deepEqual(predict(exact, 2), [1, 0, 1, 1]);
  const smoothed = new MarkovPredictor(4); // prior of 1 transition towards the pooled rates
  feed(smoothed, rs);
  const p = predict(smoothed);
  assert.ok(p[0] > 0.9, `always-dirty page: ${p[0]}`);
  assert.ok(p[1] < 0.1, `never-dirty page: ${p[1]}`);
  assert.ok(p[2] > 0.9 && p[3] < 0.1, `alternating pages: ${p[2]}, ${p[3]}`);
});

test('markov: horizon h is 1 - P(clean next) x (1 - p_cd)^(h-1) from the counted transitions', () => {
  // Page: clean->dirty 1 of 4 transitions from clean, dirty->dirty 1 of 2 from dirty; last state dirty.
  const rs = rounds(['0001101']);
  const m = new MarkovPredictor(1, { prior: 0 });
  feed(m, rs);
  // Transitions: 0->0, 0->0, 0->1, 1->1, 1->0, 0->1: from clean 4 (2 to dirty), from dirty 2 (1 to dirty).
  const pcd = 2 / 4;
  const pdd = 1 / 2;
  for (const h of [1, 2, 3, 5]) {
    const expected = 1 - (1 - pdd) * Math.pow(1 - pcd, h - 1);
    assert.ok(Math.abs(predict(m, h)[0] - expected) < 1e-6, `h=${h}: ${predict(m, h)[0]} vs ${expected}`);
  }
});

test('pr: skipped when both the modification probability and the recency reach their thresholds', () => {
  const rs = rounds([
    '0111', // rate 3/4, dirty in the last round: skip
    '1110', // rate 3/4, last dirty 1 round ago: recency 0.5 at half-life 1: skip (at the threshold)
    '1100', // rate 1/2, last dirty 2 rounds ago: recency 0.25: keep
    '0001', // rate 1/4, dirty in the last round: keep
    '0000', // never: keep
  ]);
  const pr = new PrPredictor(5);
  feed(pr, rs);
  const skips = [0, 1, 2, 3, 4].map((p) => pr.skip(p));
  assert.deepEqual(skips, [true, true, false, false, false]);
  // The score is >= 0.5 exactly for the skipped pages.
  assert.deepEqual(
    predict(pr).map((s) => s >= 0.5),
    skips,
  );
  // Stricter thresholds keep the second page.
  const strict = new PrPredictor(5, { probability: 0.8, recency: 0.6 });
  feed(strict, rs);
  assert.deepEqual(
    [0, 1, 2, 3, 4].map((p) => strict.skip(p)),
    [false, false, false, false, false],
  );
  const recent = new PrPredictor(5, { probability: 0.7, recency: 0.6 });
  feed(recent, rs);
  assert.deepEqual(
    [0, 1, 2, 3, 4].map((p) => recent.skip(p)),
    [true, false, false, false, false],
  );
});

test('pr: score >= 0.5 agrees with the skip rule on random histories, and ranks by both quantities', () => {
  const prng = new Prng(3);
  const pages = Array.from({ length: 300 }, () =>
    Array.from({ length: 12 }, () => (prng.next() < 0.4 ? '1' : '0')).join(''),
  );
  const pr = new PrPredictor(300, { probability: 0.4, recency: 0.3, halfLife: 2 });
  feed(pr, rounds(pages));
  const s = predict(pr);
  for (let p = 0; p < 300; p++) assert.equal(s[p] >= 0.5, pr.skip(p), `page ${p} ${pages[p]} score ${s[p]}`);
  assert.ok(s.every((x) => x >= 0 && x <= 1));
});

test('datashift: a state held in more than P of the window is predicted to hold; others are unstable', () => {
  const rs = rounds(['0011', '1100', '1001', '0110', '1111', '0000']);
  const ds = new DataShiftPredictor(6); // window 2, P 0.5: both of the last two rounds agree
  feed(ds, rs);
  assert.deepEqual(predict(ds), [1, 0, 0.5, 0.5, 1, 0]);
  assert.deepEqual(predict(ds, 3), [1, 0, 0.5, 0.5, 1, 0], 'the stable state holds for any horizon');
  const sure = new Uint8Array(6);
  assert.equal(ds.stable(sure), 4);
  assert.deepEqual(Array.from(sure), [1, 1, 0, 0, 1, 1]);
  // Window 3, P 0.5: the last state must have held in 2 of the last 3 rounds.
  const w3 = new DataShiftPredictor(3, { window: 3, share: 0.5 });
  feed(w3, rounds(['101', '110', '011']));
  assert.deepEqual(
    predict(w3),
    [1, 2 / 3, 1].map((x) => Math.fround(x)),
  );
  assert.equal(w3.stable(new Uint8Array(3)), 2, 'page 1 ends clean, but clean held in 1 of 3 rounds only');
  // Before the window is full, nothing is stable.
  const early = new DataShiftPredictor(2);
  feed(early, rounds(['1']));
  assert.equal(early.stable(new Uint8Array(1)), 0);
});

test('oracle: exactly the pages dirty within the horizon', () => {
  const prng = new Prng(5);
  const rs = Array.from({ length: 6 }, () => {
    const b = new Bitmap(200);
    for (let p = 0; p < 200; p++) if (prng.next() < 0.2) b.set(p);
    return b;
  });
  const o = new OraclePredictor(200, traceLookahead(rs));
  feed(o, rs.slice(0, 2));
  const expected2 = rs[2].clone().or(rs[3]);
  assert.deepEqual(
    predict(o, 2),
    Array.from({ length: 200 }, (_, p) => (expected2.get(p) ? 1 : 0)),
  );
  assert.deepEqual(
    predict(o, 1),
    Array.from({ length: 200 }, (_, p) => (rs[2].get(p) ? 1 : 0)),
  );
});

test('rocAuc: exact on known inputs, ties count half, matches the pair count on random scores', () => {
  const f = (xs: number[]) => Float32Array.from(xs);
  assert.equal(rocAuc(f([0.9, 0.8]), f([0.1, 0.2])), 1);
  assert.equal(rocAuc(f([0.1, 0.2]), f([0.9, 0.8])), 0);
  assert.equal(rocAuc(f([0.5, 0.5]), f([0.5])), 0.5);
  // 0.8 beats all 3 negatives; 0.4 beats 0.1, ties 0.4, loses to 0.5: (3 + 1.5) / 6.
  assert.equal(rocAuc(f([0.8, 0.4]), f([0.5, 0.1, 0.4])), 0.75);
  assert.ok(Number.isNaN(rocAuc(f([0.3]), f([]))));
  const prng = new Prng(11);
  const pos = Array.from({ length: 300 }, () => Math.round(prng.next() * 20) / 20);
  const neg = Array.from({ length: 400 }, () => Math.round(prng.next() * 16) / 20);
  let u = 0;
  for (const a of pos) for (const b of neg) u += a > b ? 1 : a === b ? 0.5 : 0;
  assert.ok(Math.abs(rocAuc(f(pos), f(neg)) - u / (300 * 400)) < 1e-12);
});

test('ScoreCollector: confusion counts, precision, recall, F1 and accuracy at the threshold', () => {
  const sc = new ScoreCollector(0.5);
  // Pages 0..5; dirty: 0, 1, 2. Scores: 0.9 (tp), 0.6 (tp), 0.2 (fn), 0.7 (fp), 0.1 (tn), 0.5 (fp: at the threshold).
  sc.add(Float32Array.from([0.9, 0.6, 0.2, 0.7, 0.1, 0.5]), Bitmap.from(6, [0, 1, 2]).words);
  const q = sc.summary();
  assert.deepEqual([q.tp, q.fp, q.fn, q.tn], [2, 2, 1, 1]);
  assert.equal(q.precision, 0.5);
  assert.equal(q.recall, 2 / 3);
  assert.ok(Math.abs(q.f1 - 4 / 7) < 1e-12);
  assert.equal(q.accuracy, 0.5);
  // 3 positives x 3 negatives: 0.9 beats 3, 0.6 beats 2 (0.5, 0.1), 0.2 beats 1.
  assert.ok(Math.abs(q.auc - 6 / 9) < 1e-12);
});

/** Naive reference of the locality window's feature bits (docs of src/predict/window.ts). */
function naiveFeatures(hist: number[][], p: number, s: WindowSpec): number[] {
  const N = hist.length;
  const t = hist[0].length; // rounds observed, hist[q][t-1] is the last
  const bits: number[] = [];
  const half = (s.n - 1) / 2;
  for (let k = 0; k < s.n; k++) {
    for (let a = 0; a < s.m; a++) {
      const q = p + k - half;
      bits.push(q >= 0 && q < N && t - 1 - a >= 0 ? hist[q][t - 1 - a] : 0);
    }
  }
  const seen = Math.min(t, s.l);
  const c = hist[p].slice(t - seen).reduce((x, y) => x + y, 0);
  bits.push(c >= 1 ? 1 : 0, ...[1 / 8, 1 / 4, 1 / 2, 3 / 4].map((t) => (c >= 1 && c >= t * seen ? 1 : 0)));
  return bits;
}

test('locality window: feature bits match the documented layout (one and two words per page)', () => {
  for (const spec of [
    { m: 5, n: 5, l: 16 },
    { m: 3, n: 1, l: 4 },
    { m: 5, n: 11, l: 16 },
    { m: 8, n: 7, l: 32 },
  ]) {
    const N = 70;
    const prng = new Prng(spec.n * 10 + spec.m);
    const hist = Array.from({ length: N }, () => [] as number[]);
    const w = new LocalityWindow(N, spec);
    for (let r = 0; r < 9; r++) {
      const b = new Bitmap(N);
      for (let p = 0; p < N; p++) {
        const d = prng.next() < 0.3 ? 1 : 0;
        hist[p].push(d);
        if (d) b.set(p);
      }
      w.observe(b.words);
      const out = new Uint32Array(N * w.words);
      w.features(out);
      for (let p = 0; p < N; p++) {
        const want = naiveFeatures(hist, p, spec);
        assert.equal(want.length, featureCount(spec));
        const got = want.map((_, i) => (out[p * w.words + (i >>> 5)] >>> (i & 31)) & 1);
        assert.deepEqual(got, want, `spec ${JSON.stringify(spec)} round ${r} page ${p}`);
      }
    }
  }
});

/** A wave: each round, every dirty page passes its dirtiness to its right neighbour. */
function waveTrace(pages: number, samples: number, seed: number): TrainingTrace {
  const prng = new Prng(seed);
  let cur = new Bitmap(pages);
  for (let p = 0; p < pages; p++) if (prng.next() < 0.1) cur.set(p);
  const out: Uint32Array[] = [];
  for (let s = 0; s < samples; s++) {
    out.push(cur.words.slice());
    const next = new Bitmap(pages);
    cur.forEach((p) => next.set((p + 1) % pages));
    cur = next;
  }
  return { name: `wave-${seed}`, pageCount: pages, samples: out };
}

test('forest: trained on a toy pattern (a wave moving right), it learns it; markov cannot', () => {
  const { model } = trainForest([waveTrace(4000, 12, 1)], {
    trees: 4,
    depth: 4,
    minLeaf: 1,
    horizons: [1],
    seed: 1,
  });
  validateForestModel(JSON.parse(JSON.stringify(model)), 'trained');
  const test = waveTrace(3000, 10, 2);
  const samples = test.samples.map((w) => new Bitmap(3000, w));
  const [forest, markov] = evaluatePredictors(
    samples,
    [new ForestPredictor(3000, model), new MarkovPredictor(3000)],
    {
      warmup: 1,
    },
  );
  assert.ok(forest.auc > 0.99, `forest AUC ${forest.auc}`);
  assert.ok(forest.f1 > 0.9, `forest F1 ${forest.f1}`);
  assert.ok(markov.auc < 0.7, `markov AUC ${markov.auc}`);
});

test('forest: training is deterministic for a seed; horizons without a forest are derived from a trained one', () => {
  const data = [waveTrace(1500, 10, 3)];
  const o = { trees: 3, depth: 3, minLeaf: 5, horizons: [1], seed: 9 };
  const a = trainForest(data, o).model;
  assert.equal(JSON.stringify(a), JSON.stringify(trainForest(data, o).model));
  assert.notEqual(JSON.stringify(a), JSON.stringify(trainForest(data, { ...o, seed: 10 }).model));
  const f = new ForestPredictor(1500, a);
  feed(
    f,
    data[0].samples.slice(0, 4).map((w) => new Bitmap(1500, w)),
  );
  const p1 = predict(f, 1);
  const p3 = predict(f, 3);
  for (let p = 0; p < 1500; p++) assert.ok(Math.abs(p3[p] - (1 - Math.pow(1 - p1[p], 3))) < 1e-6);
});

test('forest: predictions equal a direct walk of every tree for every page (one- and two-word windows)', () => {
  for (const window of [
    { m: 5, n: 5, l: 16 },
    { m: 5, n: 11, l: 16 },
  ]) {
    const data = waveTrace(5000, 9, 12);
    const { model } = trainForest([data], { window, trees: 5, depth: 6, minLeaf: 2, horizons: [1], seed: 3 });
    const f = new ForestPredictor(5000, model);
    const w = new LocalityWindow(5000, window);
    const direct = new CompiledForest(model.forests[0]);
    const words = new Uint32Array(5000 * w.words);
    const prng = new Prng(2);
    for (let r = 0; r < 6; r++) {
      // The wave's rounds plus random noise, so that many distinct windows show up.
      const b = new Bitmap(5000, data.samples[r].slice());
      for (let p = 0; p < 5000; p++) if (prng.next() < 0.05) b.set(p);
      f.observe({ round: r + 1, dirty: b });
      w.observe(b.words);
      w.features(words);
      const got = predict(f);
      for (let p = 0; p < 5000; p++) {
        const want = direct.evaluate(words[p * w.words], w.words === 2 ? words[p * 2 + 1] : 0);
        assert.equal(got[p], Math.fround(want), `n=${window.n} round ${r} page ${p}`);
      }
    }
  }
});

test('forest: a tree walks bit tests in preorder; bad model files are refused with InputError', () => {
  // Split on bit 3: bit clear -> split on bit 40 (second word) -> 0.1 / 0.2; bit set -> 0.9.
  const tree = { f: [3, 40, -1, -1, -1], r: [4, 3, 0, 0, 0], v: [0, 0, 0.1, 0.2, 0.9] };
  const c = new CompiledForest({ horizon: 1, trees: [tree] });
  assert.equal(c.evaluate(1 << 3, 0), Math.fround(0.9));
  assert.equal(c.evaluate(0, 0), Math.fround(0.1));
  assert.equal(c.evaluate(0, 1 << 8), Math.fround(0.2));
  const good: ForestModel = {
    format: 'precog-forest/1',
    window: { m: 5, n: 11, l: 16 },
    forests: [{ horizon: 1, trees: [tree] }],
  };
  validateForestModel(good, 'good');
  const bad = (mutate: (m: ForestModel) => void, why: RegExp) => {
    const m = JSON.parse(JSON.stringify(good)) as ForestModel;
    mutate(m);
    assert.throws(
      () => validateForestModel(m, 'bad.json'),
      (e: Error) => e instanceof InputError && why.test(e.message),
    );
  };
  bad((m) => (m.format = 'x' as 'precog-forest/1'), /format/);
  bad((m) => (m.forests[0].trees[0].f[0] = 999), /feature 999/);
  bad((m) => (m.forests[0].trees[0].r[0] = 0), /preorder/);
  bad((m) => (m.forests[0].trees[0].v[2] = 1.5), /not in \[0, 1\]/);
  bad((m) => (m.window.n = 4), /odd/);
  bad((m) => (m.forests = []), /forests/);
});

test('createPredictor: specs with parameters; bad names and parameters are usage errors', () => {
  assert.equal(createPredictor('markov:prior=0', 10).name, 'markov');
  assert.equal(createPredictor('datashift:window=3:p=0.6', 10).name, 'datashift');
  assert.equal(createPredictor('pr:p=0.7:r=0.4:half-life=2', 10).name, 'pr');
  const usage = (spec: string, why: RegExp) =>
    assert.throws(
      () => createPredictor(spec, 10),
      (e: Error) => e instanceof UsageError && why.test(e.message),
      spec,
    );
  usage('lstm', /unknown predictor "lstm"; accepted: markov, pr, forest, datashift, .*oracle/);
  usage('markov:order=2', /unknown predictor parameter "order" for markov; accepted: prior/);
  usage('markov:prior=-1', /prior "-1" must be a number >= 0/);
  usage('pr:p=2', /p "2" must be between 0 and 1/);
  usage('datashift:window=0', /window "0" must be a whole number >= 1/);
  usage('datashift:window=40', /at most 32/);
  usage('oracle', /needs the future/);
  usage('markov:fast', /key=value/);
});

function writeTrace(name: string, pages: number, samples: Uint32Array[]): string {
  const bytes = (pages + 7) >>> 3;
  const t: Trace = {
    pageSize: 4096,
    intervalMs: 100,
    regions: [{ start: '0x10000', pages }],
    pageCount: pages,
    samples: samples.length,
    dirty: samples.map((w) => new Uint8Array(w.buffer, 0, bytes).slice()),
    accessed: null,
    source: name,
  };
  const file = join(dir, name);
  writeFileSync(file, serializeTrace(t));
  return file;
}

test('precog train and predict-eval: a model trained from trace files predicts a held-out trace', () => {
  const train = writeTrace('wave-train.trace', 3000, waveTrace(3000, 12, 4).samples);
  const held = writeTrace('wave-test.trace', 2000, waveTrace(2000, 10, 5).samples);
  const model = join(dir, 'model.json');
  const t = precog([
    'train',
    '--traces',
    train,
    '--out',
    model,
    '--trees',
    '4',
    '--depth',
    '4',
    '--min-leaf',
    '1',
    '--horizons',
    '1',
  ]);
  assert.equal(t.code, 0, t.stderr);
  assert.match(t.stdout, /wrote .*model\.json/);
  validateForestModel(JSON.parse(readFileSync(model, 'utf8')), model);
  const r = precog([
    'predict-eval',
    '--trace',
    held,
    '--predictors',
    'markov,forest,oracle',
    '--model',
    model,
    '--json',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as {
    traces: { results: { spec: string; auc: number; f1: number; rounds: number }[] }[];
  };
  const res = Object.fromEntries(j.traces[0].results.map((x) => [x.spec, x]));
  assert.equal(res.oracle.auc, 1);
  assert.equal(res.oracle.f1, 1);
  assert.equal(res.forest.rounds, 9, '10 samples, warmup 1, horizon 1: 9 scored rounds');
  assert.ok(
    res.forest.auc > 0.99 && res.markov.auc < 0.7,
    `forest ${res.forest.auc}, markov ${res.markov.auc}`,
  );
});

test('precog predict-eval on npb-cg-B: datashift accuracy on the pages it calls stable is 1.0', () => {
  // --traces, as in train (--trace, its former name, still works: the other tests use it).
  const r = precog(['predict-eval', '--traces', NPB, '--predictors', 'datashift,oracle', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as {
    traces: { results: { spec: string; auc: number; stable?: { coverage: number; accuracy: number } }[] }[];
  };
  const [ds, oracle] = j.traces[0].results;
  assert.equal(ds.stable!.accuracy, 1);
  assert.ok(ds.stable!.coverage > 0.8, `coverage ${ds.stable!.coverage}`);
  assert.equal(oracle.auc, 1);
});

test('precog train and predict-eval: bad flags exit 2 with the problem named', () => {
  const trace = writeTrace('small.trace', 100, waveTrace(100, 4, 6).samples);
  const cases: [string[], RegExp][] = [
    [['predict-eval'], /--traces is required/],
    [['predict-eval', '--trace', trace, '--predictors', 'lstm'], /unknown predictor "lstm"/],
    [['predict-eval', '--trace', trace, '--horizon', '0'], /--horizon "0" must be a whole number >= 1/],
    [
      ['predict-eval', '--trace', trace, '--threshold', '2'],
      /--threshold "2" must be a number between 0 and 1/,
    ],
    [
      ['predict-eval', '--trace', trace, '--warmup', '4'],
      /has 4 samples: --warmup 4 and --horizon 1 need at least 5/,
    ],
    [['predict-eval', '--trace', join(dir, 'missing.trace')], /cannot read trace file/],
    [['predict-eval', '--trace', trace, '--model', join(dir, 'missing.json')], /cannot read forest model/],
    [['train', '--traces', trace], /--out is required/],
    [['train', '--out', join(dir, 'x.json')], /--traces is required/],
    [['train', '--traces', trace, '--out', join(dir, 'x.json'), '--n', '4'], /--n = 4 must be an odd/],
    [['train', '--traces', join(dir, 'nope'), '--out', join(dir, 'x.json')], /"\S+nope" does not exist/],
    [['train', '--traces', trace, '--out', join(dir, 'x.json'), '--kind', 'lstm'], /invalid|lstm/],
    [['train', '--traces', trace, '--out', join(dir, 'x.json'), '--model', 'lstm'], /invalid|lstm/],
  ];
  for (const [args, why] of cases) {
    const r = precog(args);
    assert.equal(r.code, 2, `${args.join(' ')}: exit ${r.code} ${r.stderr}`);
    assert.match(r.stderr, why, args.join(' '));
  }
});
