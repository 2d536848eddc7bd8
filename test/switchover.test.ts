// The emulator's switchover cost model: its fit to live step records, its file, and what the emulator charges.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { SCENARIO_DEFAULTS, simulate } from '../src/sim/run.ts';
import {
  DEFAULT_SWITCHOVER_MODEL,
  dumpSeconds,
  fitNonNegative,
  fitSwitchover,
  loadSwitchoverModel,
  measuredStopMs,
  modelledStopMs,
  resumeSeconds,
  sendSeconds,
  type SwitchoverModel,
  type SwitchoverSample,
} from '../src/sim/switchover.ts';
import { InputError } from '../src/util/errors.ts';
import { predictedStopMs } from '../src/cli/actions/migrate.ts';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const dir = mkdtempSync(join(tmpdir(), 'precog-switchover-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const TRUTH: SwitchoverModel = {
  fittedFrom: 'made up',
  dump: {
    lazy: { fixedMs: 220, perGiBMs: 600, perChangedMiBMs: 3, coldStartMs: 300 },
    postcopy: { fixedMs: 250, perGiBMs: 40, perChangedMiBMs: 0, coldStartMs: 0 },
  },
  send: { perMiBMs: 12 },
  restore: {
    lazy: { fixedMs: 150, perGiBMs: 20 },
    full: { fixedMs: 200, perGiBMs: 900 },
    postcopy: { fixedMs: 300, perGiBMs: 100 },
  },
  answer: {
    lazy: { fixedMs: -30, perGiBMs: 0, perLinkSecondMs: 0 },
    full: { fixedMs: -100, perGiBMs: -900, perLinkSecondMs: 0 },
    postcopy: { fixedMs: 400, perGiBMs: 2000, perLinkSecondMs: 600 },
  },
  stateBytes: 200_000,
};

/** Live runs as TRUTH would have them: two links, three sizes of cold, pre-copy and post-copy, three runs each. */
function samplesOf(m: SwitchoverModel, noise = 0): SwitchoverSample[] {
  const out: SwitchoverSample[] = [];
  for (const bandwidth of [1e9, 1e8])
    for (const mib of [64, 256, 1024])
      for (const [strategy, route, mode, changedMiB] of [
        ['cold', 'lazy', 'full', mib],
        ['precopy', 'lazy', 'lazy', 2],
        ['postcopy', 'postcopy', 'postcopy', 1],
      ] as const)
        for (let run = 0; run < 3; run++) {
          const memoryBytes = (mib + 16) * MiB;
          const jitter = noise * (run - 1); // the median run is exact
          const r = m.restore[mode];
          const a = m.answer[mode];
          const cold = strategy !== 'precopy';
          out.push({
            cell: `${bandwidth} ${mib} ${strategy}`,
            bandwidth,
            route,
            mode,
            cold,
            memoryBytes,
            changedBytes: changedMiB * MiB,
            stateBytes: 200_000,
            dumpMs: dumpSeconds(m, route, memoryBytes, changedMiB * MiB, cold) * 1000 + jitter,
            sendMs: m.send.perMiBMs * changedMiB,
            restoreMs: r.fixedMs + (r.perGiBMs * memoryBytes) / GiB - jitter,
            answerMs:
              a.fixedMs +
              (a.perGiBMs * memoryBytes) / GiB +
              (a.perLinkSecondMs * memoryBytes * 8) / bandwidth +
              jitter,
          });
        }
  return out;
}

test('the non-negative least squares finds exact coefficients, and holds at 0 one the data would make negative', () => {
  const xs = [[1], [2], [3], [4]];
  const [a, b] = fitNonNegative(
    xs,
    xs.map(([x]) => 5 + 2 * x),
  );
  assert.ok(Math.abs(a - 5) < 1e-9 && Math.abs(b - 2) < 1e-9, `${a} ${b}`);
  // Falling with x: the best fit with a slope of at least 0 is the mean.
  const [c, d] = fitNonNegative(
    xs,
    xs.map(([x]) => 10 - x),
  );
  assert.equal(d, 0);
  assert.ok(Math.abs(c - 7.5) < 1e-9, `${c}`);
  // A column the data cannot tell from the intercept (a constant) is left out, not divided by zero.
  const [e, f] = fitNonNegative([[3], [3], [3]], [4, 5, 6]);
  assert.ok(Math.abs(e + 3 * f - 5) < 1e-9);
});

test('the fit recovers the model that made the runs, from each cell’s medians', () => {
  const fitted = fitSwitchover(samplesOf(TRUTH, 40), 'test');
  const close = (x: number, y: number, what: string) =>
    assert.ok(Math.abs(x - y) < 1e-6 * Math.max(1, Math.abs(y)), `${what}: ${x} against ${y}`);
  assert.equal(fitted.dump.images, undefined, 'no route without runs');
  for (const r of ['lazy', 'postcopy'] as const)
    for (const k of ['fixedMs', 'perGiBMs', 'perChangedMiBMs', 'coldStartMs'] as const)
      close(fitted.dump[r]![k], TRUTH.dump[r]![k], `dump.${r}.${k}`);
  for (const r of ['lazy', 'full', 'postcopy'] as const)
    for (const k of ['fixedMs', 'perGiBMs'] as const)
      close(fitted.restore[r][k], TRUTH.restore[r][k], `restore.${r}.${k}`);
  for (const s of ['lazy', 'full', 'postcopy'] as const)
    for (const k of ['fixedMs', 'perGiBMs', 'perLinkSecondMs'] as const)
      close(fitted.answer[s][k], TRUTH.answer[s][k], `answer.${s}.${k}`);
  close(fitted.send.perMiBMs, TRUTH.send.perMiBMs, 'send');
  assert.equal(fitted.stateBytes, 200_000);
  for (const s of samplesOf(TRUTH)) close(modelledStopMs(fitted, s), measuredStopMs(s), s.cell);
});

test('a fit without post-copy runs says what to add', () => {
  assert.throws(
    () =>
      fitSwitchover(
        samplesOf(TRUTH).filter((s) => s.mode !== 'postcopy'),
        'test',
      ),
    (e: Error) =>
      e instanceof InputError && /no run of postcopy dumped lazily; include postcopy/.test(e.message),
  );
});

test('a model file that is not one is refused by name; the shipped one loads', () => {
  const file = join(dir, 'm.json');
  const bad = (text: string, re: RegExp) => {
    writeFileSync(file, text);
    assert.throws(
      () => loadSwitchoverModel(file),
      (e: Error) => e instanceof InputError && re.test(e.message),
    );
  };
  bad('{', /not JSON/);
  bad(
    JSON.stringify({ ...TRUTH, dump: { ...TRUTH.dump, lazy: { ...TRUTH.dump.lazy!, perGiBMs: -1 } } }),
    /dump\.lazy\.perGiBMs must be a number/,
  );
  bad(JSON.stringify({ ...TRUTH, restore: { lazy: TRUTH.restore.lazy } }), /restore\.full must be an object/);
  bad(
    JSON.stringify({
      ...TRUTH,
      answer: { ...TRUTH.answer, postcopy: { ...TRUTH.answer.postcopy, fixedMs: '1' } },
    }),
    /answer\.postcopy\.fixedMs must be a number/,
  );
  bad(JSON.stringify({ ...TRUTH, stateBytes: 2 ** 40 }), /stateBytes/);
  assert.throws(
    () => loadSwitchoverModel(join(dir, 'none.json')),
    (e: Error) => e instanceof InputError && /npm run fit:switchover/.test(e.message),
  );
  writeFileSync(file, JSON.stringify(TRUTH));
  assert.deepEqual(loadSwitchoverModel(file), TRUTH);
  const shipped = loadSwitchoverModel(DEFAULT_SWITCHOVER_MODEL);
  assert.ok(
    shipped.dump.lazy!.fixedMs > 0 && shipped.dump.postcopy!.fixedMs > 0 && shipped.restore.lazy.fixedMs > 0,
    'the shipped model has a dump and a restore',
  );
});

test('the emulator charges the stop exactly what the model says: the dump at the freeze, the rest at the restore', async () => {
  const base = {
    ...SCENARIO_DEFAULTS,
    workload: 'memchange:low',
    memoryBytes: 8 * MiB,
    bandwidth: 1e9,
    stateBytes: TRUTH.stateBytes,
  };
  for (const [strategy, route, mode] of [
    ['precopy', 'lazy', 'lazy'],
    ['cold', 'lazy', 'full'],
    ['postcopy', 'postcopy', 'postcopy'],
  ] as const) {
    const ideal = await simulate({ ...base, strategy });
    const charged = await simulate({ ...base, strategy, switchover: TRUTH });
    const stopPages = ideal.metrics.rounds
      .filter((r) => r.phase === 'stop' || r.phase === 'postcopy')
      .reduce((a, r) => a + r.pagesSent, 0);
    // Post-copy sends nothing while stopped in the emulator: its pages are not the dump's or the stop's.
    const stopped = mode === 'postcopy' ? 0 : stopPages * 4096;
    const cost =
      dumpSeconds(TRUTH, route, base.memoryBytes, stopped, ideal.metrics.liveRounds === 0) +
      sendSeconds(TRUTH, stopped) +
      resumeSeconds(TRUTH, mode, base.memoryBytes, base.bandwidth);
    assert.ok(cost > 0.3, `${strategy}: a cost to see (${cost} s)`);
    assert.ok(
      Math.abs(charged.metrics.downtime - ideal.metrics.downtime - cost) < 1e-9,
      `${strategy}: downtime ${ideal.metrics.downtime} s ideal, ${charged.metrics.downtime} s charged, model ${cost} s`,
    );
    assert.equal(charged.pagesVerified, ideal.pagesVerified, 'every page still checked');
    assert.equal(charged.metrics.liveRounds, ideal.metrics.liveRounds, 'the live rounds are the same');
  }
});

test("migrate's progress predicts a stop from the shipped model: its stop beyond the link plus what is left on it", () => {
  const model = loadSwitchoverModel(DEFAULT_SWITCHOVER_MODEL);
  const o = { memoryBytes: 2 ** 30, leftBytes: 4 << 20, bytesPerSecond: 100e6, mode: 'lazy' as const };
  const got = predictedStopMs(model, o)!;
  const beyond = modelledStopMs(model, {
    route: 'lazy',
    mode: 'lazy',
    cold: false,
    memoryBytes: o.memoryBytes,
    changedBytes: o.leftBytes,
    bandwidth: 800e6,
  });
  assert.ok(Math.abs(got - beyond - ((o.leftBytes + model.stateBytes) / 100e6) * 1000) < 1e-6);
  // More left to send, a longer stop; a slower link, longer still.
  assert.ok(predictedStopMs(model, { ...o, leftBytes: 64 << 20 })! > got);
  assert.ok(predictedStopMs(model, { ...o, bytesPerSecond: 10e6 })! > got);
  assert.equal(predictedStopMs(undefined, o), undefined, 'no model, no prediction');
  assert.equal(predictedStopMs(model, { ...o, bytesPerSecond: 0 }), undefined, 'no rate yet');
});
