import { test } from 'node:test';
import assert from 'node:assert/strict';
import { simulate, SCENARIO_DEFAULTS, type Scenario } from '../src/sim/run.ts';
import { VirtualClock } from '../src/util/clock.ts';
import { MigrationDestination } from '../src/engine/destination.ts';
import { MigrationSource, pushOrder } from '../src/engine/source.ts';
import { ContentPool } from '../src/memory/content.ts';
import { EmulatedMemory } from '../src/memory/emulated.ts';
import { parseWorkload } from '../src/memory/workloads.ts';
import { parseStrategy } from '../src/policy/index.ts';
import { codecChain } from '../src/codec/index.ts';
import { EmulatedLink } from '../src/transport/emulated.ts';
import { decodeFrame, FrameType, jsonFrame, parseJson, PROTOCOL_VERSION } from '../src/transport/frame.ts';
import { InvariantError, ProtocolError } from '../src/util/errors.ts';
import { PageStore } from '../src/engine/pagestore.ts';
import { Bitmap } from '../src/util/bitmap.ts';
import { BatchWriter } from '../src/codec/batch.ts';

// The public NPB-CG dirty-page trace, gzipped (see test/data/README.md).
const PUBLIC = new URL('./data/npb-cg-B-dirty.json.gz', import.meta.url).pathname;
const MiB = 2 ** 20;
const small = (over: Partial<Scenario>): Scenario => ({
  ...SCENARIO_DEFAULTS,
  memoryBytes: 16 * MiB,
  bandwidth: 10e6,
  ...over,
});
const STRATEGIES = [
  'cold',
  'precopy',
  'precopy:rule=qemu',
  'iterpredict',
  'postcopy',
  'hybrid',
  'hybrid:rounds=3',
];
const WORKLOADS = [
  'idle:zero=0.3',
  'memchange:rate=0.3MB/s:pattern=random',
  'memchange:rate=0.5MB/s:pattern=hotspot:touch=64',
  'memchange:high:pattern=sequential',
  'hotcold:rate=0.4MB/s:skew=1.1:zero=0.1',
];

for (const workload of WORKLOADS) {
  test(`every strategy delivers the stop-time memory byte for byte: ${workload}`, async () => {
    for (const strategy of STRATEGIES) {
      const r = await simulate(small({ workload, strategy }));
      assert.equal(r.pagesVerified, 4096, `${strategy}: every page verified`);
      assert.ok(r.metrics.downtime > 0 && r.metrics.totalTime >= r.metrics.downtime, strategy);
    }
  });
}

test('the public npb-cg-B trace replays through every strategy byte for byte', async () => {
  for (const strategy of STRATEGIES) {
    const r = await simulate({
      ...SCENARIO_DEFAULTS,
      workload: `trace:file=${PUBLIC}`,
      strategy,
      bandwidth: 1e9,
    });
    assert.equal(r.pagesVerified, 29109, strategy);
  }
});

test('the same seed gives the same run, another seed another run', async () => {
  const s = small({ workload: 'memchange:rate=0.8MB/s:pattern=random', strategy: 'precopy', seed: 7 });
  const a = await simulate(s);
  const b = await simulate(s);
  assert.deepEqual(a.metrics, b.metrics);
  const c = await simulate({ ...s, seed: 8 });
  assert.notDeepEqual(a.metrics.rounds, c.metrics.rounds);
});

test('a destination whose memory differs from the source fails loudly', async () => {
  const flip = (p: number) => (store: { image: Buffer | null; layout: { pageSize: number } }) => {
    store.image![p * store.layout.pageSize + 123] ^= 0x40;
  };
  for (const strategy of ['cold', 'precopy', 'hybrid']) {
    await assert.rejects(
      simulate(small({ workload: 'memchange:low', strategy }), { corrupt: flip(77) }),
      (e: Error) =>
        e instanceof InvariantError || (e.cause instanceof InvariantError && /page 77/.test(e.message)),
      strategy,
    );
  }
  await assert.rejects(
    simulate(small({ workload: 'memchange:low', strategy: 'postcopy' }), {
      corruptArrival: (page, bytes) => {
        if (page === 3000) bytes[0] ^= 1;
      },
    }),
    (e: Error) => e instanceof InvariantError && /page 3000 \(post-copy arrival\)/.test(e.message),
  );
});

test('vanilla pre-copy fails to converge when the dirty rate reaches the link speed; iterpredict gives up early', async () => {
  // 11-12 MB/s dirty rate against a 100 Mbit/s (12.5 MB/s) link
  const base = { workload: 'memchange:high', memoryBytes: 64 * MiB, bandwidth: 100e6 };
  const pre = await simulate({ ...SCENARIO_DEFAULTS, ...base, strategy: 'precopy' });
  assert.equal(pre.metrics.converged, false);
  assert.match(pre.metrics.stopReason, /cap/);
  const it = await simulate({ ...SCENARIO_DEFAULTS, ...base, strategy: 'iterpredict' });
  assert.equal(it.metrics.converged, false);
  assert.ok(it.metrics.liveRounds < pre.metrics.liveRounds);
  assert.ok(it.metrics.totalTime < pre.metrics.totalTime);
  const low = await simulate({
    ...SCENARIO_DEFAULTS,
    ...base,
    workload: 'memchange:low',
    strategy: 'precopy',
  });
  assert.equal(low.metrics.converged, true);
  assert.ok(low.metrics.downtime < pre.metrics.downtime / 10);
});

test('time is bytes over bandwidth: cold migration of 16 MiB at 10 Mbit/s', async () => {
  const r = await simulate(small({ workload: 'idle', strategy: 'cold', latency: 0 }));
  const ideal = (16 * MiB * 8) / 10e6;
  assert.ok(r.metrics.downtime >= ideal, `${r.metrics.downtime} >= ${ideal}`);
  // framing (20 + 9 bytes a page record, 64 a frame) and 256 KiB of non-memory state: 2.3 % here
  const state = (256 * 1024 * 8) / 10e6;
  assert.ok(r.metrics.downtime - state < ideal * 1.01, 'framing adds under 1 %');
  assert.equal(r.metrics.downtime, r.metrics.totalTime - r.metrics.preparationTime);
});

test('post-copy sends every page exactly once, faults pages in on demand, and reports degraded time', async () => {
  const r = await simulate(
    small({ workload: 'memchange:rate=0.5MB/s:pattern=random', strategy: 'postcopy' }),
  );
  const m = r.metrics;
  assert.equal(m.pagesSent, 4096);
  assert.ok(m.postcopy!.faults > 0);
  assert.ok(
    m.postcopy!.faultLatencyMedian >= 2 * SCENARIO_DEFAULTS.latency,
    'a fault costs at least a round trip',
  );
  assert.ok(m.postcopy!.degradedTime > 0.9 * ((16 * MiB * 8) / 10e6));
  const stateTime = (SCENARIO_DEFAULTS.stateBytes * 8) / 10e6;
  assert.ok(m.downtime < stateTime + 0.01, 'post-copy downtime is the non-memory state alone');
  const h = await simulate(
    small({ workload: 'memchange:rate=0.5MB/s:pattern=random', strategy: 'hybrid:rounds=1' }),
  );
  assert.equal(
    h.metrics.pagesSent,
    4096 + h.metrics.rounds[0].dirtyPages!,
    'only pages dirtied after round 1 go again',
  );
  // The default hybrid: rounds chosen by prediction; a page goes again only when it was dirtied after its send.
  const a = await simulate(small({ workload: 'memchange:rate=0.5MB/s:pattern=random', strategy: 'hybrid' }));
  const live = a.metrics.rounds.filter((r) => r.phase === 'live');
  assert.ok(live.length >= 1, 'at least one pre-copy round');
  assert.ok(a.metrics.postcopy, 'then post-copy');
  assert.ok(
    a.metrics.pagesSent <= 4096 + live.reduce((x, r) => x + r.dirtyPages!, 0),
    `pages sent ${a.metrics.pagesSent}: never a page the destination holds unchanged`,
  );
});

test('a failure before the destination confirms leaves the source running', async () => {
  const clock = new VirtualClock();
  const plan = parseWorkload('memchange:rate=1MB/s', 4 * MiB);
  const pool = new ContentPool(1, 4096);
  const mem = new EmulatedMemory(plan.layout, pool, plan.create(pool, 2), clock, 0, 3);
  const dest = new MigrationDestination({ restoreCost: 0 });
  const refusing = {
    handle(frame: Buffer, at: number) {
      if (frame.readUInt8(5) === FrameType.Commit) throw new Error('destination disk full');
      return dest.handle(frame, at);
    },
    tick: () => [],
  };
  const link = new EmulatedLink(clock, { bandwidth: 10e6, latency: 0, frameOverhead: 0 }, refusing);
  const source = new MigrationSource(mem, link, parseStrategy('precopy'), {
    codec: codecChain('zero'),
    batchBytes: 65536,
    stateBytes: 1024,
  });
  await assert.rejects(
    source.run(),
    /failed before the destination confirmed; the source keeps running: destination disk full/,
  );
  // thawed: the workload goes on writing at the source
  mem.collectDirty();
  clock.advance(1);
  assert.ok(mem.collectDirty().count() > 100);
});

/** What a container's destination agent says of its restore in RESUMED (passed through to onSwitchover as is). */
const REPORT = {
  pid: 42,
  restoreMs: 150,
  commitMs: 20,
  mode: 'lazy' as const,
  lazyPages: 7,
  lazyMs: null,
  sinceRunningMs: 1,
};

test('post-copy: pages the destination needs to resume go before the switchover, the rest after, each once', async () => {
  const clock = new VirtualClock();
  const plan = parseWorkload('idle', 4 * MiB);
  const pool = new ContentPool(1, 4096);
  const mem = new EmulatedMemory(plan.layout, pool, plan.create(pool, 2), clock, 0, 3);
  const arrivedBefore: number[] = [];
  const dest = new MigrationDestination({
    restoreCost: 0,
    resume: (store) => {
      for (let g = 0; g < store.layout.pageCount; g++) if (store.present.get(g)) arrivedBefore.push(g);
      return {
        runUntil: () => [],
        arrived: () => {},
        faults: 0,
        faultLatencies: [],
        resumed: { restore: REPORT },
      };
    },
  });
  const link = new EmulatedLink(clock, { bandwidth: 100e6, latency: 0, frameOverhead: 0 }, dest);
  const first = [3, 4, 5, 700];
  let told: unknown;
  const source = new MigrationSource(mem, link, parseStrategy('postcopy'), {
    codec: codecChain('zero'),
    batchBytes: 65536,
    stateBytes: 1024,
    beforeSwitchover: (pending) => {
      const b = pending.clone();
      b.clearAll();
      for (const g of first) b.set(g);
      return b;
    },
    onSwitchover: (r) => (told = r),
  });
  const m = await source.run();
  assert.deepEqual(arrivedBefore, first, 'exactly those pages were at the destination when it resumed');
  assert.deepEqual(told, {
    restore: REPORT,
    resumedAt: (told as { resumedAt: number }).resumedAt,
  });
  const stop = m.rounds.filter((r) => r.phase === 'stop');
  const post = m.rounds.filter((r) => r.phase === 'postcopy');
  assert.equal(stop.length, 1);
  assert.equal(stop[0].pagesSent, first.length);
  assert.equal(post[0].pagesSent, 1024 - first.length, 'the rest after the switchover');
  assert.equal(m.pagesSent, 1024, 'every page once');
});

test('post-copy resume: a new session gets the layout and the missing pages, fills them, and is acknowledged', () => {
  const layout = { pageSize: 4096, pageCount: 40, regions: [{ start: '0x10000', pages: 40, pid: 7 }] };
  const store = new PageStore(layout);
  for (let g = 0; g < 40; g++) if (g % 4 !== 0) store.present.set(g); // 0, 4, 8, ... missing
  const arrived: number[] = [];
  const process = {
    runUntil: () => [],
    arrived: (g: number) => arrived.push(g),
    faults: 1,
    faultLatencies: [0.2],
  };
  const hello = (purpose: string, id = 'mc-1') =>
    jsonFrame(FrameType.Hello, { version: PROTOCOL_VERSION, migrationId: id, strategy: 'postcopy', purpose });
  // No such post-copy kept: refused, naming the migration.
  const none = new MigrationDestination({
    restoreCost: 0,
    adopt: (id) => {
      throw new ProtocolError(`no post-copy of migration ${id} is waiting here`);
    },
  });
  assert.throws(() => none.handle(hello('postcopy-resume', 'other-2'), 0), /migration other-2 is waiting/);
  // A destination without the feature refuses too.
  assert.throws(
    () => new MigrationDestination({ restoreCost: 0 }).handle(hello('postcopy-resume'), 0),
    /cannot take up/,
  );

  const dest = new MigrationDestination({ restoreCost: 0, adopt: () => ({ store, process }) });
  const replies = dest.handle(hello('postcopy-resume'), 0).map((r) => decodeFrame(r.frame));
  assert.deepEqual(
    replies.map((f) => f.type),
    [FrameType.HelloAck, FrameType.Layout, FrameType.Switchover],
  );
  assert.deepEqual(parseJson(replies[1]), layout);
  const sw = parseJson<{ missing: string }>(replies[2]);
  const words = new Uint32Array(new Uint8Array(Buffer.from(sw.missing, 'base64')).buffer);
  const missing = new Bitmap(40, words).toArray();
  assert.deepEqual([...missing], [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]);
  // Done too early: refused.
  assert.throws(() => dest.handle(jsonFrame(FrameType.PostcopyDone, {}), 1), /10 pages never received/);
  const writer = new BatchWriter(codecChain('zero'), 4096, 1 << 20);
  for (const g of missing) writer.add(g, Buffer.alloc(4096, g));
  dest.handle(writer.seal(1).frame, 1);
  assert.deepEqual(arrived, [...missing]);
  assert.equal(Buffer.from(store.backing.readRun(8, 1))[0], 8);
  const ack = dest.handle(jsonFrame(FrameType.PostcopyDone, {}), 2).map((r) => decodeFrame(r.frame));
  assert.equal(ack[0].type, FrameType.DoneAck);
  assert.equal(parseJson<{ faults: number }>(ack[0]).faults, 1);
});

test("post-copy's background push sends the smallest regions' missing pages first, each region in address order", () => {
  // A large buffer (pages 0-9), a stack of 2 pages (10-11) and a heap of 3 (12-14); pages 1, 5 and 13 arrived before.
  const missing = Bitmap.full(15);
  for (const p of [1, 5, 13]) missing.clear(p);
  const order = [...pushOrder(missing, [{ pages: 10 }, { pages: 2 }, { pages: 3 }])];
  assert.deepEqual(order, [10, 11, 12, 14, 0, 2, 3, 4, 6, 7, 8, 9]);
  // Every missing page once, whatever the layout: pages past the regions come last.
  const beyond = Bitmap.full(6);
  assert.deepEqual([...pushOrder(beyond, [{ pages: 4 }, { pages: 1 }])], [4, 0, 1, 2, 3, 5]);
});
