import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseStrategy } from '../src/policy/index.ts';
import { predictedRounds } from '../src/policy/iterpredict.ts';
import type { DecisionInput, RoundSummary } from '../src/policy/types.ts';

const PAGES = 131072; // 512 MiB
const round = (n: number, dirtyPages: number, duration = 10, pagesSent = PAGES): RoundSummary => ({
  round: n,
  duration,
  pagesSent,
  bytes: pagesSent * 4096,
  dirtyPages,
});
const input = (
  history: RoundSummary[],
  pendingPages: number,
  extra: Partial<DecisionInput> = {},
): DecisionInput => ({
  round: history.length + 1,
  history,
  pageSize: 4096,
  totalPages: PAGES,
  pendingPages,
  bytesSent: history.reduce((a, r) => a + r.bytes, 0),
  linkRate: 12.5e6,
  ...extra,
});

test('cold stops at once with stop-and-copy', () => {
  const d = parseStrategy('cold').decide(input([], PAGES));
  assert.deepEqual(d, { stop: true, switchover: 'stop-and-copy', converged: null, reason: 'cold migration' });
});

test('postcopy stops at once and switches over to post-copy', () => {
  const d = parseStrategy('postcopy').decide(input([], PAGES));
  assert.equal(d.stop, true);
  assert.equal(d.stop && d.switchover, 'postcopy');
});

test('hybrid runs the configured pre-copy rounds, then post-copy', () => {
  const h = parseStrategy('hybrid:rounds=2');
  assert.equal(h.decide(input([], PAGES)).stop, false);
  assert.equal(h.decide(input([round(1, 500)], 500)).stop, false);
  const d = h.decide(input([round(1, 500), round(2, 400)], 400));
  assert.equal(d.stop && d.switchover, 'postcopy');
  assert.equal(parseStrategy('hybrid:rounds=1').decide(input([round(1, 5)], 5)).stop, true, 'one round');
});

test('hybrid (rounds=auto, the default): pre-copy while the predicted pending set shrinks, then post-copy', () => {
  const h = parseStrategy('hybrid');
  assert.match(h.spec, /^hybrid:rounds=auto:k=1:/);
  const history = [round(1, 5000)];
  const on = h.decide(input(history, 3000, { forecast: [2000] }));
  assert.equal(on.stop, false, 'predicted to shrink: another round');
  const d = h.decide(input(history, 3000, { forecast: [3500] }));
  assert.equal(d.stop, true, 'predicted to grow: stop');
  assert.equal(d.stop && d.switchover, 'postcopy', 'and switch over to post-copy');
  assert.match(d.stop ? d.reason : '', /predicted minimum now.*post-copy for the rest/);
  assert.equal(parseStrategy('hybrid:rounds=2').spec, 'hybrid:rounds=2');
  assert.throws(() => parseStrategy('hybrid:rounds=never'), /rounds/);
});

test('precopy (xen) always sends round 1, then stops below 50 pages as converged', () => {
  const p = parseStrategy('precopy');
  assert.equal(p.decide(input([], 0)).stop, false, 'round 1 goes even with nothing pending');
  assert.equal(p.decide(input([round(1, 50)], 50)).stop, false, '50 pages left is not fewer than 50');
  const d = p.decide(input([round(1, 49)], 49));
  assert.equal(d.stop && d.converged, true);
});

test('precopy (xen) caps at 30 rounds and at 3x memory sent, not converged', () => {
  const p = parseStrategy('precopy');
  const h29 = Array.from({ length: 29 }, (_, i) => round(i + 1, 1000, 1, 1000));
  assert.equal(p.decide(input(h29, 1000)).stop, false);
  const h30 = [...h29, round(30, 1000, 1, 1000)];
  const d = p.decide(input(h30, 1000));
  assert.equal(d.stop && d.converged, false);
  assert.match(d.stop ? d.reason : '', /30 rounds/);
  const capped = p.decide(input([round(1, 1000)], 1000, { bytesSent: 3 * PAGES * 4096 }));
  assert.equal(capped.stop && capped.converged, false);
  assert.match(capped.stop ? capped.reason : '', /3x memory/);
  const under = p.decide(input([round(1, 1000)], 1000, { bytesSent: 3 * PAGES * 4096 - 1 }));
  assert.equal(under.stop, false);
});

test('precopy (qemu) stops when the rest fits the downtime limit at the measured rate', () => {
  const q = parseStrategy('precopy:rule=qemu:downtime=300ms');
  // 12.5e6 B/s * 0.3 s = 3.75e6 B = 915.5 pages
  assert.equal(q.decide(input([round(1, 915)], 915)).stop, true);
  assert.equal(q.decide(input([round(1, 916)], 916)).stop, false);
  // a slower measured link makes the same pages too many
  assert.equal(q.decide(input([round(1, 915)], 915, { linkRate: 6e6 })).stop, false);
  // QEMU's rule does not use Xen's 50-page rule
  assert.equal(parseStrategy('precopy:rule=qemu:downtime=1ms').decide(input([round(1, 10)], 10)).stop, false);
});

test('predictedRounds follows N = ceil(log_{R*C/S}(T/D1) + 1)', () => {
  // R*C/S = 0.5, T/D1 = 50/131072: log_0.5(3.8147e-4) = 11.356 -> ceil(12.356) = 13
  assert.equal(predictedRounds(1525.87890625, 4096, 12.5e6, 50, 131072), 13);
  // R*C/S = 0.1: log_0.1(3.8147e-4) = 3.418 -> 5
  assert.equal(predictedRounds(305.17578125, 4096, 12.5e6, 50, 131072), 5);
  assert.ok(Number.isNaN(predictedRounds(3100, 4096, 12.5e6, 50, 131072)), 'dirty rate above link speed');
  assert.ok(
    Number.isNaN(predictedRounds(12.5e6 / 4096, 4096, 12.5e6, 50, 131072)),
    'dirty rate equal to link speed',
  );
});

test('iterpredict averages the dirty rate over finished rounds and stops when N exceeds the limit', () => {
  const s = parseStrategy('iterpredict');
  // round 1: 10 s, 15259 dirty pages -> R = 1525.9 pages/s -> ratio 0.5 -> N = 13: go on
  const r1 = round(1, 15259, 10);
  assert.equal(s.decide(input([r1], 15259)).stop, false);
  // round 2 at a much higher rate: average R = (1525.9 + 4500) / 2 = 3013 -> ratio 0.987 -> N huge: stop now
  const r2 = round(2, 4500, 1, 15259);
  const d = s.decide(input([r1, r2], 4500));
  assert.equal(d.stop && d.converged, false);
  assert.match(d.stop ? d.reason : '', /predicted \d+ rounds > limit 30/);
});

test('iterpredict stops at once when the dirty rate reaches the link speed', () => {
  const d = parseStrategy('iterpredict').decide(input([round(1, 40000, 10)], 40000));
  assert.equal(d.stop && d.converged, false);
  assert.match(d.stop ? d.reason : '', /at or above link speed/);
});

test('iterpredict stops when the predicted round count is reached, or fewer than T pages are left', () => {
  const s = parseStrategy('iterpredict:threshold=50');
  // ratio 0.1 -> N = 5: rounds 1..4 continue, after round 5 stop
  const h = Array.from({ length: 4 }, (_, i) => round(i + 1, 3051.7578125, 10, i === 0 ? PAGES : 3000));
  assert.equal(s.decide(input(h, 3000)).stop, false);
  const d = s.decide(input([...h, round(5, 3051.7578125, 10, 3000)], 3000));
  assert.equal(d.stop && d.converged, true);
  assert.match(d.stop ? d.reason : '', /predicted 5 rounds reached/);
  const few = s.decide(input([round(1, 49)], 49));
  assert.equal(few.stop && few.converged, true);
});

test('strategy specs reject unknown names and parameters with the accepted ones', () => {
  assert.throws(() => parseStrategy('warp'), /unknown strategy "warp"; accepted: .*precopy/);
  assert.throws(
    () => parseStrategy('precopy:speed=3'),
    /unknown strategy parameter "speed" .*accepted: rule/,
  );
  assert.throws(() => parseStrategy('precopy:rule=vmware'), /accepted: xen, qemu/);
  assert.throws(() => parseStrategy('hybrid:rounds=0'), /whole number >= 1/);
  assert.throws(() => parseStrategy('precopy:downtime=3XS'), /unknown unit/);
});
