import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { precog } from './support/cli.ts';
import { Bitmap } from '../src/util/bitmap.ts';
import { UsageError } from '../src/util/errors.ts';
import { VirtualClock } from '../src/util/clock.ts';
import { ContentPool } from '../src/memory/content.ts';
import { EmulatedMemory } from '../src/memory/emulated.ts';
import { parseWorkload } from '../src/memory/workloads.ts';
import { parseStrategy, STRATEGY_NAMES } from '../src/policy/index.ts';
import { skipStrategy, u2cStrategy } from '../src/policy/predictive.ts';
import { forecastPending, type PredictorFactory } from '../src/policy/selector.ts';
import type { DecisionInput, RoundSummary } from '../src/policy/types.ts';
import type { Predictor, RoundObservation } from '../src/predict/types.ts';
import { SYSTEM_FEATURE_COUNT, SYSTEM_FEATURES } from '../src/predict/features.ts';
import { WorkloadLookahead } from '../src/sim/lookahead.ts';
import { simulate, SCENARIO_DEFAULTS, type Scenario } from '../src/sim/run.ts';
import { deriveSeed } from '../src/util/prng.ts';

const MiB = 2 ** 20;
const PAGES = 4096; // 16 MiB
const small = (over: Partial<Scenario>): Scenario => ({
  ...SCENARIO_DEFAULTS,
  memoryBytes: 16 * MiB,
  bandwidth: 10e6,
  ...over,
});

/** A hand-made predictor: probability 1 for the pages `dirty(observations)` names, 0 elsewhere. */
class ListPredictor implements Predictor {
  readonly name = 'list';
  readonly pageCount: number;
  readonly seen: RoundObservation[] = [];
  readonly horizons: number[] = [];
  private readonly dirty: (observed: number) => Iterable<number>;

  constructor(pageCount: number, dirty: (observed: number) => Iterable<number>) {
    this.pageCount = pageCount;
    this.dirty = dirty;
  }

  observe(o: RoundObservation): void {
    this.seen.push(o);
  }

  predict(out: Float32Array, horizon = 1): void {
    this.horizons.push(horizon);
    out.fill(0);
    for (const p of this.dirty(this.seen.length)) out[p] = 1;
  }
}

const range = (from: number, to: number): number[] => Array.from({ length: to - from }, (_, i) => from + i);

/** A factory that keeps the predictor it made, to look at it after the run. */
function made(dirty: (observed: number) => Iterable<number>): {
  factory: PredictorFactory;
  last: () => ListPredictor;
} {
  let p: ListPredictor | null = null;
  return {
    factory: (env) => (p = new ListPredictor(env.pageCount, dirty)),
    last: () => p!,
  };
}

test('held pages stay pending and go in a later round once predicted clean; each page sent once', async () => {
  // pages 0..99 are predicted dirty until the first observation, clean after it
  const m = made((observed) => (observed === 0 ? range(0, 100) : []));
  const r = await simulate(small({ workload: 'idle', seed: 3 }), {
    strategy: skipStrategy('test', m.factory, { minPages: 1, trust: 0 }),
  });
  const live = r.metrics.rounds.filter((x) => x.phase === 'live');
  assert.equal(live.length, 2);
  assert.equal(live[0].pagesSkipped, 100);
  assert.equal(live[0].pagesSent, PAGES - 100);
  assert.equal(live[1].pagesSkipped, 0);
  assert.equal(live[1].pagesSent, 100, 'the held pages go once predicted clean');
  assert.equal(r.metrics.pagesSent, PAGES, 'no page sent twice');
  assert.equal(r.pagesVerified, PAGES);
});

test('pages held until the stop go in the stop-and-copy, and the destination matches byte for byte', async () => {
  // pages 0..99 are never written but always predicted dirty; the workload rewrites a 4 MiB buffer at page 512
  const m = made(() => range(0, 100));
  const workload = 'memchange:rate=0.5MB/s:pattern=random:buffer=4MiB';
  const r = await simulate(small({ workload }), {
    strategy: skipStrategy('test', m.factory, { trust: 0, maxRounds: 3 }),
  });
  const live = r.metrics.rounds.filter((x) => x.phase === 'live');
  const stop = r.metrics.rounds.find((x) => x.phase === 'stop')!;
  assert.equal(live.length, 3);
  assert.equal(live[0].pagesSent, PAGES - 100);
  assert.deepEqual(
    live.map((x) => x.pagesSkipped),
    [100, 100, 100],
    'held in every live round',
  );
  assert.ok(live.slice(1).every((x) => x.pagesSent > 0 && x.pagesSent === x.pagesResent));
  assert.equal(stop.pagesSent - stop.pagesResent, 100, 'the held pages are first sent while stopped');
  assert.equal(r.pagesVerified, PAGES);
});

test('when holding would leave almost nothing to send, the round sends everything pending', async () => {
  const m = made(() => range(0, 100));
  const r = await simulate(small({ workload: 'idle' }), {
    strategy: skipStrategy('test', m.factory, { trust: 0, minPages: 50 }),
  });
  const live = r.metrics.rounds.filter((x) => x.phase === 'live');
  assert.deepEqual(
    live.map((x) => [x.pagesSent, x.pagesSkipped]),
    [
      [PAGES - 100, 100],
      [100, 0],
    ],
  );
  assert.match(r.metrics.stopReason, /0 pages left/);
});

test('holds wait until the predictor has proven itself on a round, and stop while it is wrong', async () => {
  // hotspot: the first 204 pages of a 1024-page buffer at page 512 take 80 % of the writes
  const workload = 'memchange:rate=0.5MB/s:pattern=hotspot:buffer=4MiB';
  const hot = made(() => range(512, 512 + 204));
  const right = await simulate(small({ workload }), { strategy: skipStrategy('test', hot.factory) });
  const held = right.metrics.rounds.filter((x) => x.phase === 'live').map((x) => x.pagesSkipped);
  assert.equal(held[0], 0, 'round 1: nothing checked yet, nothing held');
  assert.ok(held[1] > 150, `round 2 holds the hot pages (${held.join(',')})`);
  assert.equal(right.pagesVerified, PAGES);
  // a predictor naming pages that are never written is never trusted
  const wrong = made(() => range(0, 300));
  const w = await simulate(small({ workload }), { strategy: skipStrategy('test', wrong.factory) });
  assert.ok(w.metrics.rounds.every((x) => x.pagesSkipped === 0));
  // the same predictor trusted from the start holds its pages until little else is left, then lets them go
  const blind = await simulate(small({ workload }), {
    strategy: skipStrategy('test', made(() => range(0, 300)).factory, { trust: 0 }),
  });
  const live = blind.metrics.rounds.filter((x) => x.phase === 'live');
  const release = live.findIndex((x) => x.pagesSkipped === 0);
  assert.ok(release >= 3, `held in rounds 1..${release}`);
  assert.ok(live.slice(0, release).every((x) => x.pagesSkipped === 300));
  assert.ok(live[release].pagesSent >= 300, 'released: sent with what was left');
  assert.equal(blind.pagesVerified, PAGES);
});

test('the engine feeds the selector every live round: dirty pages, accessed pages, 1-based round numbers', async () => {
  const m = made(() => []);
  const r = await simulate(small({ workload: 'memchange:rate=2MB/s:pattern=random' }), {
    strategy: skipStrategy('test', m.factory),
  });
  const p = m.last();
  const live = r.metrics.rounds.filter((x) => x.phase === 'live');
  assert.ok(live.length >= 2);
  assert.deepEqual(
    p.seen.map((o) => o.round),
    live.map((x) => x.round),
  );
  p.seen.forEach((o, i) => {
    assert.equal(o.dirty.count(), live[i].dirtyPages, `round ${o.round}: the round's dirty pages`);
    assert.ok(o.accessed, 'the emulator provides accessed bits');
    assert.equal(
      o.accessed.clone().and(o.dirty).count(),
      o.dirty.count(),
      'written pages are accessed pages',
    );
  });
  assert.ok(
    p.horizons.every((h) => h === 1),
    'skip strategies predict one round ahead',
  );
});

test('a trace with read accesses gives accessed bits beyond the written pages', async () => {
  const trace = new URL('./data/npb-cg-B-dirty.json.gz', import.meta.url).pathname;
  const m = made(() => []);
  await simulate(
    { ...SCENARIO_DEFAULTS, workload: `trace:file=${trace}`, bandwidth: 1e9 },
    { strategy: skipStrategy('test', m.factory) },
  );
  const seen = m.last().seen;
  assert.ok(seen.length >= 1);
  assert.ok(seen.some((o) => o.accessed!.count() > o.dirty.count()));
});

test("the oracle's lookahead names exactly the pages the workload then writes", () => {
  for (const spec of ['memchange:rate=3MB/s:pattern=hotspot', 'hotcold:rate=2MB/s']) {
    const plan = parseWorkload(spec, 16 * MiB);
    const clock = new VirtualClock();
    const pool = new ContentPool(1, 4096);
    const seed = deriveSeed(9, 'workload');
    const mem = new EmulatedMemory(plan.layout, pool, plan.create(pool, seed), clock, 0, 2);
    const look = new WorkloadLookahead(plan, seed, clock, 1.25e6);
    mem.collectDirty();
    for (const step of [0.5, 2, 0.01, 3]) {
      const future = look.written(step);
      assert.equal(
        look
          .written(step / 2)
          .clone()
          .andNot(future)
          .count(),
        0,
        'a shorter look sees less',
      );
      clock.advance(step);
      const actual = mem.collectDirty();
      assert.ok(actual.count() > 0, spec);
      assert.deepEqual(future.words, actual.words, `${spec}: ${step} s ahead`);
    }
  }
});

test('forecast: per-page rates from one-round probabilities, rounds as long as what is sent', () => {
  // 100 pages at probability 0.5 per 1 s round, none held, 0.01 s per page: round 1 takes 1 s and dirties half
  const prob = new Float32Array(200);
  prob.fill(0.5, 0, 100);
  const held = new Bitmap(200);
  const f = forecastPending(prob, held, 100, 1, 0.01, 3);
  let send = 100;
  const expected = [0, 1, 2].map(() => (send = 100 * (1 - 2 ** -(send * 0.01))));
  f.forEach((x, i) => assert.ok(Math.abs(x - expected[i]) < 1e-3, `${x} vs ${expected[i]}`));
  // a calibration factor scales what each round dirties, and so the length of the rounds after it
  const scaled = forecastPending(prob, held, 100, 1, 0.01, 2, 0.5);
  assert.ok(Math.abs(scaled[0] - 25) < 1e-3);
  assert.ok(Math.abs(scaled[1] - 0.5 * 100 * (1 - 2 ** -0.25)) < 1e-3);
  // held pages stay pending whatever happens; sending less makes shorter rounds and smaller dirty sets
  for (let p = 0; p < 50; p++) held.set(p);
  const g = forecastPending(prob, held, 100, 1, 0.01, 2);
  assert.ok(Math.abs(g[0] - (50 + 50 * (1 - 2 ** -0.5))) < 1e-3);
  assert.ok(g[1] < g[0]);
  // certain pages (probability 1, read as 0.99) are dirtied by a round a tenth as long with 1 - 0.01^0.1
  prob.fill(1, 0, 100);
  const short = forecastPending(prob, new Bitmap(200), 100, 1, 0.001, 1)[0];
  assert.ok(Math.abs(short - 100 * (1 - 0.01 ** 0.1)) < 0.01, String(short));
  // never more pending pages than there are pages
  assert.ok(forecastPending(prob, new Bitmap(200), 100, 1, 0.01, 1, 20)[0] <= 200);
});

const summary = (n: number, dirtyPages: number): RoundSummary => ({
  round: n,
  duration: 2,
  pagesSent: 1000,
  bytes: 1000 * 4096,
  dirtyPages,
});
const input = (pending: number, extra: Partial<DecisionInput> = {}): DecisionInput => ({
  round: 2,
  history: [summary(1, pending)],
  pageSize: 4096,
  totalPages: 100_000,
  pendingPages: pending,
  bytesSent: 1000 * 4096,
  linkRate: 12.5e6,
  ...extra,
});
const none: PredictorFactory = (env) => new ListPredictor(env.pageCount, () => []);

test('u2c stops at the round whose predicted pending set is the smallest of now and the next k', () => {
  const u = u2cStrategy(none, { k: 3 });
  assert.equal(u.decide({ ...input(5000), history: [] }).stop, false, 'round 1 always goes');
  // shrinking forecast: go on
  assert.equal(u.decide(input(5000, { heldPages: 1000, forecast: [3000, 2000, 1900] })).stop, false);
  // a later round would be smaller than the next: go on (the minimum is ahead)
  assert.equal(u.decide(input(5000, { heldPages: 1000, forecast: [5200, 4900, 6000] })).stop, false);
  // now is the smallest of the next 3: stop, converged
  const d = u.decide(input(5000, { heldPages: 1000, forecast: [5100, 5000, 6000] }));
  assert.equal(d.stop && d.converged, true);
  assert.match(d.stop ? d.reason : '', /predicted minimum now: 5000 pending, next 3 rounds 5100\/5000\/6000/);
  // without a forecast (no observation yet) the caps rule
  assert.equal(u.decide(input(5000, { heldPages: 0 })).stop, false);
  const capped = u.decide(input(5000, { heldPages: 0, bytesSent: 3 * 100_000 * 4096 }));
  assert.equal(capped.stop && capped.converged, false);
  assert.equal(u.decide(input(49, { heldPages: 0 })).stop, true, "Xen's pages-left rule");
});

test("skip strategies stop with Xen's rules and report what they hold", () => {
  const s = skipStrategy('test', none, { minPages: 50 });
  assert.deepEqual(s.decide(input(5000, { heldPages: 4990 })), {
    stop: false,
    reason: 'holding 4990 of 5000 pending pages',
  });
  const d = s.decide(input(49, { heldPages: 0 }));
  assert.equal(d.stop && d.converged, true, "Xen's pages-left rule");
  const h30 = Array.from({ length: 30 }, (_, i) => summary(i + 1, 5000));
  const capped = s.decide(input(5000, { heldPages: 0, history: h30 }));
  assert.equal(capped.stop && capped.converged, false);
  assert.match(capped.stop ? capped.reason : '', /30 rounds/);
  const data = s.decide(input(5000, { heldPages: 0, bytesSent: 3 * 100_000 * 4096 }));
  assert.match(data.stop ? data.reason : '', /3x memory/);
});

test('the emulator gives the selector emulated system features of each round', async () => {
  const m = made(() => []);
  await simulate(small({ workload: 'memchange:rate=2MB/s:pattern=random' }), {
    strategy: skipStrategy('test', m.factory),
  });
  for (const o of m.last().seen) {
    assert.equal(o.system?.length, SYSTEM_FEATURE_COUNT);
    const share = o.system![SYSTEM_FEATURES.indexOf('dirty-share')];
    assert.ok(Math.abs(share - o.dirty.count() / PAGES) < 1e-6, `round ${o.round}: dirty share`);
  }
});

const PREDICTIVE = ['markov', 'pr', 'mbdp', 'mbdpc', 'u2c', 'oracle'];
const ATTENTION_MODEL = new URL('../models/attention.json', import.meta.url).pathname;
const missing = (name: string): string | false =>
  name === 'u2c' && !existsSync(ATTENTION_MODEL) ? 'models/attention.json (u2c) is not trained yet' : false;

test('every predictive strategy is registered and builds from its spec, parameters spelled out', (t) => {
  for (const name of PREDICTIVE) {
    assert.ok(STRATEGY_NAMES.includes(name), name);
    if (missing(name)) {
      t.diagnostic(`${name}: ${missing(name)}`);
      continue;
    }
    const s = parseStrategy(`${name}:threshold=0.7:max-rounds=12`);
    assert.equal(s.name, name);
    assert.match(s.spec, /threshold=0\.7/);
    assert.match(s.spec, /max-rounds=12/);
    assert.equal(parseStrategy(s.spec).spec, s.spec, `${name}: the spec reads back`);
    assert.ok(s.selector, `${name} has a page selector`);
  }
  assert.equal(parseStrategy('mbdpc').codec, 'xor-lz4');
  assert.equal(parseStrategy('mbdp').codec, undefined);
  // parameters the strategy does not know go to its predictor
  assert.match(parseStrategy('markov:prior=3').spec, /:prior=3$/);
  assert.match(parseStrategy('pr:half-life=2').spec, /:half-life=2$/);
});

test('bad strategy parameters are rejected with a message naming them', () => {
  const bad: [string, RegExp][] = [
    ['mbdp:threshold=2', /threshold "2" must be a probability in \(0, 1\]/],
    ['markov:threshold=0', /threshold "0" must be a probability/],
    ['pr:trust=1.5', /trust "1\.5" must be between 0 and 1/],
    ['oracle:min-pages=-1', /min-pages "-1" must be a whole number >= 0/],
    ['markov:max-factor=0', /max-factor "0" must be a number > 0/],
    ['markov:prior=-1', /strategy markov: .*prior "-1".*the strategy's own parameters: threshold, trust/],
    ['mbdp:colour=blue', /strategy mbdp: unknown predictor parameter "colour" for forest/],
    ['markov:high', /takes key=value parameters, not "high"/],
  ];
  if (!missing('u2c')) bad.push(['u2c:k=0', /k "0" must be a whole number >= 1/]);
  for (const [spec, message] of bad) {
    assert.throws(
      () => parseStrategy(spec),
      (e: Error) => e instanceof UsageError && message.test(e.message),
      spec,
    );
  }
});

test('the oracle strategy refuses to run without the emulator', () => {
  const oracle = parseStrategy('oracle');
  assert.throws(
    () => oracle.selector!({ pageCount: 10, pageSize: 4096 }),
    (e: Error) => e instanceof UsageError && /emulator/.test(e.message),
  );
});

test('precog simulate: a bad predictive strategy exits 2 with one line naming the value', () => {
  for (const spec of ['mbdp:threshold=abc', 'mbdpc:nonsense=1']) {
    const r = precog(['simulate', '-q', '--memory', '1MiB', '--strategy', spec]);
    assert.equal(r.code, 2, `${spec}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, spec.includes('abc') ? /threshold "abc"/ : /nonsense/);
  }
});

for (const name of PREDICTIVE) {
  test(
    `${name}: an emulated migration delivers the stop-time memory byte for byte`,
    { skip: missing(name) },
    async () => {
      for (const workload of ['memchange:rate=0.5MB/s:pattern=hotspot:touch=256', 'memchange:high']) {
        const r = await simulate(small({ workload, strategy: name }));
        assert.equal(r.pagesVerified, PAGES, `${name} ${workload}`);
        assert.ok(r.metrics.strategy.startsWith(`${name}:`));
        assert.equal(r.codec, name === 'mbdpc' ? 'xor-lz4' : 'zero', 'the strategy picks its codec');
      }
    },
  );
}

test('a codec named in the scenario wins over the strategy own', async () => {
  const r = await simulate(small({ workload: 'idle', strategy: 'mbdpc', codec: 'raw' }));
  assert.equal(r.codec, 'raw');
  assert.ok(r.metrics.bytesTotal > 16 * MiB, 'raw pages');
});

test('knowing the future pays: the oracle beats vanilla pre-copy on downtime at the high dirty rate', async () => {
  const s = small({ workload: 'memchange:high', memoryBytes: 64 * MiB, bandwidth: 100e6 });
  const pre = await simulate({ ...s, strategy: 'precopy' });
  const oracle = await simulate({ ...s, strategy: 'oracle' });
  assert.ok(
    oracle.metrics.downtime < 0.5 * pre.metrics.downtime,
    `oracle ${oracle.metrics.downtime} s vs precopy ${pre.metrics.downtime} s`,
  );
  assert.ok(
    oracle.metrics.rounds.some((x) => x.pagesSkipped > 0),
    'it holds pages',
  );
});
