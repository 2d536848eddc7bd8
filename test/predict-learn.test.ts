// The learn predictor on hand-made histories with known answers: a moving front, a page rewritten every 3 rounds, a
// hot set, a hot set that moves, horizons; each case also runs a predictor known to get it wrong, so the assertion
// is shown to be able to fail. Determinism, the prior before any observation, and the registry's parameters.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createPredictor } from '../src/predict/index.ts';
import { LearnPredictor } from '../src/predict/learn.ts';
import { rocAuc } from '../src/predict/metrics.ts';
import type { Predictor } from '../src/predict/types.ts';
import { Bitmap } from '../src/util/bitmap.ts';
import { UsageError } from '../src/util/errors.ts';

const N = 1024;
const range = (from: number, to: number): number[] => Array.from({ length: to - from }, (_, i) => from + i);

/** Deterministic noise: page p is written in round r with probability `share`. */
const noise = (r: number, share: number): number[] =>
  range(0, N).filter(
    (p) => ((Math.imul(p + 1, 0x9e3779b1) ^ Math.imul(r + 7, 0x85ebca6b)) >>> 0) % 1000 < share * 1000,
  );

/** Feeds rounds[0..upto) to the predictor (1-based rounds). */
function feed(pred: Predictor, rounds: number[][], from: number, upto: number): void {
  for (let r = from; r < upto; r++) pred.observe({ round: r + 1, dirty: Bitmap.from(N, rounds[r]) });
}

function predict(pred: Predictor, horizon = 1): Float32Array {
  const out = new Float32Array(N);
  pred.predict(out, horizon);
  return out;
}

/** ROC AUC of the scores of pages [lo, hi) against those of them written in the next round. */
function auc(scores: Float32Array, next: number[], lo = 0, hi = N): number {
  const dirty = new Set(next);
  const pages = range(lo, hi);
  const pos = pages.filter((p) => dirty.has(p)).map((p) => scores[p]);
  const neg = pages.filter((p) => !dirty.has(p)).map((p) => scores[p]);
  return rocAuc(Float32Array.from(pos), Float32Array.from(neg));
}

/** Pages at or above 0.5. */
const held = (scores: Float32Array): number[] => range(0, N).filter((p) => scores[p] >= 0.5);

describe('learn predictor', () => {
  test('a moving front: the pages just ahead of it, not those it has just written', () => {
    // Region [64, 448): the front writes the next 16 pages each round and wraps (24 rounds per sweep), with a little
    // noise elsewhere.
    const rounds = range(0, 80).map((r) => {
      const at = 64 + ((r * 16) % 384);
      return [...range(at, at + 16), ...noise(r, 0.01).filter((p) => p < 64 || p >= 448)];
    });
    const check = (pred: Predictor): { minAuc: number; ahead: boolean } => {
      feed(pred, rounds, 0, 60);
      let minAuc = 1;
      let ahead = true;
      for (let r = 60; r < 70; r++) {
        const out = predict(pred);
        const next = rounds[r];
        minAuc = Math.min(minAuc, auc(out, next, 64, 448));
        const front = next.filter((p) => p >= 64 && p < 448);
        const behind = rounds[r - 1].filter((p) => p >= 64 && p < 448);
        ahead &&= front.filter((p) => out[p] >= 0.5).length >= 12 && behind.every((p) => out[p] < 0.5);
        feed(pred, rounds, r, r + 1);
      }
      return { minAuc, ahead };
    };
    const learn = check(new LearnPredictor(N));
    assert.ok(learn.minAuc > 0.99, `AUC per round in the region at least ${learn.minAuc}`);
    assert.ok(learn.ahead, 'most of the 16 pages ahead of the front are held, none of the 16 just written');
    // The frequency baseline holds the pages just written: the assertion can fail.
    const recent = check(createPredictor('recent', N));
    assert.ok(recent.minAuc < 0.9 && !recent.ahead, `recent: ${recent.minAuc}`);
  });

  test('a period: pages rewritten every 3 rounds are predicted on the round they are due, not on the others', () => {
    const periodic = range(100, 150);
    const rounds = range(0, 60).map((r) => [
      ...(r % 3 === 2 ? periodic : []),
      ...noise(r, 0.02).filter((p) => p < 100 || p >= 150),
    ]);
    const check = (pred: Predictor): boolean => {
      feed(pred, rounds, 0, 40);
      let right = true;
      for (let r = 40; r < 46; r++) {
        const out = predict(pred);
        const due = r % 3 === 2;
        right &&= periodic.every((p) => out[p] >= 0.5 === due);
        feed(pred, rounds, r, r + 1);
      }
      return right;
    };
    assert.ok(check(new LearnPredictor(N)), 'held exactly on the rounds they are due');
    // A first-order chain sees the same "clean" state one and two rounds before the write: it cannot tell them apart.
    assert.ok(!check(createPredictor('markov', N)), 'markov');
  });

  test('a hot set: the pages written every round are held, the others (written now and then) are not', () => {
    const hot = range(0, 64).map((i) => i * 13 + 5);
    const rounds = range(0, 20).map((r) => [...new Set([...hot, ...noise(r, 0.05)])]);
    const pred = new LearnPredictor(N);
    feed(pred, rounds, 0, 12);
    assert.deepEqual(held(predict(pred)), hot);
    // The baseline also holds what the noise wrote in the last three rounds: the assertion can fail.
    const recent = createPredictor('recent', N);
    feed(recent, rounds, 0, 12);
    assert.notDeepEqual(held(predict(recent)), hot);
    // Before any label (one round seen), nothing is held: no evidence yet.
    const fresh = new LearnPredictor(N);
    feed(fresh, rounds, 0, 1);
    assert.deepEqual(held(predict(fresh)), []);
  });

  test('a phase change: the hot set moves and the predictor follows within 4 rounds', () => {
    const a = range(0, 60).map((i) => i * 7);
    const b = range(0, 60).map((i) => 500 + i * 7 + 3);
    const quiet = (p: number): boolean => !a.includes(p) && !b.includes(p);
    const rounds = range(0, 40).map((r) => [...(r < 25 ? a : b), ...noise(r, 0.02).filter(quiet)]);
    const check = (pred: Predictor): boolean => {
      feed(pred, rounds, 0, 29);
      const out = predict(pred);
      return b.every((p) => out[p] >= 0.5) && a.every((p) => out[p] < 0.5);
    };
    assert.ok(check(new LearnPredictor(N)), 'the new hot set held, the old one let go');
    // The long-run rate (pr) still holds the old set: the assertion can fail.
    assert.ok(!check(createPredictor('pr', N)), 'pr');
  });

  test('horizons: within 3 rounds, a page rewritten every 3 rounds is likely on every round', () => {
    const periodic = range(300, 340);
    const rounds = range(0, 50).map((r) => [
      ...(r % 3 === 0 ? periodic : []),
      ...noise(r, 0.02).filter((p) => p < 300 || p >= 340),
    ]);
    const pred = new LearnPredictor(N);
    feed(pred, rounds, 0, 30);
    for (let r = 30; r < 36; r++) {
      const one = predict(pred, 1);
      const three = predict(pred, 3);
      assert.ok(
        periodic.every((p) => three[p] >= 0.5),
        `round ${r}: horizon 3 ${three[periodic[0]]}`,
      );
      assert.equal(
        periodic.every((p) => one[p] >= 0.5),
        r % 3 === 0,
        `round ${r}: horizon 1 ${one[periodic[0]]}`,
      );
      const quiet = range(0, N).filter((p) => !periodic.includes(p));
      assert.ok(
        quiet.every((p) => three[p] < 0.5),
        'the noise stays below 0.5 at horizon 3',
      );
      feed(pred, rounds, r, r + 1);
    }
  });

  test('deterministic: the same rounds give the same predictions, bit for bit, at every horizon', () => {
    const rounds = range(0, 30).map((r) => noise(r, 0.1 + 0.05 * Math.sin(r)));
    const run = (): Float32Array[] => {
      const pred = createPredictor('learn', N, { seed: 7 });
      const outs: Float32Array[] = [];
      for (let r = 0; r < 30; r++) {
        feed(pred, rounds, r, r + 1);
        outs.push(predict(pred, 1), predict(pred, 2));
      }
      return outs;
    };
    assert.deepEqual(run(), run());
  });

  test('before any observation it predicts 0; createPredictor takes its parameters', () => {
    const out = new Float32Array(N).fill(0.3);
    new LearnPredictor(N).predict(out);
    assert.ok(out.every((x) => x === 0));
    assert.equal(createPredictor('learn:decay=0.9:cap=8:sample=256:rate=0.001', N).name, 'learn');
    const usage = (spec: string, why: RegExp): void =>
      assert.throws(
        () => createPredictor(spec, N),
        (e: Error) => e instanceof UsageError && why.test(e.message),
        spec,
      );
    usage('learn:decay=2', /decay "2" must be between 0 and 1/);
    usage('learn:sample=0', /sample "0" must be a whole number >= 1/);
    usage('learn:rate=0', /rate "0" must be a number > 0/);
    usage(
      'learn:depth=3',
      /unknown predictor parameter "depth" for learn; accepted: decay, sample, rate, cap/,
    );
  });
});
