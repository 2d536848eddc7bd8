// The tempo predictor on hand-made histories with known answers (a sweep, its wrap, a whole-region round, a hot
// set that moves, a window in seconds), the selector's round budget, and tempo against pre-copy and the oracle in
// the emulator on a sequential sweep.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { TempoPredictor } from '../src/predict/tempo.ts';
import { holdOverBudget } from '../src/policy/selector.ts';
import { simulate, SCENARIO_DEFAULTS } from '../src/sim/run.ts';
import { Bitmap } from '../src/util/bitmap.ts';

const N = 1000;
const dirty = (pages: Iterable<number>): Bitmap => Bitmap.from(N, pages);
const range = (from: number, to: number): number[] => Array.from({ length: to - from }, (_, i) => from + i);
/** The pages of [lo, hi) whose probability is at least 0.5. */
const likely = (out: Float32Array, lo = 0, hi = N): number[] => range(lo, hi).filter((p) => out[p] >= 0.5);

describe('tempo predictor', () => {
  test('a sweep: the pages ahead of the front, as far as it gets in the window, and none behind it', () => {
    // Region [100, 600), the front moving 50 pages/s, rounds of 2 s: 100 pages per round.
    const window = { seconds: 2 };
    const t = new TempoPredictor(N, { margin: 0 }, window);
    for (let k = 0; k < 3; k++)
      t.observe({ round: k + 1, dirty: dirty(range(100 + k * 100, 200 + k * 100)), seconds: 2 });
    assert.deepEqual(t.front && { lo: t.front.lo, front: t.front.front, speed: t.front.speed }, {
      lo: 100,
      front: 400,
      speed: 50,
    });
    const out = new Float32Array(N);
    t.predict(out);
    assert.deepEqual(likely(out), range(400, 500), 'the next 2 s of the front');
    // A longer window reaches further; a horizon of two rounds as far as a window twice as long.
    window.seconds = 3;
    t.predict(out);
    assert.deepEqual(likely(out), range(400, 550));
    window.seconds = 1;
    t.predict(out, 2);
    assert.deepEqual(likely(out), range(400, 500));
  });

  test('a sweep that comes around: the region is known whole and the front wraps from its end to its start', () => {
    const window = { seconds: 2 };
    const t = new TempoPredictor(N, { margin: 0 }, window);
    // Region [100, 400): 300 pages, 100 per round; round 4 wraps to 100 again.
    for (let k = 0; k < 5; k++) {
      const from = 100 + ((k * 100) % 300);
      t.observe({ round: k + 1, dirty: dirty(range(from, from + 100)), seconds: 2 });
    }
    assert.equal(t.front?.wrapped, true);
    assert.deepEqual([t.front?.lo, t.front?.hi, t.front?.front], [100, 400, 300]);
    window.seconds = 3; // 150 pages: 300..399, then 100..149
    const out = new Float32Array(N);
    t.predict(out);
    assert.deepEqual(likely(out), [...range(100, 150), ...range(300, 400)]);
  });

  test('a round that wrote the whole region: the front is unknown, every page as likely as the window says', () => {
    const window = { seconds: 10 };
    const t = new TempoPredictor(N, {}, window);
    t.observe({ round: 1, dirty: dirty(range(0, 500)), seconds: 10 });
    t.observe({ round: 2, dirty: dirty(range(0, 500)), seconds: 10 });
    assert.equal(t.front?.front, null);
    const out = new Float32Array(N);
    t.predict(out);
    assert.ok(out[0] >= 0.5 && out[499] >= 0.5 && out[500] === 0, `${out[0]} ${out[499]} ${out[500]}`);
    // A round a hundredth as long: a page of the region is then unlikely to be written in it.
    window.seconds = 0.1;
    t.predict(out);
    assert.ok(out[0] < 0.1, `${out[0]}`);
  });

  test('a run that stays where it is (a hot region, not a front) is left to the rate model', () => {
    // As in NPB-CG: the same long run of pages dirty sample after sample, its end wavering.
    const t = new TempoPredictor(N, {}, { seconds: 1 });
    for (let r = 1; r <= 6; r++)
      t.observe({ round: r, dirty: dirty(range(100, r % 2 ? 300 : 290)), seconds: 1 });
    assert.equal(t.front?.confirmed, false);
    const out = new Float32Array(N);
    t.predict(out);
    // Every page of the run by its own rate: always dirty, or (290..299) in every other round.
    assert.deepEqual(likely(out), range(100, 290));
    assert.ok(out[295] > 0.2 && out[295] < 0.5, `${out[295]}`);
  });

  test('a hot set that moves: the new one is predicted within a few rounds, the old one forgotten', () => {
    const t = new TempoPredictor(N);
    const hotA = range(0, 50).map((i) => i * 7); // scattered: no run long enough to be a front
    const hotB = range(0, 50).map((i) => 500 + i * 7 + 3);
    for (let r = 1; r <= 4; r++) t.observe({ round: r, dirty: dirty(hotA), seconds: 1 });
    const out = new Float32Array(N);
    t.predict(out);
    assert.deepEqual(likely(out), hotA);
    for (let r = 5; r <= 8; r++) t.observe({ round: r, dirty: dirty(hotB), seconds: 1 });
    t.predict(out);
    assert.deepEqual(likely(out), hotB);
    assert.ok(out[hotA[3]] < 0.1, `the old hot set fades (${out[hotA[3]]})`);
    assert.equal(t.front, null);
  });

  test('a rate per second: a page dirty in half the rounds is likelier written in a window twice as long', () => {
    const window = { seconds: 1 };
    const t = new TempoPredictor(N, { decay: 1 }, window);
    for (let r = 1; r <= 8; r++) t.observe({ round: r, dirty: dirty(r % 2 ? [42] : []), seconds: 1 });
    const out = new Float32Array(N);
    t.predict(out);
    const one = out[42];
    window.seconds = 2;
    t.predict(out);
    assert.ok(Math.abs(one - 0.5) < 1e-6, `${one}`);
    assert.ok(Math.abs(out[42] - 0.75) < 1e-6, `${out[42]}`);
  });
});

describe("a round's budget", () => {
  test('the pages predicted clean longest go first, then the lowest addresses; the others wait', () => {
    const pending = Bitmap.from(10, range(0, 10));
    const held = Bitmap.from(10, [9]); // held already by the prediction
    const cleanFor = Uint8Array.from([0, 5, 2, 5, 0, 3, 5, 1, 0, 5]);
    holdOverBudget(cleanFor, pending, held, 4);
    // Sent: 1, 3, 6 (clean for all horizons), then 5 (3 of them); 9 was held before.
    assert.deepEqual([...held.toArray()], [0, 2, 4, 7, 8, 9]);
  });
});

describe('tempo in the emulator', () => {
  test('on a sequential sweep faster than the link can keep up with, the stop carries far less than pre-copy', async () => {
    const run = (strategy: string) =>
      simulate({ ...SCENARIO_DEFAULTS, workload: 'memchange:high', memoryBytes: 64 * 2 ** 20, strategy });
    const [pre, oracle, tempo] = await Promise.all(
      ['precopy:max-rounds=60', 'oracle:max-rounds=60', 'tempo'].map(run),
    );
    for (const r of [pre, oracle, tempo]) assert.equal(r.pagesVerified > 0, true);
    const ms = (r: typeof pre) => Math.round(r.metrics.downtime * 1000);
    assert.ok(
      tempo.metrics.downtime < pre.metrics.downtime / 2,
      `tempo ${ms(tempo)} ms, pre-copy ${ms(pre)} ms, oracle ${ms(oracle)} ms`,
    );
  });
});
