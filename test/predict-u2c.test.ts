import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import {
  ATTENTION_FORMAT,
  AttentionPredictor,
  attentionForward,
  LONG_ROUNDS,
  loadAttentionModel,
  longClass,
  STEP_INPUTS,
  validateAttentionModel,
  weightShapes,
  type AttentionModel,
  type AttentionWeights,
} from '../src/predict/attention.ts';
import {
  emulatedSystemFeatures,
  rateFeature,
  SYSTEM_FEATURE_COUNT,
  SYSTEM_FEATURES,
  SystemSampler,
} from '../src/predict/features.ts';
import { createPredictor } from '../src/predict/index.ts';
import { RANK_EDGE, U2CPredictor } from '../src/predict/u2c.ts';
import { Bitmap } from '../src/util/bitmap.ts';
import { InputError, UsageError } from '../src/util/errors.ts';
import { tfPredict, tfReady } from '../scripts/attention-tf.ts';

const F = (name: (typeof SYSTEM_FEATURES)[number]): number => SYSTEM_FEATURES.indexOf(name);

function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
}

/** A model of the given sizes with every weight from fill(name, index). */
function makeModel(
  o: { m: number; d: number; hidden: number; horizons: number[]; longEdges: number[]; accessed?: boolean },
  fill: (name: keyof AttentionWeights, i: number) => number,
): AttentionModel {
  const shapes = weightShapes(o.m, o.d, o.hidden, o.horizons.length, o.longEdges.length);
  const weights = {} as AttentionWeights;
  for (const [name, [r, c]] of Object.entries(shapes) as [keyof AttentionWeights, [number, number]][])
    weights[name] = Array.from({ length: r * c }, (_, i) => fill(name, i));
  return validateAttentionModel(
    {
      format: ATTENTION_FORMAT,
      m: o.m,
      longEdges: o.longEdges,
      d: o.d,
      hidden: o.hidden,
      horizons: o.horizons,
      accessed: o.accessed ?? true,
      features: [...SYSTEM_FEATURES],
      weights,
    },
    'test',
  );
}

function randomModel(seed: number, accessed = true): AttentionModel {
  const r = rng(seed);
  return makeModel(
    { m: 8, d: 6, hidden: 5, horizons: [1, 3], longEdges: [0, 1, 4, 9], accessed },
    () => (r() - 0.5) * 2,
  );
}

/** A model whose output is the same for every input: all weights 0, output biases logit(p). */
function constantModel(ps: number[], horizons: number[]): AttentionModel {
  return makeModel({ m: 4, d: 2, hidden: 2, horizons, longEdges: [0] }, (name, i) =>
    name === 'b2' ? Math.log(ps[i] / (1 - ps[i])) : 0,
  );
}

function bitmapOf(size: number, pages: number[]): Bitmap {
  return Bitmap.from(size, pages);
}

describe('system features', () => {
  const dirs: string[] = [];
  after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

  it('samples /proc into finite values in [0, 1] of the documented length', () => {
    const s = new SystemSampler();
    const busy = Date.now() + 30;
    while (Date.now() < busy) Math.sqrt(Math.random());
    const v = s.sample(100, 1000);
    assert.equal(v.length, SYSTEM_FEATURE_COUNT);
    assert.equal(SYSTEM_FEATURE_COUNT, SYSTEM_FEATURES.length);
    for (let i = 0; i < v.length; i++)
      assert.ok(Number.isFinite(v[i]) && v[i] >= 0 && v[i] <= 1, `${SYSTEM_FEATURES[i]} = ${v[i]}`);
    assert.ok(Math.abs(v[F('dirty-share')] - 0.1) < 1e-6);
    // Some CPU time passed while we spun.
    assert.ok(v[F('cpu-user')] + v[F('cpu-system')] > 0);
  });

  it('turns counter deltas into per-second rates and CPU shares', () => {
    const dir = mkdtempSync(join(tmpdir(), 'precog-proc-'));
    dirs.push(dir);
    const write = (pgfault: number, user: number, idle: number, refaultFile: number) => {
      writeFileSync(
        join(dir, 'vmstat'),
        `pgfault ${pgfault}\npgmajfault 5\npgactivate 0\npswpin 0\npswpout 0\nworkingset_refault_anon 0\nworkingset_refault_file ${refaultFile}\n`,
      );
      writeFileSync(join(dir, 'stat'), `cpu  ${user} 0 10 ${idle} 0 0 0 0 0 0\ncpu0 1 2 3 4\n`);
    };
    let now = 100;
    write(1000, 100, 100, 0);
    const s = new SystemSampler({ proc: dir, now: () => now });
    write(1000 + 1998, 150, 150, 19);
    now = 102;
    const v = s.sample(50, 200);
    assert.ok(Math.abs(v[F('pgfault')] - rateFeature(999)) < 1e-6);
    assert.ok(Math.abs(v[F('pgfault')] - 0.5) < 1e-6); // log10(1000) / 6
    assert.equal(v[F('pgmajfault')], 0);
    assert.ok(Math.abs(v[F('refault')] - rateFeature(9.5)) < 1e-6);
    assert.ok(Math.abs(v[F('cpu-user')] - 0.5) < 1e-6);
    assert.ok(Math.abs(v[F('cpu-system')]) < 1e-6);
    assert.ok(Math.abs(v[F('dirty-share')] - 0.25) < 1e-6);
    assert.ok(Math.abs(v[F('dirty-rate')] - rateFeature(25)) < 1e-6);
  });

  it('names the missing procfs file', () => {
    assert.throws(
      () => new SystemSampler({ proc: '/nonexistent-proc' }),
      (e: unknown) => e instanceof InputError && /\/nonexistent-proc\/vmstat/.test(e.message),
    );
  });

  it('emulates from the dirty count only', () => {
    const v = emulatedSystemFeatures(300, 1200, 0.5);
    assert.ok(Math.abs(v[F('dirty-share')] - 0.25) < 1e-6);
    assert.ok(Math.abs(v[F('dirty-rate')] - rateFeature(600)) < 1e-6);
    assert.equal(v[F('pgfault')], v[F('dirty-rate')]);
    assert.equal(v[F('cpu-user')], 0);
    assert.equal(v[F('swap')], 0);
  });
});

describe('attention forward pass', () => {
  it('equals a hand-computed one-step example', () => {
    // m = 1, d = 1, one long class: h = tanh(dirty), c = Wv h = 2h, z = relu(c + h + 0.5), y = sigmoid(z - 1).
    const model = makeModel({ m: 1, d: 1, hidden: 1, horizons: [1], longEdges: [0] }, (name, i) => {
      if (name === 'We') return i === 0 ? 1 : 0;
      if (name === 'Wv') return 2;
      if (name === 'Wq' || name === 'Wk' || name === 'W2') return 1;
      if (name === 'W1') return [1, 1, 0.5][i];
      if (name === 'b2') return -1;
      return 0;
    });
    const steps = new Float64Array(STEP_INPUTS);
    const sig = (x: number) => 1 / (1 + Math.exp(-x));
    assert.ok(Math.abs(attentionForward(model, steps, 0)[0] - sig(-0.5)) < 1e-12);
    steps[0] = 1;
    assert.ok(Math.abs(attentionForward(model, steps, 0)[0] - sig(3 * Math.tanh(1) - 0.5)) < 1e-12);
  });

  it('equals a hand-computed two-step attention', () => {
    // m = 2, d = 1: h_t = tanh(dirty_t + pos_t), scores h_1 h_t, c = sum a_t h_t, z = relu(c), y = sigmoid(z).
    const model = makeModel({ m: 2, d: 1, hidden: 1, horizons: [1], longEdges: [0] }, (name, i) => {
      if (name === 'We') return i === 0 ? 1 : 0;
      if (name === 'pos') return [0.5, -0.25][i];
      if (name === 'Wq' || name === 'Wk' || name === 'Wv' || name === 'W2') return 1;
      if (name === 'W1') return [1, 0, 0][i];
      return 0;
    });
    const steps = new Float64Array(2 * STEP_INPUTS);
    steps[0] = 1; // dirty two rounds ago, clean in the last one
    const h0 = Math.tanh(1.5);
    const h1 = Math.tanh(-0.25);
    const e0 = Math.exp(h1 * h0);
    const e1 = Math.exp(h1 * h1);
    const c = (e0 * h0 + e1 * h1) / (e0 + e1);
    const want = 1 / (1 + Math.exp(-Math.max(0, c)));
    assert.ok(Math.abs(attentionForward(model, steps, 0)[0] - want) < 1e-12);
  });

  it('the tabled predictor over pages equals the reference pass page by page', () => {
    const r = rng(5);
    const model = randomModel(11);
    const N = 300;
    const rounds = 12;
    const p = new AttentionPredictor(N, model);
    const dirty: number[][] = Array.from({ length: N }, () => []);
    const acc: number[][] = Array.from({ length: N }, () => []);
    const sys: Float32Array[] = [];
    for (let t = 0; t < rounds; t++) {
      const d: number[] = [];
      const a: number[] = [];
      for (let q = 0; q < N; q++) {
        // Pages with their own rates, so that long-term classes vary.
        const rate = (q % 10) / 10;
        const isD = r() < rate ? 1 : 0;
        const isA = isD || r() < 0.3 ? 1 : 0;
        dirty[q].push(isD);
        acc[q].push(isA);
        if (isD) d.push(q);
        if (isA) a.push(q);
      }
      const s = Float32Array.from({ length: SYSTEM_FEATURE_COUNT }, () => r());
      sys.push(s);
      p.observe({ round: t + 1, dirty: bitmapOf(N, d), accessed: bitmapOf(N, a), system: s });
    }
    const out1 = new Float32Array(N);
    const out3 = new Float32Array(N);
    p.predict(out1, 1);
    p.predict(out3, 3);
    const steps = new Float64Array(model.m * STEP_INPUTS);
    for (let q = 0; q < N; q++) {
      for (let t = 0; t < model.m; t++) {
        const s = rounds - model.m + t;
        steps[t * STEP_INPUTS] = dirty[q][s];
        steps[t * STEP_INPUTS + 1] = acc[q][s];
        for (let i = 0; i < SYSTEM_FEATURE_COUNT; i++) steps[t * STEP_INPUTS + 2 + i] = sys[s][i];
      }
      const count = dirty[q].slice(-LONG_ROUNDS).reduce((x, y) => x + y, 0);
      const y = attentionForward(model, steps, longClass(model, count));
      assert.ok(Math.abs(out1[q] - y[0]) < 1e-5, `page ${q}: ${out1[q]} vs ${y[0]}`);
      assert.ok(Math.abs(out3[q] - y[1]) < 1e-5, `page ${q} horizon 3: ${out3[q]} vs ${y[1]}`);
    }
  });

  it('pads rounds before the first observation with zeros, and ignores accessed bits the model was not trained on', () => {
    const model = randomModel(3, false);
    const N = 40;
    const p = new AttentionPredictor(N, model);
    const s = Float32Array.from({ length: SYSTEM_FEATURE_COUNT }, (_, i) => i / 20);
    p.observe({ round: 1, dirty: bitmapOf(N, [1, 2]), accessed: bitmapOf(N, [1, 2, 3, 4]), system: s });
    const out = new Float32Array(N);
    p.predict(out, 1);
    const steps = new Float64Array(model.m * STEP_INPUTS);
    const last = (model.m - 1) * STEP_INPUTS;
    for (let i = 0; i < SYSTEM_FEATURE_COUNT; i++) steps[last + 2 + i] = s[i];
    // Page 3 was only read: with accessed = false in the model, it looks like page 0 (untouched).
    const clean = attentionForward(model, steps, 0)[0];
    assert.ok(Math.abs(out[0] - clean) < 1e-5);
    assert.ok(Math.abs(out[3] - clean) < 1e-5);
    steps[last] = 1;
    steps[last + 1] = 1;
    assert.ok(Math.abs(out[1] - attentionForward(model, steps, longClass(model, 1))[0]) < 1e-5);
  });

  it('matches tfjs on random inputs', async () => {
    await tfReady();
    const r = rng(9);
    const model = randomModel(21);
    const B = 16;
    const inputs = Float32Array.from({ length: B * model.m * STEP_INPUTS }, (_, i) =>
      i % STEP_INPUTS < 2 ? (r() < 0.5 ? 1 : 0) : r(),
    );
    const long = Int32Array.from({ length: B }, () => Math.floor(r() * model.longEdges.length));
    const tf = tfPredict(model, inputs, long, B);
    for (let b = 0; b < B; b++) {
      const y = attentionForward(
        model,
        inputs.subarray(b * model.m * STEP_INPUTS, (b + 1) * model.m * STEP_INPUTS),
        long[b],
      );
      for (let k = 0; k < y.length; k++)
        assert.ok(
          Math.abs(y[k] - tf[b * y.length + k]) < 1e-4,
          `row ${b} output ${k}: ${y[k]} vs tfjs ${tf[b * y.length + k]}`,
        );
    }
  });

  it('the shipped model loads, and a broken one is refused naming the field', () => {
    const m = loadAttentionModel();
    assert.deepEqual(m.features, [...SYSTEM_FEATURES]);
    const broken = structuredClone(m) as unknown as { weights: { W1: number[] } };
    broken.weights.W1.pop();
    assert.throws(
      () => validateAttentionModel(broken, 'broken.json'),
      (e: unknown) => e instanceof InputError && /weights\.W1/.test(e.message),
    );
  });
});

describe('u2c', () => {
  const N = 5;
  // Rounds 1..3 (bits: round 1, 2, 3):
  //   page 0 dirty dirty dirty  -> stable dirty
  //   page 1 clean clean clean  -> stable clean
  //   page 2 dirty clean dirty  -> unstable (last two differ)
  //   page 3 clean clean dirty  -> unstable
  //   page 4 dirty dirty clean  -> unstable
  const rounds = [
    [0, 2, 4],
    [0, 4],
    [0, 2, 3],
  ];
  const feed = (p: { observe: U2CPredictor['observe'] }) =>
    rounds.forEach((d, i) => p.observe({ round: i + 1, dirty: bitmapOf(N, d) }));

  it('predicts stable pages by their held state and leaves the others to phase 2', () => {
    const u = new U2CPredictor(N, constantModel([0.3], [1]), { stable: 'held' });
    const out = new Float32Array(N).fill(-1);
    u.predict(out, 1);
    assert.deepEqual(Array.from(out), [0, 0, 0, 0, 0], 'before any round: send everything');
    feed(u);
    u.predict(out, 1);
    assert.deepEqual(
      Array.from(out, (x) => Number(x.toFixed(4))),
      [1, 0, 0.3, 0.3, 0.3],
    );
    assert.equal(u.lastStable, 2);
  });

  it('ranked scores keep the held order and every decision at 0.5, breaking ties by phase 2', () => {
    const u = new U2CPredictor(N, constantModel([0.3], [1]));
    feed(u);
    const out = new Float32Array(N);
    u.predict(out, 1);
    const e = RANK_EDGE;
    assert.ok(Math.abs(out[0] - (1 - e + e * 0.3)) < 1e-6, `stable dirty ${out[0]}`);
    assert.ok(Math.abs(out[1] - e * 0.3) < 1e-6, `stable clean ${out[1]}`);
    assert.ok(Math.abs(out[2] - (e + (1 - 2 * e) * 0.3)) < 1e-6, `unstable ${out[2]}`);
    const held = new U2CPredictor(N, constantModel([0.3], [1]), { stable: 'held' });
    feed(held);
    const h = new Float32Array(N);
    held.predict(h, 1);
    for (let p = 0; p < N; p++) assert.equal(out[p] >= 0.5, h[p] >= 0.5, `page ${p}`);
  });

  it('answers for the horizon asked: phase 2 per horizon, stable pages for any horizon', () => {
    const u = new U2CPredictor(N, constantModel([0.2, 0.6], [1, 3]), { stable: 'held' });
    feed(u);
    const out = new Float32Array(N);
    u.predict(out, 3);
    assert.deepEqual(Array.from(out.subarray(0, 2)), [1, 0]);
    assert.ok(Math.abs(out[2] - 0.6) < 1e-6);
    u.predict(out, 2);
    assert.ok(Math.abs(out[3] - (1 - 0.8 ** 2)) < 1e-6, 'horizon 2 from the horizon-1 head');
    u.predict(out, 6);
    assert.ok(Math.abs(out[4] - (1 - 0.4 ** 2)) < 1e-6, 'horizon 6 from the horizon-3 head');
    assert.deepEqual(Array.from(out.subarray(0, 2)), [1, 0]);
  });

  it('a longer datashift window changes which pages are stable', () => {
    // Window 3, P 0.5: stable when the last state held in 2 of the last 3 rounds.
    const u = new U2CPredictor(N, constantModel([0.3], [1]), { stable: 'held', datashift: { window: 3 } });
    feed(u);
    const out = new Float32Array(N);
    u.predict(out, 1);
    // page 2: dirty clean dirty: dirty in 2 of 3 -> stable dirty; page 3: dirty once -> 0.3; page 4: clean in 1 of 3.
    assert.deepEqual(
      Array.from(out, (x) => Number(x.toFixed(4))),
      [1, 0, 1, 0.3, 0.3],
    );
  });

  it('the real model predicts a page written every round as dirty and an untouched one as clean', () => {
    const u = new U2CPredictor(N, loadAttentionModel());
    const a = new AttentionPredictor(N, loadAttentionModel());
    for (let i = 1; i <= 10; i++) {
      const o = { round: i, dirty: bitmapOf(N, [0]) };
      u.predict(new Float32Array(N), 3);
      u.observe(o);
      a.observe(o);
    }
    const out = new Float32Array(N);
    u.predict(out, 3);
    assert.ok(out[0] >= 0.5 && out[1] < 0.5, `u2c: ${Array.from(out)}`);
    a.predict(out, 1);
    assert.ok(out[0] > out[1], `attention: ${Array.from(out)}`);
  });

  it('is registered with its parameters, and bad ones are refused', () => {
    assert.equal(createPredictor('u2c:stable=held:window=3', 10).name, 'u2c');
    assert.equal(createPredictor('attention:round=100ms', 10).name, 'attention');
    assert.throws(() => createPredictor('u2c:stable=maybe', 10), UsageError);
    assert.throws(() => createPredictor('attention:round=0s', 10), UsageError);
    assert.throws(() => createPredictor('u2c:model=/nonexistent.json', 10), InputError);
  });
});
